"""docs/reading.md, run: every Python block of the page, in order, on an archived devnet (local and S3)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import duckdb
import duckdb_extension_httpfs
import pyarrow.parquet as pq
import pytest
from conftest import S3, Devnet, backfill

from cryo_ingest.archive.storage import open_store

DOC = Path(__file__).resolve().parents[1] / "docs" / "reading.md"
BLOCK = re.compile(r"^```python( settings)?\n(.*?)^```$", re.S | re.M)


def blocks() -> tuple[str, list[str]]:
    """The settings block and the examples, in the page's order."""
    found = BLOCK.findall(DOC.read_text())
    settings = [code for tag, code in found if tag]
    assert len(settings) == 1, "docs/reading.md: one ```python settings block"
    return settings[0], [code for tag, code in found if not tag]


@pytest.fixture
def namespace(chain: Devnet, s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The settings the page names, pointing at a devnet archive in a folder and the same one on S3."""
    root = tmp_path / "archive"
    run = backfill(root, chain.url, datasets="blocks,transactions,logs", end=99)
    assert run.code == 0, run.text
    bucket = s3.bucket(f"reading-{uuid.uuid4().hex[:12]}")
    local, remote = open_store(str(root)), open_store(f"s3://{bucket}/archive")
    for key in local.list("cold/"):
        remote.put(key, local.get(key) or b"")
    # DuckDB's httpfs from its pip package (no download here): installed once into a private home
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    extension = next(Path(duckdb_extension_httpfs.__file__).parent.rglob("httpfs.duckdb_extension"))
    duckdb.connect().install_extension(str(extension))
    host = s3.endpoint.removeprefix("http://")
    settings = {
        "root": str(root),
        "s3_root": f"s3://{bucket}/archive",
        "chain_id": 31337,
        "s3_secret": f"KEY_ID 'testing', SECRET 'testing', REGION 'us-east-1', ENDPOINT '{host}', "
        "URL_STYLE 'path', USE_SSL false",
        "catalog_url": f"sqlite:///{tmp_path}/catalog.db",
    }
    documented: dict[str, Any] = {}
    exec(blocks()[0], documented)
    assert set(settings) == {k for k in documented if not k.startswith("__")}, "the settings block names other settings"
    return settings


def test_every_example_runs(namespace: dict[str, Any]) -> None:
    for code in blocks()[1]:
        exec(code, namespace)
    root = Path(namespace["root"]) / "cold" / "31337"
    rows = {
        d: sum(pq.read_metadata(f).num_rows for f in (root / d).glob("*.parquet")) for d in ("blocks", "transactions", "logs")
    }

    assert sum(n for _, n in namespace["logs_per_block"]) == rows["logs"] > 0
    busiest = namespace["busiest"]
    assert len(busiest) == 5 and busiest[0][4] >= busiest[-1][4] > 0 and busiest[0][2].startswith("0x")
    assert namespace["blocks"] == (100, 0, 99)
    assert namespace["logs_on_s3"] == (rows["logs"],)

    assert namespace["gas_mismatches"].height == 0
    senders = namespace["senders"]
    assert senders.height == rows["logs"] and senders["sender"][0].startswith("0x") and len(senders["contract"][0]) == 42
    assert namespace["logs_on_s3_polars"] == rows["logs"]

    logs = pq.read_table(list((root / "logs").glob("*.parquet")))
    assert namespace["late_logs"].num_rows == sum(n >= 50 for n in logs["block_number"].to_pylist()) > 0
    txs = pq.read_table(list((root / "transactions").glob("*.parquet")))
    gas: dict[int, int] = {}
    for n, g in zip(txs["block_number"].to_pylist(), txs["gas_used"].to_pylist(), strict=True):
        gas[n] = gas.get(n, 0) + g
    assert dict(namespace["gas_by_block"].iter_rows()) == gas
