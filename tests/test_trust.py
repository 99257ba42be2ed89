"""Providers that answer well-formed and incomplete data (tests/servers.py, LIES): each chunk's blocks are checked
against their own headers before anything is published (validate.py), on the devnet and on real blocks."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import Devnet, archive_blocks, backfill, files_under, without_provenance
from modern_replay import SERVED, ModernReplay, served
from monad_exec import MonadReplay
from pydantic import SecretStr
from servers import FaultProxy, Faults, Forks, MainnetReplay, stale_fork
from test_logs import per_block

from cryo_ingest.archive import manifest
from cryo_ingest.archive.storage import open_store
from cryo_ingest.cli import main
from cryo_ingest.cli.backfill import job_from_args
from cryo_ingest.cli.parser import parser
from cryo_ingest.config import Endpoint, load_node, make_job
from cryo_ingest.errors import ChunkError, ConfigError
from cryo_ingest.gateway import Gateway
from cryo_ingest.gateway.trust import LIES_TO_BENCH
from cryo_ingest.operator.dag import Pools, load_dag
from cryo_ingest.pipeline.extract import blame, second_opinion
from cryo_ingest.pipeline.plan import Chunk
from cryo_ingest.pipeline.validate import validate_chunk

END = 99  # two chunks of 50: blocks 1..99 hold transactions and logs
DATASETS = "blocks,transactions,logs"
# What each lie changes in the archive, and the check that sees it there.
CAUGHT_BY = {"drop_log": "receipts_root", "drop_tx": "receipts"}


def cold(root: Path) -> dict[str, bytes]:
    """What readers see: the archive's objects (not the local store's lock files)."""
    return {k: v for k, v in files_under(root).items() if k.startswith("cold/")}


def archived(root: Path) -> dict[str, object]:
    return without_provenance(cold(root))


def pool_file(path: Path, *endpoints: tuple[str, str, float]) -> list[str]:
    """A pool "two" of (name, url, weight): the backfill arguments that name it."""
    lines = "".join(f"      - {{name: {n}, url: '{u}', weight: {w}}}\n" for n, u, w in endpoints)
    path.write_text("pools:\n  two:\n    endpoints:\n" + lines)
    return ["--rpc-pool", "two", "--rpc-pool-file", str(path)]


@pytest.fixture(scope="module")
def truth(chain: Devnet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The archive of an honest node."""
    root = tmp_path_factory.mktemp("truth")
    run = backfill(root, chain.url, "--json", end=END, datasets=DATASETS)
    assert run.code == 0, run.text
    checked = json.loads(run.out)["checked"]
    assert checked == {"receipts": END + 1, "logs_bloom": END + 1, "gas_used": END + 1, "receipts_root": END + 1}
    return cold(root)


@pytest.mark.parametrize("kind", ["drop_log", "drop_tx", "drop_receipt_log"])
def test_a_liar_at_random_leaves_the_archive_true(chain: Devnet, tmp_path: Path, truth: dict[str, bytes], kind: str) -> None:
    """Half the blocks (chunks, for eth_getLogs) lie the first time they are asked: the chunks that lied fail
    their check and are fetched again; the archive is byte-identical to an honest node's."""
    with FaultProxy(chain.url, Faults(lies={kind: 0.5}, lie_once=True)) as liar:
        run = backfill(tmp_path, liar.url(), "--json", end=END, datasets=DATASETS)
    assert run.code == 0, run.text
    assert liar.lied, "the liar told no lie"
    assert cold(tmp_path) == truth
    retried = re.findall(r"block (\d+) fails the (\w+) check", run.err)
    if kind in CAUGHT_BY:
        assert retried and {check for _, check in retried} == {CAUGHT_BY[kind]}
        assert {int(b) for b, _ in retried} <= {b for _, b in liar.lied}
    else:  # a receipt's logs: Cryo takes logs from eth_getLogs, a receipt's status and gas only; nothing to retry
        assert not retried


