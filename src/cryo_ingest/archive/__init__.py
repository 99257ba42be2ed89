"""What lives on the store beyond the Parquet files and their manifest: the Iceberg tables that follow it."""
