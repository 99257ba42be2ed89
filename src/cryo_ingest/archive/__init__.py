"""What lives on the store: its objects (storage), the manifest that is the archive's source of truth,
the events that follow it, and the Iceberg tables that follow it too (catalog)."""