@pytest.mark.parametrize("kind", list(CAUGHT_BY))
def test_only_a_liar_publishes_nothing(chain: Devnet, tmp_path: Path, kind: str) -> None:
    """Every answer lies: every attempt fails its check, nothing is published, the error names block and check."""
    with FaultProxy(chain.url, Faults(lies={kind: 1.0})) as liar:
        run = backfill(tmp_path, liar.url(), "--json", end=END, datasets=DATASETS)
    assert run.code == 1, run.text
    assert cold(tmp_path) == {}
    [failed] = json.loads(run.out)["failed"]
    found = re.search(r"block (\d+) fails the (\w+) check: .*\(answered by ([^)]*)\)", failed)
    assert found is not None, failed
    assert found[2] == CAUGHT_BY[kind] and int(found[1]) in {b for _, b in liar.lied}, failed
    assert found[3] in ("eth_getBlockByNumber rpc-0, eth_getBlockReceipts rpc-0", "eth_getBlockReceipts rpc-0, eth_getLogs rpc-0")
    assert liar.url() not in run.text  # the endpoint by its name, never its URL


@pytest.mark.parametrize("name", list(SERVED))
@pytest.mark.parametrize(
    ("kind", "datasets", "checks"),
    [
        ("drop_log", ["blocks", "transactions", "logs"], {"logs_bloom", "receipts_root"}),  # the bloom first, where it sees it
        ("drop_tx", ["blocks", "transactions", "logs"], {"receipts"}),
    ],
)
def test_real_blocks_every_lie_caught(tmp_path: Path, name: str, kind: str, datasets: list[str], checks: set[str]) -> None:
    """Ethereum 18,000,000 and Arbitrum Sepolia 185,232,421, every receipt, through a lying proxy: caught, nothing published."""
    block = served(name)
    with ModernReplay(block) as node, FaultProxy(node.url, Faults(lies={kind: 1.0})) as liar:
        result = archive_blocks(liar.url(), block.chain_id, block.number, block.number, datasets, tmp_path)
    assert liar.lied and not result.ok
    found = re.search(r"block (\d+) fails the (\w+) check", result.failed[0])
    assert found is not None and int(found[1]) == block.number and found[2] in checks, result.failed
    assert cold(tmp_path) == {}


@pytest.mark.parametrize(("name", "caught"), [("arb-sepolia-185232421", True), ("ethereum-18000000", False)])
def test_logs_alone_the_bloom_sees_what_it_can(tmp_path: Path, name: str, caught: bool) -> None:
    """Without transactions only the bloom checks logs: it sees a dropped log that set a bit no other log of the
    block sets (Arbitrum Sepolia's here), not one whose address and topics other logs of the block share
    (Ethereum's here): that lie is published. Archive transactions with logs (docs/verify.md)."""
    block = served(name)
    with ModernReplay(block) as node, FaultProxy(node.url, Faults(lies={"drop_log": 1.0})) as liar:
        result = archive_blocks(liar.url(), block.chain_id, block.number, block.number, ["blocks", "logs"], tmp_path)
    assert liar.lied and result.ok is not caught, result.failed
    if caught:
        assert f"block {block.number} fails the logs_bloom check" in result.failed[0]
        assert cold(tmp_path) == {}
    else:
        assert result.checked == {"logs_bloom": 1}


@pytest.mark.parametrize("kind", list(CAUGHT_BY))
def test_a_liar_beside_an_honest_endpoint(chain: Devnet, tmp_path: Path, truth: dict[str, bytes], kind: str) -> None:
    """One endpoint always lies and gets most requests (weight 50), the other does not: the chunks that fail are
    fetched again, method by method, from the endpoint that did not answer the failing block; the archive is the
    truth, the liar is named and counted, the honest endpoint never counted as the only one answering a lie."""
    with FaultProxy(chain.url, Faults(lies={kind: 1.0})) as liar, FaultProxy(chain.url) as honest:
        pools = pool_file(tmp_path / "pools.yaml", ("liar", liar.url(), 50), ("honest", honest.url(), 1))
        run = backfill(tmp_path / "a", None, *pools, "--json", end=END, datasets=DATASETS)
    assert run.code == 0, run.text
    assert liar.lied
    assert archived(tmp_path / "a") == without_provenance(truth)
    named = re.findall(r"fails the \w+ check: .*?\(answered by ([^)]*)\)", run.err)
    assert named and all("liar" in n for n in named), run.err
    gateway = json.loads(run.out)["gateway"]
    assert gateway["liar"]["lies"] + gateway["liar"]["suspected"] >= len(named) and gateway["honest"]["lies"] == 0, gateway


