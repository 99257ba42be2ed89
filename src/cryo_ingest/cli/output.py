"""What the CLI prints: its two consoles and the archive's table."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..archive import manifest
from ..archive.storage import open_store

console = Console(stderr=True)
out = Console()


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def archive_table(root: str, chain_id: int, datasets: tuple[str, ...]) -> Table:
    """Per dataset: files, rows, bytes, block range, as the manifests say."""
    store = open_store(root)
    table = Table(title=f"archive {root} chain {chain_id}")
    for col in ("dataset", "files", "rows", "bytes", "blocks"):
        table.add_column(col, justify="left" if col in ("dataset", "blocks") else "right")
    for dataset in datasets:
        m = manifest.load(store, chain_id, dataset)
        files = list(m.files.values()) if m else []
        blocks = f"{files[0].start_block}..{files[-1].end_block}" if files else "-"
        rows, size = sum(f.rows for f in files), sum(f.bytes for f in files)
        table.add_row(dataset, str(len(files)), f"{rows:,}", human_size(size), blocks)
    return table
