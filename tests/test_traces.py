"""Traces from debug_traceBlockByNumber/callTracer, on real mainnet frames and on the devnet."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import Devnet, backfill, manifest
from servers import FIXTURES, FaultProxy, Faults, MainnetReplay

from cryo_ingest.gateway import call_frames as traces

DOCS = Path(__file__).resolve().parents[1] / "docs" / "traces.md"


def differences(ours: dict[str, Any], parity: dict[str, Any], unknown: list[dict[str, Any]]) -> set[str]:
    """The DIFFERENCES keys that explain every field where a translated trace differs from Parity's."""
    found = set()
    call_type = (parity["action"].get("callType") or "").lower()
    placeholders = {
        c for cell in unknown for c in cell["columns"] if cell["trace_address"] == "_".join(map(str, parity["traceAddress"]))
    }
    for part in ("action", "result"):
        a, b = ours.get(part) or {}, parity.get(part) or {}
        for key in set(a) | set(b):
            if a.get(key) == b.get(key):
                continue
            if call_type == "callcode" and (part, key) in (("action", "to"), ("result", "output")):
                found.add(f"callcode {part}.{key}")
            elif (
                parity["type"] == "suicide" and {"refundAddress": "action_to", "balance": "action_value"}.get(key) in placeholders
            ):
                found.add("selfdestruct beneficiary and balance")
            elif key in ("gas", "gasUsed") and not parity["traceAddress"]:
                found.add("top-level gas")
            else:
                found.add(f"UNLISTED {part}.{key}: {a.get(key)} != {b.get(key)}")
    if (ours.get("result") is None) != (parity.get("result") is None):
        found.add(f"UNLISTED result presence in {parity['traceAddress']}")
    for key in ("type", "subtraces", "traceAddress", "transactionHash", "transactionPosition", "blockHash", "blockNumber"):
        if ours.get(key) != parity.get(key):
            found.add(f"UNLISTED {key}")
    if ours.get("error") != parity.get("error"):
        found.add("error" if (ours.get("error") or "").lower() == (parity.get("error") or "").lower() else "UNLISTED error")
    return found


@pytest.mark.parametrize("number", [1000000, 1000690, 1000895, 1011973])
def test_real_geth_frames_translate_to_parity_traces(number: int) -> None:
    parity = json.loads((FIXTURES / "trace_block" / f"{number}.json").read_text())["result"]
    geth = json.loads((FIXTURES / "debug_traceBlockByNumber" / f"{number}.json").read_text())["result"]
    hashes = list(dict.fromkeys(t["transactionHash"] for t in parity if t["transactionHash"]))
    block = {"hash": parity[0]["blockHash"], "number": hex(number), "transactions": hashes}
    ours, unknown = traces.from_call_frames(geth, block)
    calls = [t for t in parity if t["type"] != "reward"]
    found = {"reward traces"} if len(calls) < len(parity) else set()
    assert len(ours) == len(calls)
    for mine, theirs in zip(ours, calls, strict=True):
        found |= differences(mine, theirs, unknown)
    assert found <= set(traces.DIFFERENCES), found
    if number == 1011973:
        assert unknown == [
            {"dataset": "traces", "transaction_index": 0, "trace_address": "0", "columns": ["action_to", "action_value"]}
        ]
        assert ours[1]["action"]["address"] == theirs["action"]["address"]  # the dying contract, from the parent frame


def test_every_difference_is_documented() -> None:
    text = DOCS.read_text()
    for key in traces.DIFFERENCES:
        assert f"**{key}**" in text, key