def test_lies_bench_an_endpoint_while_another_is_left(chain: Devnet) -> None:
    """Through a real gateway's loopback path (what a worker calls): a check that fails on data one endpoint alone
    answered counts a lie; at LIES_TO_BENCH the endpoint is benched while another is left, never the last one; the
    refetch of the chunk avoids it until the partition settles."""
    endpoints = [Endpoint(url=SecretStr(chain.url), name="a"), Endpoint(url=SecretStr(chain.url), name="b")]
    logs = {"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": [{"fromBlock": "0x0", "toBlock": "0x31"}]}
    with Gateway(endpoints, 31337) as gw:
        ups = {u.name: u for u in gw.pool.upstreams}
        for name in ("a", "b"):
            for n in range(LIES_TO_BENCH):
                gw.trust.answered(logs, name)
                assert blame(gw.url, 7, "logs_bloom", Chunk(0, 49)) == [f"eth_getLogs {name}"]
                assert gw.trust.avoid(logs) >= {name}
                assert ups[name].lies == n + 1
        assert ups["a"].disabled == f"benched: {LIES_TO_BENCH} failed checks of its answers"
        assert ups["b"].disabled is None  # the last endpoint left stays
        assert gw.metrics()["a"]["lies"] == LIES_TO_BENCH
        gw.trust.answered({**logs, "method": "eth_getBlockReceipts", "params": ["0x7"]}, "b")
        assert blame(gw.url, 7, "receipts_root", Chunk(0, 49)) == ["eth_getBlockReceipts b", "eth_getLogs b"]
        gw.trust.settle(0, 49)
        assert gw.trust.avoid(logs) == frozenset() and gw.trust.sources == {}


@pytest.mark.parametrize("kind", [None, "drop_tx"])  # the devnet's blocks have no logs to drop
def test_monad_blocks_through_the_pipeline(tmp_path: Path, kind: str | None) -> None:
    """Monad's devnet blocks 300-399 (Monad's own execution output: 3,906 transactions in 20 blocks, all type 2,
    statuses mixed), served by a replay node in the RPC's shape, archived through Cryo and the gateway: every block
    passes every check; through a liar dropping a block's last transaction, caught and nothing published."""
    with MonadReplay() as node, FaultProxy(node.url, Faults(lies={kind: 1.0} if kind else {})) as proxy:
        result = archive_blocks(proxy.url(), node.chain_id, 300, 399, ["blocks", "transactions", "logs"], tmp_path, 50)
    if kind is None:
        assert result.ok, result.failed
        assert result.checked == {"receipts": 100, "logs_bloom": 100, "gas_used": 100, "receipts_root": 100}
        assert result.unchecked == {}
        return
    assert proxy.lied and not result.ok
    found = re.search(r"block (\d+) fails the (\w+) check", result.failed[0])
    assert found is not None and found[2] == CAUGHT_BY[kind], result.failed
    assert cold(tmp_path) == {}


