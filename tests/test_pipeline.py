"""The core pipeline end to end on the devnet, through the real CLI in real processes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import CANARY, CHUNK, DEVNET_BLOCKS, Devnet, backfill, files_under, manifest, rpc
from servers import FaultProxy

from cryo_ingest import devnet

DATASETS = ("blocks", "transactions", "logs", "traces")
END = DEVNET_BLOCKS - 1


def node_counts(url: str, end: int) -> dict[str, int]:
    txs = sum(int(rpc(url, "eth_getBlockTransactionCountByNumber", hex(n)), 16) for n in range(end + 1))
    logs = len(rpc(url, "eth_getLogs", {"fromBlock": "0x0", "toBlock": hex(end)}))
    traces = sum(len(rpc(url, "trace_block", hex(n))) for n in range(end + 1))
    return {"blocks": end + 1, "transactions": txs, "logs": logs, "traces": traces}


def test_end_to_end_all_datasets(chain: Devnet, tmp_path: Path) -> None:
    root = tmp_path / "archive"
    staging = tmp_path / "tmp"
    staging.mkdir()
    with FaultProxy(chain.url) as proxy:  # a clean proxy, so the RPC URL can carry a canary key
        url = proxy.url(f"/v2/{CANARY}")
        run = backfill(root, url, "--json", "--events-file", str(tmp_path / "events.jsonl"), env={"TMPDIR": str(staging)})
    assert run.code == 0, run.text
    expected = node_counts(chain.url, END)
    assert expected["logs"] > 0 and expected["traces"] > expected["transactions"]  # internal calls are there
    for dataset in DATASETS:
        m = manifest(root, 31337, dataset)
        assert [(f["start_block"], f["end_block"]) for f in m["files"]] == [(k, k + CHUNK - 1) for k in range(0, END, CHUNK)]
        assert sum(f["rows"] for f in m["files"]) == expected[dataset], dataset
        assert m["chain_id"] == 31337 and m["chunk_size"] == CHUNK and m["cryo_version"] == "0.3.2"
        assert {"name": "block_number", "type": "uint32"} in m["schema"]
        for f in m["files"]:
            path = root / "cold" / "31337" / dataset / f["path"]
            assert f["path"] == f"{dataset}_{f['start_block']:08}_{f['end_block']:08}.parquet"
            data = path.read_bytes()
            assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["bytes"]
            assert pq.read_metadata(path).num_rows == f["rows"]
    blocks = manifest(root, 31337, "blocks")["files"]
    for f in blocks:
        assert f["last_block_hash"] == rpc(chain.url, "eth_getBlockByNumber", hex(f["end_block"]), False)["hash"]
        assert f["first_parent_hash"] == rpc(chain.url, "eth_getBlockByNumber", hex(f["start_block"]), False)["parentHash"]
    tx = pq.read_table(root / "cold/31337/transactions/transactions_00000000_00000049.parquet").to_pylist()
    assert any(r["success"] is False for r in tx) and all(r["success"] is not None for r in tx)  # reverted ones
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len(events) == 4 * len(blocks) and events[0]["output_dataset"] == "cold_blocks_transactions_logs_traces"
    # nothing of staging survives, and the key is nowhere: not in files, output, or Cryo's leftovers
    assert list(staging.iterdir()) == []
    assert not list(root.rglob(".cryo"))
    for name, data in files_under(root).items():
        assert CANARY.encode() not in data, name
    assert CANARY not in run.text
    assert json.loads(run.out)["ok"] is True


def test_rerun_is_a_no_op_and_force_is_byte_identical(chain: Devnet, tmp_path: Path) -> None:
    root = tmp_path / "a"
    assert backfill(root, chain.url, end=149).code == 0
    before = files_under(root)
    again = backfill(root, chain.url, "--json", end=149)
    assert again.code == 0, again.text
    doc = json.loads(again.out)
    assert doc["published"] == [] and len(doc["done"]) == 3
    assert doc["gateway"]["rpc-0"]["requests"] <= 3  # chain id, head: no extraction work
    stamps = write_stamps(root)
    forced = backfill(root, chain.url, "--force", "--json", end=149)
    assert forced.code == 0, forced.text
    doc = json.loads(forced.out)
    assert doc["done"] == [] and doc["published"] == []  # every chunk redone, none changed
    # blocks+transactions 2 requests per block (block, receipts), traces 1, logs 1 per chunk: all 150 blocks fetched again
    assert doc["gateway"]["rpc-0"]["requests"] >= 3 * 150 + 3
    assert files_under(root) == before
    assert write_stamps(root) == stamps  # not one object or manifest document rewritten


def write_stamps(root: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of everything under cold/: a write, in place or by temp-and-rename, changes one of them."""
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in (root / "cold").rglob("*") if p.is_file()}


