"""Invalid input: one clear line naming the field, exit 2, nothing written. And the spec's DAG YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import CANARY, cli, manifest

from cryo_ingest import devnet
from cryo_ingest.cli import main

SPEC_YAML = """\
- name: cryo_backfill
  activation: reactive
  runtime: ecs_rust
  operator: cryo_ingest
  execution_strategy: PerPartition
  idle_timeout: 0
  input_datasets: [backfill_requests]
  config:
    chain_id: 10143
    datasets: [blocks, transactions, logs]
    rpc_pool: monad
  scaling:
    mode: backfill        # or 'steady' for single-partition
    max_concurrency: 20   # dispatcher limits parallel jobs
  output_dataset: cold_blocks
  timeout_seconds: 3600
"""

BASE = ["backfill", "--chain-id", "31337", "--start", "0", "--end", "99", "--datasets", "blocks", "--rpc", "http://127.0.0.1:9"]


def with_flag(flag: str, value: str) -> list[str]:
    args = list(BASE)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


@pytest.mark.parametrize(
    ("args", "field", "reason"),
    [
        (with_flag("--datasets", "blocks,uncles"), "datasets", "unknown dataset 'uncles'"),
        (with_flag("--start", "200"), "job", "end_block (99) is before start_block (200)"),
        (with_flag("--start", "-1"), "start_block", "greater than or equal to 0"),
        (with_flag("--chunk-size", "0"), "chunk_size", "greater than 0"),
        (with_flag("--rpc", f"ftp://host/{CANARY}"), "rpc.0.url", "must be an http(s) URL"),
        (with_flag("--rpc", f"http://127.0.0.1:99999/{CANARY}"), "rpc.0.url", "RPC URL has an invalid port"),
        (with_flag("--rpc", f"http://127.0.0.1:x/{CANARY}"), "rpc.0.url", "RPC URL has an invalid port"),
        (with_flag("--root", "ftp://bucket/x"), "root", "unsupported root scheme 'ftp'"),
        (with_flag("--root", "s3://"), "root", "needs a bucket"),
        (with_flag("--chain-id", "0"), "chain_id", "greater than 0"),
        (with_flag("--chain-id", "-5"), "chain_id", "greater than 0"),
    ],
)
def test_invalid_input(args: list[str], field: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    if "--root" not in args:
        args = [*args, "--root", str(root)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert f"invalid config: {field}: " in err and reason in err
    assert CANARY not in err
    assert not root.exists()


def test_key_in_an_invalid_field_is_redacted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A validation message that quotes its input: a URL pasted into --datasets, lower-cased there like
    every dataset name. Its key is known from --rpc by then, and redacted in any case."""
    url = f"https://{CANARY}.rpc.example/v2/{CANARY}"
    args = [*with_flag("--rpc", url), "--root", str(tmp_path / "root")]
    args[args.index("--datasets") + 1] = f"blocks,{url}"
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert CANARY.lower() not in err.lower()
    choices = "(choose from blocks, transactions, logs, traces; aliases txs, events)"
    assert err == f"error: invalid config: datasets: unknown dataset '<redacted>' {choices}"
    assert not (tmp_path / "root").exists()