def test_what_cannot_be_checked_is_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Ethereum 483,920, before Byzantium: its receipts hold a state root, not a status. The receipts root is not
    checked and the run says so once, with the first block; the other checks run."""
    caplog.set_level(logging.WARNING, "cryo_ingest")
    with MainnetReplay() as node:
        result = archive_blocks(node.url, 1, 483920, 483920, ["blocks", "transactions", "logs"], tmp_path)
    assert result.ok, result.failed
    why = "receipts_root: pre-Byzantium: receipts hold a state root, not a status"
    assert result.unchecked == {why: 483920}
    assert result.checked == {"receipts": 1, "logs_bloom": 1, "gas_used": 1}
    said = [r.getMessage() for r in caplog.records if "not checked before publishing" in r.getMessage()]
    assert said == [f"not checked before publishing, from block 483920: {why}"]


def test_without_blocks_the_archived_headers_serve(chain: Devnet, tmp_path: Path) -> None:
    """A job of transactions and logs alone, where the archive already holds the blocks: the headers come from
    the archive (no request), so the receipts root is checked and a dropped log caught; where the archive holds
    no blocks and the job does not fetch headers, the run says the header checks could not apply."""
    bare = backfill(tmp_path / "bare", chain.url, "--json", "--header-checks", "archived", end=END, datasets="transactions,logs")
    assert bare.code == 0, bare.text
    doc = json.loads(bare.out)
    assert doc["checked"] == {"receipts": END + 1}
    assert list(doc["unchecked"]) == [
        "logs_bloom, gas_used, receipts_root: no headers (blocks neither fetched nor archived for these blocks)"
    ]
    root = tmp_path / "a"
    assert backfill(root, chain.url, end=END, datasets="blocks").code == 0
    honest = backfill(root, chain.url, "--json", end=END, datasets="transactions,logs")
    assert honest.code == 0, honest.text
    assert json.loads(honest.out)["checked"] == {"receipts": 100, "logs_bloom": 100, "gas_used": 100, "receipts_root": 100}
    with FaultProxy(chain.url, Faults(lies={"drop_log": 1.0})) as liar:
        lying = backfill(root, liar.url(), "--json", "--force", end=END, datasets="transactions,logs")
    assert lying.code == 1 and "fails the receipts_root check" in json.loads(lying.out)["failed"][0], lying.text


def nothing_of_blocks(root: Path) -> bool:
    return not [k for k in files_under(root) if "/blocks" in k]


@pytest.mark.parametrize(
    ("datasets", "checks"),
    [("logs", {"logs_bloom"}), ("transactions,logs", {"receipts", "logs_bloom", "gas_used", "receipts_root"})],
)
def test_without_blocks_the_headers_are_fetched(
    chain: Devnet, tmp_path: Path, truth: dict[str, bytes], datasets: str, checks: set[str]
) -> None:
    """A job without blocks, none archived: the chunks' blocks are fetched for the checks alone. Every block is
    checked as with blocks in the job; the files are an honest run's; nothing of blocks is published or in a
    manifest. A dropped log is caught (the receipts root sees any), nothing of it published."""
    run = backfill(tmp_path / "a", chain.url, "--json", end=END, datasets=datasets)
    assert run.code == 0, run.text
    doc = json.loads(run.out)
    assert doc["checked"] == dict.fromkeys(checks, END + 1) and doc["unchecked"] == {}, doc
    assert nothing_of_blocks(tmp_path / "a")
    mine = {k: v for k, v in cold(tmp_path / "a").items() if k.endswith(".parquet")}
    assert mine and mine == {k: v for k, v in truth.items() if k.split("/")[2] in datasets.split(",") and k.endswith(".parquet")}
    if "transactions" not in datasets:
        return
    with FaultProxy(chain.url, Faults(lies={"drop_log": 1.0})) as liar:
        lying = backfill(tmp_path / "b", liar.url(), "--json", end=END, datasets=datasets)
    assert liar.lied and lying.code == 1, lying.text
    assert "fails the receipts_root check" in json.loads(lying.out)["failed"][0], lying.text
    assert cold(tmp_path / "b") == {}


def test_headers_and_rows_of_one_chain(tmp_path: Path, truth: dict[str, bytes]) -> None:
    """Headers fetched (or archived) apart from the logs must be of the logs' chain: a log whose block hash is not
    its header's fails the chunk (a reorg between the two fetches), as it does against a job's own blocks."""
    chunk, paths = Chunk(0, 49), {}
    for dataset in ("blocks", "logs"):
        paths[dataset] = tmp_path / f"{dataset}.parquet"
        paths[dataset].write_bytes(truth[f"cold/31337/{dataset}/{dataset}_00000000_00000049.parquet"])
    _, checked = validate_chunk({"logs": paths["logs"]}, chunk, None, None, 31337, None, paths["blocks"])
    assert checked.counts == {"logs_bloom": 50}
    logs = pq.read_table(paths["logs"])
    other = pa.array([b"\x01" * 32, *logs["block_hash"].to_pylist()[1:]], logs.schema.field("block_hash").type)
    pq.write_table(logs.set_column(logs.schema.get_field_index("block_hash"), "block_hash", other), paths["logs"])
    with pytest.raises(ChunkError, match="has another hash than in blocks"):
        validate_chunk({"logs": paths["logs"]}, chunk, None, None, 31337, None, paths["blocks"])


@pytest.mark.parametrize("name", list(SERVED))
def test_logs_alone_real_blocks_fetch_their_headers(tmp_path: Path, name: str) -> None:
    """Ethereum 18,000,000 (291 logs) and Arbitrum Sepolia 185,232,421, logs alone, no archived blocks, an honest
    node: the fetched header's bloom is the logs' bloom; only logs are published."""
    block = served(name)
    with ModernReplay(block) as node:
        result = archive_blocks(node.url, block.chain_id, block.number, block.number, ["logs"], tmp_path)
    assert result.ok and result.checked == {"logs_bloom": 1} and result.unchecked == {}, result.failed
    assert nothing_of_blocks(tmp_path) and cold(tmp_path)


@pytest.mark.parametrize("header_checks", ["fetch", "archived"])
def test_logs_alone_through_a_liar_fetch_their_headers(tmp_path: Path, header_checks: str) -> None:
    """Arbitrum Sepolia 185,232,421 (46 logs, every receipt), logs alone, no archived blocks, a liar dropping a
    log the bloom sees: with the headers fetched, caught and nothing published; with `--header-checks archived`,
    nothing checks the logs and the lie is published, as the run says."""
    block = served("arb-sepolia-185232421")
    with ModernReplay(block) as node, FaultProxy(node.url, Faults(lies={"drop_log": 1.0})) as liar:
        run = backfill(
            tmp_path,
            liar.url(),
            "--json",
            "--header-checks",
            header_checks,
            datasets="logs",
            start=block.number,
            end=block.number,
            chunk=1,
            chain_id=block.chain_id,
        )
    assert liar.lied
    doc = json.loads(run.out)
    assert nothing_of_blocks(tmp_path)
    if header_checks == "fetch":
        assert run.code == 1 and f"block {block.number} fails the logs_bloom check" in doc["failed"][0], run.text
        assert cold(tmp_path) == {}
    else:
        assert run.code == 0 and doc["checked"] == {} and "no headers" in next(iter(doc["unchecked"])), run.text
        assert cold(tmp_path)


def test_header_checks_is_a_job_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--header-checks`, or `header_checks` in a DAG node's config (backfill --config, the operator): fetch by
    default (correctness first); anything else is a one-line error, exit 2, nothing written."""
    url = "http://127.0.0.1:9"
    config = tmp_path / "dag.yaml"
    config.write_text(
        f"- name: n\n  config:\n    chain_id: 31337\n    datasets: [logs]\n    rpc: ['{url}']\n    header_checks: archived\n"
    )
    args = ["backfill", "--config", str(config), "--start", "0", "--end", "9"]
    assert job_from_args(parser().parse_args(args)).header_checks == "archived"
    assert job_from_args(parser().parse_args([*args, "--header-checks", "fetch"])).header_checks == "fetch"
    assert load_dag(config, str(tmp_path)).job(load_node(config, "n"), Pools()).header_checks == "archived"
    assert make_job(chain_id=1, start_block=0, end_block=0, datasets="logs", rpc=[url]).header_checks == "fetch"
    with pytest.raises(ConfigError, match=r"^invalid config: header_checks: Input should be 'fetch' or 'archived'$"):
        make_job(chain_id=1, start_block=0, end_block=0, datasets="logs", rpc=[url], header_checks="never")
    with pytest.raises(SystemExit) as bad:
        main([*args, "--root", str(tmp_path / "root"), "--header-checks", "never"])
    assert bad.value.code == 2 and "--header-checks: invalid choice: 'never'" in capsys.readouterr().err
    assert not (tmp_path / "root").exists()