def test_bare_selfdestruct_is_archived_with_nulls(tmp_path: Path) -> None:
    """Block 1011973 through the whole pipeline from debug_traceBlockByNumber only."""
    with MainnetReplay() as replay, FaultProxy(replay.url, Faults(block_methods={"trace_block"})) as proxy:
        run = backfill(tmp_path, proxy.url(), start=1011973, end=1011973, datasets="traces", chunk=1, chain_id=1)
    assert run.code == 0, run.text
    rows = pq.read_table(tmp_path / "cold/1/traces/traces_01011973_01011973.parquet").to_pylist()
    parity = json.loads((FIXTURES / "trace_block" / "1011973.json").read_text())["result"]
    (suicide,) = [r for r in rows if r["action_type"] == "suicide"]
    (want,) = [t for t in parity if t["type"] == "suicide"]
    assert "0x" + suicide["action_from"].hex() == want["action"]["address"]
    assert suicide["action_to"] is None and suicide["action_value"] is None  # not in the frame: unknown
    (call,) = [r for r in rows if r["action_type"] == "call"]
    assert call["action_value"] == str(int(parity[0]["action"]["value"], 16)) and call["subtraces"] == 1
    assert manifest(tmp_path, 1, "traces")["files"][0]["source"] == traces.DEBUG_SOURCE


def archive_traces(url: str, root: Path) -> list[dict[str, Any]]:
    run = backfill(root, url, end=149, datasets="traces")
    assert run.code == 0, run.text
    rows = []
    for entry in manifest(root, 31337, "traces")["files"]:
        rows += pq.read_table(root / "cold" / "31337" / "traces" / entry["path"]).to_pylist()
    return rows


def test_devnet_without_trace_block_gives_the_same_traces(chain: Devnet, tmp_path: Path) -> None:
    native = archive_traces(chain.url, tmp_path / "native")
    with FaultProxy(chain.url, Faults(block_methods={"trace_block"})) as proxy:
        translated = archive_traces(proxy.url(), tmp_path / "debug")
        assert proxy.methods["debug_traceBlockByNumber"] >= 150
    assert {f.get("source") for f in manifest(tmp_path / "native", 31337, "traces")["files"]} == {"trace_block"}
    assert {f.get("source") for f in manifest(tmp_path / "debug", 31337, "traces")["files"]} == {traces.DEBUG_SOURCE}
    assert len(native) == len(translated) > 0
    top_level = {"action_gas", "result_gas_used"}  # "top-level gas" in docs/traces.md
    failed = {"error", "result_gas_used", "result_output"}  # "error" and "failed frame result"
    for a, b in zip(native, translated, strict=True):
        assert (a["error"] is None) == (b["error"] is None)
        for column in a:
            if (a["trace_address"] == "" and column in top_level) or (a["error"] and column in failed):
                continue
            assert a[column] == b[column], (column, a, b)


def test_pool_without_any_trace_method_fails_before_extracting(chain: Devnet, tmp_path: Path) -> None:
    faults = Faults(block_methods={"trace_block", "debug_traceBlockByNumber"})
    with FaultProxy(chain.url, faults) as proxy:
        run = backfill(tmp_path / "t", proxy.url(), end=49, datasets="traces")
        assert run.code == 1
        assert "trace_block" in run.text and "debug_traceBlockByNumber" in run.text
        assert not (tmp_path / "t").exists()
        assert proxy.methods["eth_getBlockByNumber"] <= 1  # only the finality check: nothing extracted
        blocks = backfill(tmp_path / "b", proxy.url(), end=49, datasets="blocks")
        assert blocks.code == 0, blocks.text


def test_a_node_refusing_traces_is_named_with_method_block_and_answer(chain: Devnet, tmp_path: Path) -> None:
    """Cryo says only "chunk errored": the run's error must say what the node answered, to which method, for which block."""
    faults = Faults(block_methods={"trace_block"}, trace_errors="Resource not found")
    with FaultProxy(chain.url, faults) as proxy:
        run = backfill(tmp_path / "t", proxy.url(), "--json", end=49, datasets="traces")
    assert run.code == 1, run.text
    (failed,) = json.loads(run.out)["failed"]
    assert failed.startswith("extract: blocks 0-49: 1 Cryo chunk(s) errored; missing traces 0-49; the pool answered ")
    answer = r"trace_block block (\d+): error -32000: debug_traceBlockByNumber (\d+): untranslatable: "
    found = re.search(answer + "transaction 0 has no trace: Resource not found", failed)
    assert found is not None and found[1] == found[2], failed
    assert not (tmp_path / "t").exists()
