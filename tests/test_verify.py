"""`cryo-ingest verify` and `gc` on real archives: the devnet (local and S3) damaged one way at a time, real mainnet blocks."""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import obstore
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CANARY, CHUNK, DEVNET_BLOCKS, S3, Backend, Devnet, Run, archive_blocks, backfill, cli
from modern_replay import HAND_BUILT, SERVED, ModernReplay, Rows, rows, served
from PIL import Image
from servers import FaultProxy, MainnetReplay

from cryo_ingest.archive import manifest
from cryo_ingest.archive.manifest import Entry
from cryo_ingest.archive.storage import Store, open_store, sha256
from cryo_ingest.cli import main
from cryo_ingest.pipeline.validate import schema_of
from cryo_ingest.roots import EMPTY_ROOT
from cryo_ingest.verify import gc, verify

gc_module = importlib.import_module("cryo_ingest.verify.gc")  # the package's `gc` is the function

CHAIN = 31337


# ---- an archived devnet, copied afresh for each test ---------------------------------------------


@pytest.fixture(scope="session")
def pristine(chain: Devnet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Every object of the devnet's archive (all four datasets), archived once for the session."""
    root = tmp_path_factory.mktemp("pristine") / "archive"
    run = backfill(root, chain.url)
    assert run.code == 0, run.text
    store = open_store(str(root))
    return {key: store.get(key) or b"" for key in store.list("cold/")}


@pytest.fixture(params=["local", "s3"])
def archive(request: pytest.FixtureRequest, tmp_path: Path, pristine: dict[str, bytes]) -> Backend:
    """A copy of the devnet's archive on each backend the issue names (the CLI on S3 reads the same code paths)."""
    if request.param == "local":
        b = Backend("local", str(tmp_path / "archive"), {})
    else:
        s3: S3 = request.getfixturevalue("s3")
        b = Backend("s3", f"s3://{s3.bucket(f'verify-{uuid.uuid4().hex[:16]}')}/archive", s3.env)
    store = open_store(b.root)
    for k, data in pristine.items():
        store.put(k, data)
    return b


def local_copy(root: Path, pristine: dict[str, bytes]) -> Store:
    store = open_store(str(root))
    for k, data in pristine.items():
        store.put(k, data)
    return store


def verify_cli(b: Backend, *extra: str) -> tuple[Run, dict[str, Any]]:
    run = cli("verify", b.root, "--chain-id", str(CHAIN), "--json", *extra, env=b.env)
    assert run.code in (0, 1), run.text
    return run, json.loads(run.out)


def check(b: Backend, *datasets: str) -> dict[str, Any]:
    """The same verification in this process (the suite's time goes to process start-up otherwise)."""
    doc: dict[str, Any] = verify(open_store(b.root), CHAIN, b.root, datasets or None).to_json()
    return doc


def problems(doc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(dataset, file name, blocks, check) of each problem."""
    return [
        (p["dataset"], " + ".join(f.rsplit("/", 1)[-1] for f in p["file"].split(" + ")), p["blocks"], p["check"])
        for p in doc["problems"]
    ]


def key(dataset: str, start: int) -> str:
    return f"cold/{CHAIN}/{dataset}/{dataset}_{start:08}_{start + CHUNK - 1:08}.parquet"


def name(dataset: str, start: int) -> str:
    return key(dataset, start).rsplit("/", 1)[-1]


def table(store: Store, dataset: str, start: int) -> pa.Table:
    return pq.read_table(pa.BufferReader(store.get(key(dataset, start))))


def rewrite(store: Store, dataset: str, start: int, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> None:
    """Rewrite a chunk's rows and record the new file in the manifest, as a buggy writer would have."""
    old = table(store, dataset, start)
    new = pa.Table.from_pylist(change(old.to_pylist()), schema=old.schema)
    buf = io.BytesIO()
    pq.write_table(new, buf)
    data = buf.getvalue()
    store.put(key(dataset, start), data)
    m = manifest.load(store, CHAIN, dataset)
    assert m is not None
    entry = dataclasses.replace(m.files[start], bytes=len(data), sha256=sha256(data), rows=new.num_rows)
    manifest.add(store, CHAIN, dataset, m.chunk_size, m.schema, [entry], overwrite_conflicts=True)


def edit_entry(store: Store, dataset: str, start: int, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
    """Change (or with None, drop) a manifest entry in its shard, bypassing manifest.add's own checks."""
    shard = f"cold/{CHAIN}/{dataset}/" + manifest.shard_path(start, CHUNK)
    doc = json.loads(store.get(shard) or b"")
    files = [(change(f) if f["start_block"] == start else f) for f in doc["files"]]
    doc["files"] = [f for f in files if f is not None]
    store.put(shard, json.dumps(doc).encode())


# ---- the whole archive -----------------------------------------------------------------------------


def test_clean_archive_is_whole(archive: Backend, pristine: dict[str, bytes]) -> None:
    run, doc = verify_cli(archive)
    assert run.code == 0 and doc["ok"] and doc["problems"] == [] and doc["skipped"] == [], run.text
    counts = doc["counts"]
    assert counts["files"] == 4 * DEVNET_BLOCKS // CHUNK and counts["blocks"] == DEVNET_BLOCKS
    # every block's commitments recomputed: receipts roots, blooms, one top-level trace per transaction
    assert counts["receipts_root_checked"] == counts["logs_bloom_checked"] == counts["traces_checked"] == DEVNET_BLOCKS
    assert doc["archived"] == {d: [[0, DEVNET_BLOCKS - 1]] for d in ("blocks", "transactions", "logs", "traces")}
    text = cli("verify", archive.root, "--chain-id", str(CHAIN), env=archive.env)
    assert text.code == 0 and "whole: chain 31337" in text.out, text.text
    gc_run = cli("gc", archive.root, "--chain-id", str(CHAIN), "--older-than", "0s", env=archive.env)
    assert gc_run.code == 0 and "0 orphan(s) deleted" in gc_run.out, gc_run.text
    assert archive.snapshot() == pristine


def test_flipped_byte(archive: Backend) -> None:
    store = open_store(archive.root)
    data = bytearray(store.get(key("transactions", 50)) or b"")
    data[len(data) // 2] ^= 0x01
    store.put(key("transactions", 50), bytes(data))
    run, doc = verify_cli(archive)
    assert run.code == 1 and problems(doc) == [("transactions", name("transactions", 50), "50-99", "object")], run.text
    assert "sha256" in doc["problems"][0]["what"]


def test_deleted_object(archive: Backend) -> None:
    store = open_store(archive.root)
    store.put(key("logs", 100), b"")  # a truncated object...
    doc = check(archive)
    assert problems(doc) == [("logs", name("logs", 100), "100-149", "object")] and "bytes" in doc["problems"][0]["what"]
    obstore.delete(store.store, key("logs", 100))  # ...and a deleted one
    doc = check(archive)
    assert problems(doc) == [("logs", name("logs", 100), "100-149", "object")], doc
    assert doc["problems"][0]["what"].startswith("missing")


def test_deleted_manifest_entry(archive: Backend) -> None:
    edit_entry(open_store(archive.root), "traces", 150, lambda e: None)
    doc = check(archive)
    assert sorted(problems(doc)) == [("traces", "", "150-199", "gap"), ("traces", name("traces", 150), "150-199", "orphans")], doc
    assert "blocks, transactions, logs hold them" in doc["problems"][0]["what"] + doc["problems"][1]["what"]


def test_log_row_removed_and_manifest_updated(archive: Backend) -> None:
    """Every file and entry agree, indexes stay contiguous: only the chain's own commitments can tell."""
    store = open_store(archive.root)
    logs = table(store, "logs", 100).to_pylist()
    block = max(r["block_number"] for r in logs)
    last = max(r["log_index"] for r in logs if r["block_number"] == block)
    rewrite(store, "logs", 100, lambda rows: [r for r in rows if (r["block_number"], r["log_index"]) != (block, last)])
    run, doc = verify_cli(archive)
    assert run.code == 1, run.text
    found = problems(doc)
    assert ("transactions+logs", f"{name('transactions', 100)} + {name('logs', 100)}", str(block), "receipts_root") in found
    assert {p[3] for p in found} <= {"receipts_root", "logs_bloom"} and {p[2] for p in found} == {str(block)}, found


def test_gap(archive: Backend) -> None:
    store = open_store(archive.root)
    for dataset in ("blocks", "transactions", "logs", "traces"):
        edit_entry(store, dataset, 100, lambda e: None)
        obstore.delete(store.store, key(dataset, 100))
    doc = check(archive)
    assert problems(doc) == [(d, "", "100-149", "gap") for d in ("blocks", "logs", "traces", "transactions")], doc
    assert doc["archived"]["logs"] == [[0, 99], [150, 249]]


def test_broken_hash_chain_within_a_file(archive: Backend) -> None:
    store = open_store(archive.root)
    rewrite(store, "blocks", 50, lambda rows: [r | {"parent_hash": b"\x01" * 32} if r["block_number"] == 75 else r for r in rows])
    doc = check(archive)
    assert problems(doc) == [("blocks", name("blocks", 50), "75", "hash_chain")], doc


def test_broken_hash_chain_across_files(archive: Backend) -> None:
    """The file and its entry agree with each other, but not with the file before them."""
    store = open_store(archive.root)
    rewrite(
        store, "blocks", 100, lambda rows: [r | {"parent_hash": b"\x02" * 32} if r["block_number"] == 100 else r for r in rows]
    )
    edit_entry(store, "blocks", 100, lambda e: e | {"first_parent_hash": "0x" + "02" * 32})
    doc = check(archive)
    assert problems(doc) == [("blocks", name("blocks", 100), "100", "hash_chain")], doc
    assert "is not block 99's hash" in doc["problems"][0]["what"]


def test_orphan_and_gc(archive: Backend, pristine: dict[str, bytes]) -> None:
    store = open_store(archive.root)
    orphan = key("transactions", 250)
    store.put(orphan, pristine[key("transactions", 0)])  # a crash between upload and manifest
    foreign = f"cold/{CHAIN}/logs/notes.txt"
    store.put(foreign, b"not ours")
    doc = check(archive)
    assert sorted(problems(doc)) == [
        ("logs", "notes.txt", "", "orphans"),
        ("transactions", name("transactions", 250), "250-299", "orphans"),
    ]

    young = cli("gc", archive.root, "--chain-id", str(CHAIN), "--older-than", "1h", env=archive.env)
    assert young.code == 0 and f"kept {orphan}: younger than" in young.out and store.head(orphan) is not None, young.text
    dry = cli("gc", archive.root, "--chain-id", str(CHAIN), "--older-than", "0s", "--dry-run", env=archive.env)
    assert dry.code == 0 and f"would delete {orphan}" in dry.out and store.head(orphan) is not None, dry.text
    done = cli("gc", archive.root, "--chain-id", str(CHAIN), "--older-than", "0s", "--json", env=archive.env)
    assert done.code == 0 and json.loads(done.out)["deleted"] == [orphan], done.text
    assert store.head(orphan) is None and store.head(foreign) is not None  # only the orphaned data file went
    assert {k: v for k, v in archive.snapshot().items() if k != foreign} == pristine
    assert check(archive, "transactions")["ok"]


def test_unlisted_shard_keeps_its_files(archive: Backend, pristine: dict[str, bytes]) -> None:
    """A crash between a shard and the index: its files are not orphans gc may take."""
    store = open_store(archive.root)
    start = 50_000  # the next shard (1,000 chunks of 50 blocks each)
    data = pristine[key("logs", 0)]
    file = f"logs_{start:08}_{start + CHUNK - 1:08}.parquet"
    store.put(f"cold/{CHAIN}/logs/{file}", data)
    entry = Entry(file, start, start + CHUNK - 1, 1, len(data), sha256(data))
    doc = json.loads(store.get(f"cold/{CHAIN}/logs/" + manifest.shard_path(0, CHUNK)) or b"")
    doc["files"] = [entry.to_json()]
    shard = f"cold/{CHAIN}/logs/" + manifest.shard_path(start, CHUNK)
    store.put(shard, json.dumps(doc).encode())
    doc = check(archive, "logs")
    assert sorted(problems(doc)) == [
        ("logs", Path(shard).name, "", "orphans"),
        ("logs", file, f"{start}-{start + CHUNK - 1}", "orphans"),
    ]
    assert "unlisted shard" in json.dumps(doc["problems"])
    dry = cli("gc", archive.root, "--chain-id", str(CHAIN), "--older-than", "0s", "--dry-run", env=archive.env)
    assert dry.code == 0 and "0 orphan(s) would delete" in dry.out and f"kept cold/{CHAIN}/logs/{file}" in dry.out, dry.text
    done = cli("gc", archive.root, "--chain-id", str(CHAIN), "--older-than", "0s", env=archive.env)
    assert done.code == 0 and "0 orphan(s) deleted" in done.out and store.head(f"cold/{CHAIN}/logs/{file}") is not None, done.text


def test_file_the_manifest_records_wrongly(tmp_path: Path, pristine: dict[str, bytes]) -> None:
    """Written and recorded by a buggy writer: its bytes match the entry, but it is not a Parquet file
    of the archive's schema."""
    store = local_copy(tmp_path, pristine)
    old = table(store, "traces", 0)
    buf = io.BytesIO()
    pq.write_table(old.drop_columns(["chain_id"]), buf)
    for start, data in ((0, buf.getvalue()), (50, b"PAR1 not really")):
        store.put(key("traces", start), data)
        edit_entry(store, "traces", start, lambda e, d=data: e | {"bytes": len(d), "sha256": sha256(d)})  # type: ignore[misc]
    doc = verify(store, CHAIN, str(tmp_path)).to_json()
    found = [(p["check"], p["blocks"], p["what"].split(":")[0]) for p in doc["problems"]]
    assert found == [("parquet", "0-49", "schema differs from the manifest's"), ("parquet", "50-99", "unreadable Parquet")], found


def test_rows_outside_their_file(tmp_path: Path, pristine: dict[str, bytes]) -> None:
    store = local_copy(tmp_path, pristine)
    rewrite(store, "logs", 0, lambda rows: [*rows[:-1], rows[-1] | {"block_number": 999}])
    doc = verify(store, CHAIN, str(tmp_path)).to_json()
    found = {(p["check"], p["what"]) for p in doc["problems"]}
    assert ("parquet", "rows for blocks outside the file: 999") in found, found
    assert {c for c, _ in found} <= {"parquet", "receipts_root", "logs_bloom"}  # the row is not counted in its block


def test_gc_puts_back_a_file_a_job_records_meanwhile(
    tmp_path: Path, pristine: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-run records an old orphan (found byte-identical, so not rewritten) while gc deletes it."""
    store = local_copy(tmp_path, pristine)
    m = manifest.load(store, CHAIN, "logs")
    assert m is not None
    entry = m.files[100]
    edit_entry(store, "logs", 100, lambda e: None)  # an orphan: stored, not recorded
    original = gc_module._delete

    def delete_while_a_job_records(store_: Store, object_key: str) -> None:
        original(store_, object_key)
        manifest.add(store, CHAIN, "logs", CHUNK, m.schema, [entry], overwrite_conflicts=False)

    monkeypatch.setattr(gc_module, "_delete", delete_while_a_job_records)
    result = gc(store, CHAIN, timedelta(0))
    assert result.deleted == [] and result.restored and result.restored[0].startswith(key("logs", 100))
    assert store.get(key("logs", 100)) == pristine[key("logs", 100)]
    assert verify(store, CHAIN, str(tmp_path)).ok


# ---- each check on its own: damage that only it can see --------------------------------------------


def _dup_tx_index(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    i = next(i for i, r in enumerate(rows) if r["transaction_index"] == 1)
    return [*rows[:i], rows[i] | {"transaction_index": 0}, *rows[i + 1 :]]


def _last_log_index_shifted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows[-1] = rows[-1] | {"log_index": rows[-1]["log_index"] + 1}
    return rows


def _log_block_hash(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows[0] = rows[0] | {"block_hash": b"\x03" * 32}
    return rows


def _drop_top_trace(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    i = next(i for i, r in enumerate(rows) if r["trace_address"] == "" and r["subtraces"] == 0 and r["transaction_index"] == 0)
    return rows[:i] + rows[i + 1 :]


def _drop_block(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["block_number"] != 10]


def _log_tx_hash(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows[0] = rows[0] | {"transaction_hash": b"\x04" * 32}
    return rows


def _log_topic(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows[0] = rows[0] | {"topic0": b"\x05" * 32}
    return rows


def _gas_used(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows[0] = rows[0] | {"gas_used": rows[0]["gas_used"] + 1}
    return rows


def _success(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows[0] = rows[0] | {"success": not rows[0]["success"]}
    return rows


@pytest.mark.parametrize(
    ("dataset", "change", "checks"),
    [
        ("blocks", _drop_block, {"blocks"}),
        ("transactions", _dup_tx_index, {"transactions", "receipts_root"}),
        ("logs", _last_log_index_shifted, {"logs"}),
        ("logs", _log_block_hash, {"block_hash"}),
        ("logs", _log_tx_hash, {"logs"}),
        ("logs", _log_topic, {"logs_bloom", "receipts_root"}),
        ("traces", _drop_top_trace, {"traces"}),
        ("transactions", _gas_used, {"gas_used", "receipts_root"}),
        ("transactions", _success, {"receipts_root"}),
    ],
    ids=["block-row", "tx-index", "log-index", "block-hash", "log-tx-hash", "log-topic", "top-level-trace", "gas-used", "status"],
)
def test_each_check_sees_its_damage(
    tmp_path: Path,
    pristine: dict[str, bytes],
    dataset: str,
    change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
    checks: set[str],
) -> None:
    store = local_copy(tmp_path, pristine)
    rewrite(store, dataset, 0, change)
    doc = verify(store, CHAIN, str(tmp_path)).to_json()
    assert {p["check"] for p in doc["problems"]} == checks, doc["problems"]


@pytest.mark.parametrize(
    ("dataset", "field", "check", "what"),
    [
        ("traces", "rows", "parquet", "rows, the manifest says"),
        ("blocks", "last_block_hash", "hash_chain", "block_hash differs from the manifest's last_block_hash"),
        ("blocks", "first_parent_hash", "hash_chain", "parent_hash differs from the manifest's first_parent_hash"),
    ],
)
def test_manifest_entry_that_lies(
    tmp_path: Path, pristine: dict[str, bytes], dataset: str, field: str, check: str, what: str
) -> None:
    """The file is intact; its entry says something else about it."""
    store = local_copy(tmp_path, pristine)
    edit_entry(store, dataset, 0, lambda e: e | {field: e[field] + 1 if field == "rows" else "0x" + "06" * 32})
    doc = verify(store, CHAIN, str(tmp_path)).to_json()
    assert [(p["check"], p["file"]) for p in doc["problems"]] == [(check, key(dataset, 0))], doc["problems"]
    assert what in doc["problems"][0]["what"]


# ---- --deep, ranges, bad input -----------------------------------------------------------------------


def test_deep_compares_every_value_with_the_node(chain: Devnet, tmp_path: Path, pristine: dict[str, bytes]) -> None:
    """A value no commitment covers (the block's size) is changed in every block: only --deep sees it."""
    store = local_copy(tmp_path, pristine)
    for start in range(0, DEVNET_BLOCKS, CHUNK):
        rewrite(store, "blocks", start, lambda rows: [r | {"size": r["size"] + 1} for r in rows])
    assert cli("verify", str(tmp_path), "--chain-id", str(CHAIN)).code == 0
    with FaultProxy(chain.url) as proxy:
        url = proxy.url(f"/v2/{CANARY}")
        run = cli("verify", str(tmp_path), "--chain-id", str(CHAIN), "--deep", "3", "--seed", "7", "--rpc", url, "--json")
    assert run.code == 1, run.text
    assert CANARY.lower() not in run.text.lower()
    doc = json.loads(run.out)
    assert len(doc["deep_blocks"]) == 3
    found = {(p["dataset"], p["check"]) for p in doc["problems"]}
    assert found == {("blocks", "deep")}, doc["problems"]
    assert all("size: archived" in p["what"] for p in doc["problems"]) and len(doc["problems"]) == 3


def test_deep_clean(chain: Devnet, tmp_path: Path, pristine: dict[str, bytes]) -> None:
    local_copy(tmp_path, pristine)
    run = cli(
        "verify",
        str(tmp_path),
        "--chain-id",
        str(CHAIN),
        "--deep",
        "2",
        "--rpc",
        chain.url,
        "--json",
        "--from",
        "60",
        "--to",
        "140",
    )
    doc = json.loads(run.out)
    assert run.code == 0 and len(doc["deep_blocks"]) == 2 and all(50 <= b <= 149 for b in doc["deep_blocks"]), run.text
    assert doc["counts"]["files"] == 8  # the two chunks of each dataset that hold blocks 60..140


def test_range_beyond_the_archive(archive: Backend) -> None:
    doc = verify(open_store(archive.root), CHAIN, archive.root, ("blocks",), 200, 299).to_json()
    assert problems(doc) == [("blocks", "", "250-299", "coverage")], doc


def exit_code(argv: list[str]) -> int:
    """`cryo-ingest` in this process; argparse's own errors leave through SystemExit."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


@pytest.mark.parametrize(
    "args",
    [
        ["--from", "10", "--to", "5"],
        ["--deep", "3"],
        ["--deep", "0", "--rpc", "http://127.0.0.1:1"],
        ["--rpc", "http://127.0.0.1:1"],
        ["--dataset", "nope"],
        ["--chain-id", "5"],
    ],
)
def test_bad_input(tmp_path: Path, pristine: dict[str, bytes], args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 2 before anything is read (in this process: argument handling needs no process of its own)."""
    local_copy(tmp_path, pristine)
    code = exit_code(["verify", str(tmp_path), *(["--chain-id", str(CHAIN)] if "--chain-id" not in args else []), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(("invalid arguments", "error: invalid")), err


def test_gc_bad_duration(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(["gc", str(tmp_path), "--chain-id", str(CHAIN), "--older-than", "1 week"]) == 2
    assert "--older-than" in capsys.readouterr().err


# ---- the coverage page, in a real browser ------------------------------------------------------------


def _screenshot(page: Path, png: Path) -> None:
    browser = shutil.which("chromium")
    assert browser, "chromium is not installed: apt-get install -y chromium (see .ci/run)"
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1200,900",
            f"--screenshot={png}",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_coverage_page_in_chromium(tmp_path: Path, pristine: dict[str, bytes]) -> None:
    root = tmp_path / "archive"
    store = local_copy(root, pristine)
    for dataset in ("logs", "traces"):  # a gap in two datasets
        edit_entry(store, dataset, 100, lambda e: None)
        obstore.delete(store.store, key(dataset, 100))
    data = bytearray(store.get(key("transactions", 200)) or b"")
    data[100] ^= 0xFF
    store.put(key("transactions", 200), bytes(data))  # a failed check
    page = tmp_path / "coverage.html"
    run = cli("verify", str(root), "--chain-id", str(CHAIN), "--html", str(page))
    assert run.code == 1 and page.exists(), run.text
    text = page.read_text()
    assert "<script" not in text and "http" not in text.replace(str(root), "")  # self-contained
    assert "<title>blocks 100–149: no file (a gap between files); blocks, transactions hold them</title>" in text
    assert "blocks 200–249: object: sha256" in text

    png = tmp_path / "coverage.png"
    _screenshot(page, png)
    image = Image.open(png).convert("RGB")
    colours = {image.getpixel((x, y)) for x in range(0, image.width, 2) for y in range(0, 400, 2)}
    assert {(0x2E, 0x9E, 0x52), (0xF0, 0xA0, 0x20), (0xD6, 0x27, 0x28)} <= colours  # archived, gap, failed check


def test_status_html(archive: Backend, tmp_path: Path) -> None:
    dag = tmp_path / "dag.yaml"
    dag.write_text(
        f"- name: cold\n  operator: cryo_ingest\n  config:\n    chain_id: {CHAIN}\n    datasets: [blocks, logs]\n"
        f"    rpc: [http://127.0.0.1:1]\n    root: {archive.root}\n    chunk_size: {CHUNK}\n"
    )
    page = tmp_path / "status.html"
    run = cli("status", "--config", str(dag), "--no-rpc", "--html", str(page), env=archive.env)
    assert run.code == 0, run.text
    text = page.read_text()
    assert "coverage from the manifests only" in text and 'data-dataset="logs"' in text and 'data-dataset="traces"' not in text
    assert "<title>blocks 0–249: archived</title>" in text


# ---- real mainnet blocks -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The pre-Byzantium fixtures (../shared/fixtures/mainnet) archived with chunks of one block."""
    root = tmp_path_factory.mktemp("history")
    with MainnetReplay() as node:
        for first, last, datasets in [
            (0, 0, ["blocks", "transactions", "logs", "traces"]),
            (483920, 483920, ["blocks", "transactions", "logs"]),
            (1755634, 1755635, ["blocks", "transactions", "logs"]),
            *[(n, n, ["traces"]) for n in (508110, 1000000, 1000690, 1000895, 1011973, 2112234)],
        ]:
            result = archive_blocks(node.url, 1, first, last, datasets, root)
            assert result.ok, result.failed
    yield root


@pytest.mark.parametrize(
    ("first", "last", "datasets", "receipts_roots"),
    [
        (0, 0, ["blocks", "transactions", "logs", "traces"], 1),
        (483920, 483920, ["blocks", "transactions", "logs"], 0),
        (1755634, 1755635, ["blocks", "transactions", "logs"], 1),
        *[(n, n, ["traces"], 0) for n in (508110, 1000000, 1000690, 1000895, 1011973, 2112234)],
    ],
)
def test_mainnet_history_is_whole(history: Path, first: int, last: int, datasets: list[str], receipts_roots: int) -> None:
    report = verify(open_store(str(history)), 1, str(history), tuple(datasets), first, last)
    assert report.ok, report.problems
    assert report.counts.get("receipts_root_checked", 0) == receipts_roots  # empty blocks: the empty trie's root
    if "logs" in datasets:
        assert report.counts["logs_bloom_checked"] == last - first + 1
    if first in (483920, 1755634):  # blocks with transactions, before Byzantium
        assert [(s.check, s.first_block, s.reason) for s in report.skipped] == [
            ("receipts_root", last, "pre-Byzantium: receipts hold a state root, not a status")
        ]
    if "traces" in datasets:
        assert report.counts["traces_checked"] == last - first + 1


@pytest.mark.parametrize("name", list(SERVED))
def test_modern_blocks_through_the_pipeline(tmp_path: Path, name: str) -> None:
    """Real post-Byzantium blocks, archived by Cryo from a replay node: their receipts roots recomputed."""
    block = served(name)
    with ModernReplay(block) as node:
        result = archive_blocks(
            node.url, block.chain_id, block.number, block.number, ["blocks", "transactions", "logs"], tmp_path
        )
    assert result.ok, result.failed
    store = open_store(str(tmp_path))
    report = verify(store, block.chain_id, str(tmp_path))
    assert report.ok and report.skipped == [], report.problems
    assert report.counts["receipts_root_checked"] == report.counts["logs_bloom_checked"] == 1
    # and the check has teeth on this block: drop its last log
    path = tmp_path / "cold" / str(block.chain_id) / "logs" / f"logs_{block.number:08}_{block.number:08}.parquet"
    logs = pq.read_table(path)
    pq.write_table(logs.slice(0, logs.num_rows - 1), path)
    data = path.read_bytes()
    m = manifest.load(store, block.chain_id, "logs")
    assert m is not None
    entry = dataclasses.replace(m.files[block.number], rows=logs.num_rows - 1, bytes=len(data), sha256=sha256(data))
    manifest.add(store, block.chain_id, "logs", 1, m.schema, [entry], overwrite_conflicts=True)
    assert "receipts_root" in {p.check for p in verify(store, block.chain_id, str(tmp_path)).problems}


SCHEMAS = {
    "blocks": pa.schema(
        [
            ("block_number", pa.uint32()),
            ("block_hash", pa.large_binary()),
            ("parent_hash", pa.large_binary()),
            ("receipts_root", pa.large_binary()),
            ("logs_bloom", pa.large_binary()),
            ("gas_used", pa.uint64()),
        ]
    ),
    "transactions": pa.schema(
        [
            ("block_number", pa.uint32()),
            ("transaction_index", pa.uint64()),
            ("transaction_hash", pa.large_binary()),
            ("transaction_type", pa.uint32()),
            ("success", pa.bool_()),
            ("gas_used", pa.uint64()),
            ("block_hash", pa.large_binary()),
        ]
    ),
    "logs": pa.schema(
        [
            ("block_number", pa.uint32()),
            ("log_index", pa.uint32()),
            ("transaction_index", pa.uint32()),
            ("transaction_hash", pa.large_binary()),
            ("address", pa.large_binary()),
            *[(f"topic{i}", pa.large_binary()) for i in range(4)],
            ("data", pa.large_binary()),
            ("block_hash", pa.large_binary()),
        ]
    ),
}


def write_block(root: Path, chain_id: int, block: Any, drop_last_log: bool = False) -> Store:
    """A one-block archive written by hand, with Cryo's column types, and its manifests."""
    store = open_store(str(root))
    tables = {
        "blocks": block.blocks,
        "transactions": block.transactions,
        "logs": block.logs[:-1] if drop_last_log else block.logs,
    }
    for dataset, table_rows in tables.items():
        t = pa.Table.from_pylist(table_rows, schema=SCHEMAS[dataset])
        buf = io.BytesIO()
        pq.write_table(t, buf)
        data = buf.getvalue()
        file = f"{dataset}_{block.number:08}_{block.number:08}.parquet"
        store.put(f"cold/{chain_id}/{dataset}/{file}", data)
        hashes = {}
        if dataset == "blocks":
            hashes = {
                "first_parent_hash": "0x" + block.blocks[0]["parent_hash"].hex(),
                "last_block_hash": "0x" + block.blocks[0]["block_hash"].hex(),
            }
        entry = Entry(file, block.number, block.number, t.num_rows, len(data), sha256(data), **hashes)
        manifest.add(store, chain_id, dataset, 1, schema_of(t.schema), [entry], overwrite_conflicts=False)
    return store


@pytest.mark.parametrize("name", HAND_BUILT)
def test_modern_blocks_receipts_roots(tmp_path: Path, name: str) -> None:
    """Blocks Cryo cannot read from these fixtures (header only, RLP, hashes only): rows from their receipts."""
    block = rows(name)
    store = write_block(tmp_path / "whole", 1, block)
    report = verify(store, 1, "whole")
    assert report.ok and report.counts["receipts_root_checked"] == 1 and report.counts["logs_bloom_checked"] == 1, report.problems
    damaged = write_block(tmp_path / "damaged", 1, block, drop_last_log=True)
    assert "receipts_root" in {p.check for p in verify(damaged, 1, "damaged").problems}


def test_walk_across_manifest_shards(tmp_path: Path) -> None:
    """Chunks of one block: blocks 998..1001 lie in two shards, read one stretch at a time; the hash
    chain, the coverage and the gaps hold across the seam."""

    def empty_block(n: int) -> Rows:
        header = {
            "block_number": n,
            "block_hash": bytes([n % 256]) * 32,
            "parent_hash": bytes([(n - 1) % 256]) * 32,
            "receipts_root": EMPTY_ROOT,
            "logs_bloom": b"\0" * 256,
            "gas_used": 0,
        }
        return Rows(n, [header], [], [])

    for n in range(998, 1002):
        store = write_block(tmp_path, CHAIN, empty_block(n))
    report = verify(store, CHAIN, str(tmp_path))
    assert report.ok and report.counts["blocks"] == 4 and report.counts["receipts_root_checked"] == 4, report.problems
    assert report.archived["blocks"] == [(998, 1001)]

    bad = empty_block(1000)
    bad.blocks[0]["parent_hash"] = b"\x07" * 32
    t = pa.Table.from_pylist(bad.blocks, schema=SCHEMAS["blocks"])
    buf = io.BytesIO()
    pq.write_table(t, buf)
    data = buf.getvalue()
    store.put(f"cold/{CHAIN}/blocks/blocks_00001000_00001000.parquet", data)
    shard = f"cold/{CHAIN}/blocks/" + manifest.shard_path(1000, 1)
    doc = json.loads(store.get(shard) or b"")
    doc["files"] = [f | {"bytes": len(data), "sha256": sha256(data)} if f["start_block"] == 1000 else f for f in doc["files"]]
    store.put(shard, json.dumps(doc).encode())
    found = {(p.check, p.blocks) for p in verify(store, CHAIN, str(tmp_path)).problems}
    assert ("hash_chain", "1000") in found and {c for c, _ in found} == {"hash_chain"}, found

    doc["files"] = []
    store.put(shard, json.dumps(doc).encode())  # blocks 1000 and 1001 no longer recorded
    gone = {(p.dataset, p.check, p.blocks) for p in verify(store, CHAIN, str(tmp_path)).problems}
    assert gone == {("blocks", "coverage", "1000-1001"), ("blocks", "orphans", "1000"), ("blocks", "orphans", "1001")}, gone