@pytest.fixture(scope="module")
def forks() -> Iterator[Forks]:
    with stale_fork(60) as both:
        yield both


def test_a_stale_fork_beside_a_canonical_endpoint(forks: Forks, tmp_path: Path) -> None:
    """An endpoint left on an older fork answers a consistent chain of its own, and gets most requests (weight
    50): the last block of the chunk that holds the fork is asked of the other endpoint, the two differ, the
    longer chain wins; the chunk is fetched again from the canonical endpoint. The archive is a clean run's on
    the canonical chain, the stale endpoint is named and counted. With the stale endpoint alone nothing can
    be compared: its fork is published (docs/verify.md, "What the checks cannot see")."""
    end = forks.fork  # 63: the last block of the second chunk of 32
    clean = backfill(tmp_path / "truth", forks.canonical, end=end, datasets=DATASETS, chunk=32)
    pools = pool_file(tmp_path / "pools.yaml", ("stale", forks.stale, 50), ("honest", forks.canonical, 1))
    run = backfill(tmp_path / "a", None, *pools, "--json", end=end, datasets=DATASETS, chunk=32)
    alone = backfill(tmp_path / "alone", forks.stale, "--json", end=end, datasets=DATASETS, chunk=32)
    assert clean.code == 0 and run.code == 0 and alone.code == 0, run.text
    assert archived(tmp_path / "a") == archived(tmp_path / "truth")
    doc = json.loads(run.out)
    assert doc["checked"]["canonical"] == end + 1, doc["checked"]
    assert doc["gateway"]["stale"]["lies"] >= 1 and doc["gateway"]["honest"]["lies"] == 0, doc["gateway"]
    named = re.findall(r"block (\d+) fails the canonical check: .*\(answered by ([^)]*)\)", run.err)
    assert all(b == str(end) and n == "eth_getBlockByNumber stale" for b, n in named), run.err
    assert "canonical" not in json.loads(alone.out)["checked"]
    assert archived(tmp_path / "alone") != archived(tmp_path / "truth")