def test_range_widens_to_grid_and_stops_at_final_head(chain: Devnet, tmp_path: Path) -> None:
    root = tmp_path / "w"
    run = backfill(root, chain.url, "--json", start=60, end=400, datasets="blocks")
    assert run.code == 0, run.text
    doc = json.loads(run.out)
    starts = [f["start_block"] for f in manifest(root, 31337, "blocks")["files"]]
    assert starts == [50, 100, 150, 200]  # 250-299 is not final on a chain whose final head is 250
    assert [c["start"] for c in doc["pending"]] == [250, 300, 350, 400]


def test_conflict_is_reported_and_changes_nothing(chain: Devnet, tmp_path: Path) -> None:
    root = tmp_path / "c"
    assert backfill(root, chain.url, end=99, datasets="blocks,txs").code == 0
    before = files_under(root)
    first_hash = manifest(root, 31337, "blocks")["files"][0]["last_block_hash"]
    with devnet.anvil() as other:  # same chain id, other history: what a reorg looks like to us
        devnet.generate_sync(other.url, 120, 3)
        skipped = backfill(root, other.url, end=99, datasets="blocks,txs")
        assert skipped.code == 0 and files_under(root) == before  # archived chunks are not refetched
        conflict = backfill(root, other.url, "--force", end=99, datasets="blocks,txs")
        assert conflict.code == 1
        assert "conflict" in conflict.text and "chunk 0-49" in conflict.text
        assert files_under(root) == before
        replaced = backfill(root, other.url, "--force", "--overwrite-conflicts", end=99, datasets="blocks,txs")
        assert replaced.code == 0, replaced.text
    after = manifest(root, 31337, "blocks")["files"]
    assert after[0]["last_block_hash"] != first_hash


def test_chain_id_mismatch_writes_nothing(chain: Devnet, tmp_path: Path) -> None:
    root = tmp_path / "m"
    run = backfill(root, chain.url, chain_id=1, end=9, datasets="blocks")
    assert run.code == 1
    assert "chain id mismatch" in run.text and "31337" in run.text
    assert not root.exists()


def test_unreachable_rpc_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "u"
    url = f"http://127.0.0.1:{devnet.free_port()}/v2/{CANARY}"
    run = backfill(root, url, chain_id=1, end=9, datasets="blocks")
    assert run.code == 1
    assert "no endpoint reachable" in run.text and "rpc-0" in run.text
    assert "TypeError" not in run.text and CANARY not in run.text
    assert not root.exists()


# The module the `cryo-ingest` script imports: spawn imports it again in every worker.
CONSOLE_SCRIPT_MODULE = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["scripts"][
    "cryo-ingest"
].split(":")[0]


@pytest.mark.parametrize(
    ("modules", "heavy"),
    [  # a spawned worker imports the main module again (the console script's), workers.py, then the partition's stages
        (
            f"{CONSOLE_SCRIPT_MODULE}, cryo_ingest.pipeline.workers, cryo_ingest.pipeline.partition",
            (
                *("pydantic", "rich", "yaml", "uvloop", "httptools", "aiohttp", "redis"),
                *("cryo_ingest.config", "cryo_ingest.cli", "cryo_ingest.gateway", "cryo_ingest.verify"),
            ),
        ),
        ("cryo_ingest.gateway", ("redis",)),  # redis only for a shared budget (budget.py)
    ],
)
def test_start_up_imports_only_what_a_backfill_needs(modules: str, heavy: tuple[str, ...]) -> None:
    """A backfill's fixed cost, paid again by every worker process."""
    code = f"import sys, {modules}; sys.exit(str([m for m in {heavy!r} if m in sys.modules]))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stderr.strip() == "[]", run.stderr