def test_chain_id_not_a_number(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(with_flag("--chain-id", "abc"))
    assert exit_info.value.code == 2
    assert "--chain-id: invalid int value: 'abc'" in capsys.readouterr().err


def test_yaml_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "dag.yaml"
    spec.write_text(SPEC_YAML)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- name: x\n  config: [unclosed\n")
    root = str(tmp_path / "root")
    cases = [
        (["--config", str(spec), "--node", "nope"], "invalid config: --node: no node named 'nope'"),
        (["--config", str(bad)], "malformed YAML at line"),
        (["--config", str(tmp_path / "missing.yaml")], "cannot read"),
        (["--config", str(spec)], "invalid config: rpc_pool: pool 'monad' not found (set CRYO_INGEST_RPC_POOL_MONAD"),
    ]
    for args, message in cases:
        assert main(["backfill", *args, "--root", root]) == 2
        assert message in capsys.readouterr().err
    assert not Path(root).exists()


def test_spec_dag_yaml_with_pool_from_environment(tmp_path: Path) -> None:
    """The spec's example node as written (Monad's chain id, pool `monad`) against an anvil on 10143."""
    config = tmp_path / "dag.yaml"
    config.write_text(SPEC_YAML.replace("    rpc_pool: monad\n", "    rpc_pool: monad\n    chunk_size: 10\n"))
    root = tmp_path / "archive"
    with devnet.anvil(chain_id=10143) as node:
        devnet.generate_sync(node.url, 25, 4)
        pool = json.dumps({"endpoints": [{"name": "monad-local", "url": node.url, "requests_per_second": 500}]})
        run = cli(
            "backfill",
            "--config",
            str(config),
            "--node",
            "cryo_backfill",
            "--start",
            "0",
            "--end",
            "19",
            "--root",
            str(root),
            "--events-file",
            str(tmp_path / "ev.jsonl"),
            env={"CRYO_INGEST_RPC_POOL_MONAD": pool},
        )
    assert run.code == 0, run.text
    assert "monad-local" in run.text
    for dataset in ("blocks", "transactions", "logs"):
        assert [f["path"] for f in manifest(root, 10143, dataset)["files"]] == [
            f"{dataset}_00000000_00000009.parquet",
            f"{dataset}_00000010_00000019.parquet",
        ]
    assert not (root / "cold" / "10143" / "traces").exists()
    events = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert {e["output_dataset"] for e in events} == {"cold_blocks"} and len(events) == 6


@pytest.mark.parametrize(
    "args",
    [
        ["backfill", "--rpc", f"http://127.0.0.1:9/v2/{CANARY}", f"http://127.0.0.1:9/v2/{CANARY}"],
        ["backfill", "--chain-id", f"https://rpc.example/v2/{CANARY}"],
        ["status", "--config", "dag.yaml", f"--rpc=http://127.0.0.1:9/{CANARY}", f"http://127.0.0.1:9/{CANARY}?x=1"],
    ],
)
def test_argument_errors_do_not_echo_keys(args: list[str]) -> None:
    """argparse echoes the bad argument: a URL among them is redacted."""
    run = cli(*args)
    assert run.code == 2 and "invalid arguments" in run.text and "<redacted>" in run.text, run.text
    assert CANARY not in run.text


@pytest.mark.parametrize(
    ("endpoint", "reason"),
    [
        ({"compute_units_per_second": 330, "costs": "alchmy"}, "unknown cost profile 'alchmy' (choose from alchemy, infura"),
        ({"compute_units_per_second": 330, "costs": {"eth_getLog": 60, "default": 20}}, "unknown method 'eth_getLog' in costs"),
        ({"compute_units_per_second": 330, "costs": {"eth_getLogs": 60}}, 'a costs table needs a "default"'),
        ({"compute_units_per_second": 330, "costs": {"eth_getLogs": -1, "default": 20}}, "the cost of 'eth_getLogs' is negative"),
        ({"compute_units_per_second": 330}, "compute_units_per_second and costs go together"),
        ({"costs": "infura"}, "compute_units_per_second and costs go together"),
        ({"compute_units_per_second": 0, "costs": "infura"}, "greater than 0"),
    ],
)
def test_invalid_compute_unit_budget(
    endpoint: dict[str, object], reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = {"endpoints": [{"name": "p", "url": f"https://rpc.example/{CANARY}", **endpoint}]}
    monkeypatch.setenv("CRYO_INGEST_RPC_POOL_TEST", json.dumps(pool))
    root = tmp_path / "root"
    args = [a for a in BASE if a not in ("--rpc", "http://127.0.0.1:9")]
    assert main([*args, "--rpc-pool", "test", "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "invalid config: " in err and reason in err, err
    assert CANARY not in err
    assert not root.exists()


def test_compute_unit_costs_by_profile_and_table() -> None:
    from cryo_ingest.config import Endpoint

    alchemy = Endpoint.model_validate({"url": "https://a.example/k", "compute_units_per_second": 330, "costs": "alchemy"})
    assert [alchemy.cost(m) for m in ("eth_getBlockReceipts", "debug_traceBlockByNumber", "eth_getLogs", "eth_foo")] == [
        500,
        1000,
        60,
        20,
    ]
    assert alchemy.requests_per_second is None  # the compute units are its limit: no default request rate on top
    table = Endpoint.model_validate(
        {"url": "https://a.example/k", "compute_units_per_second": 100, "costs": {"eth_getLogs": 75, "default": 20}}
    )
    assert (table.cost("eth_getLogs"), table.cost("trace_block")) == (75, 20)
    assert Endpoint.model_validate({"url": "https://a.example/k"}).cost("eth_getLogs") == 1