def test_manifest_names_the_endpoints_never_their_urls(chain: Devnet, tmp_path: Path) -> None:
    """Each chunk's entry is named by the endpoints that answered its data, in the shard's `sources` beside its
    entries: an entry itself keeps the keys today's readers know (they build one from each). No key of a URL
    is written anywhere."""
    canary = "CANARY-KEY-5f1d"
    with FaultProxy(chain.url) as a, FaultProxy(chain.url) as b:
        pools = pool_file(tmp_path / "pools.yaml", ("a", a.url(f"/v2/{canary}"), 1), ("b", b.url(f"/v2/{canary}"), 1))
        run = backfill(tmp_path / "root", None, *pools, end=END, datasets=DATASETS)
    assert run.code == 0, run.text
    store, known = open_store(str(tmp_path / "root")), {f.name for f in fields(manifest.Entry)} - {"sources"}
    named: set[str] = set()
    for dataset in DATASETS.split(","):
        m = manifest.load(store, 31337, dataset)
        assert m is not None and set(m.files) == {0, 50}
        for entry in m.files.values():
            assert entry.sources and set(entry.sources) <= {"a", "b"}, (dataset, entry)
            named |= set(entry.sources)
        for shard in (tmp_path / "root" / f"cold/31337/{dataset}/manifest").glob("*.json"):
            doc = json.loads(shard.read_text())
            assert all(set(e) <= known for e in doc["files"]) and set(doc["sources"]) == {"0", "50"}
    assert named == {"a", "b"}
    assert not [k for k, v in files_under(tmp_path / "root").items() if canary.encode() in v or canary in k]
    assert canary not in run.text


def test_requests_per_block_with_the_cross_check(chain: Devnet, tmp_path: Path) -> None:
    """Blocks, transactions and logs at 100 blocks a chunk from two endpoints: 2.02 requests a block with one
    (tests/test_logs.py), and one eth_getBlockByNumber a chunk more for the cross-check: within 2.03. Hedges
    apart: with two endpoints the pool races a late answer on the other (at most 5% of requests; on a busy
    host, loopback answers are late)."""
    with FaultProxy(chain.url) as a, FaultProxy(chain.url) as b:
        pools = pool_file(tmp_path / "pools.yaml", ("a", a.url(), 1), ("b", b.url(), 1))
        run = backfill(tmp_path / "root", None, *pools, "--json", end=99, chunk=100, datasets=DATASETS)
    assert run.code == 0, run.text
    doc = json.loads(run.out)
    assert doc["checked"]["canonical"] == 100
    counts = per_block(a, 0, 99) + per_block(b, 0, 99)
    hedged = sum(up["hedges"] for up in doc["gateway"].values())
    assert (sum(counts.values()) - hedged) / 100 <= 2.03, (counts, hedged)
    asked = [body for proxy in (a, b) for body in proxy.bodies if body["params"] == [hex(99), False]]
    assert len(asked) == 1, asked  # the cross-check: Cryo asks with full transactions


