"""The wheel: `python -m build` from the tree, installed with the pinned constraints into a fresh venv
outside it, gives a `cryo-ingest` that works without the tree (version, backfill, the operator's
commands), and whose `demo` says how to get anvil when there is none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ALL, CHUNK, DEVNET_BLOCKS, Devnet, Run, backfill, files_under
from test_config import SPEC_YAML

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel and its pinned dependencies, nothing from the tree."""
    dist = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--dependency-constraints-txt", str(CONSTRAINTS), "--outdir", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("*.whl")
    env = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=120)
    pip = [str(env / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(CONSTRAINTS), str(wheel)]
    installed = subprocess.run(pip, capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return env


def outside(venv: Path, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    """The venv's `cryo-ingest`, started in a folder outside the tree, with no PYTHONPATH."""
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run(
        [str(venv / "bin" / "cryo-ingest"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**base, "COLUMNS": "200", **(env or {})},
        timeout=300,
    )
    return Run(p.returncode, p.stdout, p.stderr)


def test_the_package_comes_from_the_venv_alone(venv: Path, tmp_path: Path) -> None:
    probe = "import json, sys, cryo_ingest; print(json.dumps([cryo_ingest.__file__, sys.path]))"
    p = subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, cwd=tmp_path, check=True)
    module, path = json.loads(p.stdout)
    assert module.startswith(str(venv)), module
    assert not [entry for entry in path if entry.startswith(str(ROOT))], path
    for pth in (venv / "lib").rglob("*.pth"):  # an editable install would leave a path file pointing home
        assert str(ROOT) not in pth.read_text(), pth


def test_version_names_its_own_and_cryos(venv: Path, tmp_path: Path) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    run = outside(venv, tmp_path, "--version")
    assert run.code == 0, run.text
    assert run.out == f"cryo-ingest {version} (cryo 0.3.2)\n"


def test_backfill_and_the_operator_commands_work_from_the_wheel(venv: Path, chain: Devnet, tmp_path: Path) -> None:
    args = ["--chain-id", "31337", "--start", "0", "--end", str(DEVNET_BLOCKS - 1), "--datasets", ALL]
    run = outside(venv, tmp_path, "backfill", *args, "--root", "wheel", "--chunk-size", str(CHUNK), "--rpc", chain.url)
    assert run.code == 0, run.text
    tree = backfill(tmp_path / "tree", chain.url)  # the same job from the tree's install
    assert tree.code == 0, tree.text
    assert files_under(tmp_path / "wheel") == files_under(tmp_path / "tree")
    listed = outside(venv, tmp_path, "ls", "wheel", "--chain-id", "31337", "--files")
    assert listed.code == 0 and len(listed.out.splitlines()) == 4 * DEVNET_BLOCKS // CHUNK, listed.text
    # the operator: a request, the node run until idle, its status
    dag = SPEC_YAML.replace("chain_id: 10143", "chain_id: 31337").replace(
        "rpc_pool: monad", f"rpc: [{chain.url}]\n    chunk_size: 50"
    )
    (tmp_path / "dag.yaml").write_text(dag)
    node = ["--config", "dag.yaml", "--root", "node"]
    for command in (["request", *node, "--start", "0", "--end", "99"], ["run", *node], ["status", *node, "--json"]):
        done = outside(venv, tmp_path, *command)
        assert done.code == 0, done.text
    assert [r["state"] for r in json.loads(done.out)["nodes"][0]["requests"]["items"]] == ["done"]


def test_demo_without_anvil_says_how_to_get_it(venv: Path, tmp_path: Path) -> None:
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin"}
    run = outside(venv, tmp_path, "demo", "--root", "archive", env={**env, "CRYO_INGEST_ANVIL": ""})
    assert run.code == 1, run.text
    assert "npm install @foundry-rs/anvil-linux-amd64@1.7.1" in run.text and "CRYO_INGEST_ANVIL" in run.text, run.text
    assert "Traceback" not in run.text
    assert not (tmp_path / "archive").exists()