def test_the_cross_check_is_a_pool_setting(chain: Devnet) -> None:
    """On by default where the pool has two endpoints, off with one; the pool document's `canonical_check` says
    otherwise. Off, the gateway answers that it is off (no request); on, with one endpoint, that it cannot run."""
    one = make_job(chain_id=31337, start_block=0, end_block=0, datasets="blocks", rpc=[chain.url])
    assert one.canonical_check is None
    doc = {"endpoints": [{"url": chain.url, "name": "a"}, {"url": chain.url, "name": "b"}], "canonical_check": False}
    off = make_job(chain_id=31337, start_block=0, end_block=0, datasets="blocks", rpc=doc)
    assert off.canonical_check is False and [e.name for e in off.rpc] == ["a", "b"]
    head = {"jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByNumber", "params": ["0x5", False]}
    with Gateway(off.rpc, 31337, canonical_check=off.canonical_check) as gw:
        assert second_opinion(gw.url)(5, "0x00") is None
    with Gateway(one.rpc, 31337, canonical_check=True) as gw:
        gw.trust.answered(head, "rpc-0")
        assert second_opinion(gw.url)(5, "0x00") == {"unchecked": "no second endpoint left to ask"}
    with Gateway(off.rpc, 31337) as gw:
        gw.trust.answered(head, "a")
        verdict = second_opinion(gw.url)(5, "0x00")
        assert verdict is not None and verdict["agrees"] is False


def test_the_longer_chain_settles_a_disagreement(forks: Forks) -> None:
    """Through a real gateway's loopback path: block 63 answered by the stale endpoint and asked of the canonical
    one disagrees (the stale one's head is lower): a failed check; answered by the canonical endpoint and asked
    of the stale one, the stale endpoint is counted a lie and the chunk passes. Either way the settled hash is
    the canonical chain's, and a second question about the block costs no request."""
    block = forks.fork
    ask = {"jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByNumber", "params": [hex(block), False]}
    endpoints = [Endpoint(url=SecretStr(forks.stale), name="stale"), Endpoint(url=SecretStr(forks.canonical), name="honest")]
    with Gateway(endpoints, 31337) as gw:
        ups = {u.name: u for u in gw.pool.upstreams}
        stale_hash, honest_hash = (gw._run(gw.pool.ask(ups[n], ask))["result"]["hash"] for n in ("stale", "honest"))
        assert stale_hash != honest_hash
        gw.trust.answered(ask, "stale")
        verdict = second_opinion(gw.url)(block, stale_hash)
        assert verdict is not None and verdict["agrees"] is False and "(head 65)" in verdict["detail"], verdict
        assert blame(gw.url, block, "canonical", Chunk(32, 63)) == ["eth_getBlockByNumber stale"]
        logs = {**ask, "method": "eth_getLogs", "params": [{"fromBlock": hex(32), "toBlock": hex(63)}]}
        assert ups["stale"].lies == 1 and gw.trust.avoid(logs) == {"stale"}  # every method of the chunk
        requests = ups["honest"].requests
        gw.trust.answered(ask, "honest")
        again = second_opinion(gw.url)(block, honest_hash)
        assert again is not None and again["agrees"] is True and ups["honest"].requests == requests  # settled: no request
        gw.trust.settle(32, 63)
        gw.trust.answered(ask, "honest")
        verdict = second_opinion(gw.url)(block, honest_hash)
        assert verdict is not None and verdict["agrees"] is True and ups["stale"].lies == 2, verdict
