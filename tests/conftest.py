from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cryo_ingest import devnet

sys.path.insert(0, str(Path(__file__).parent))

CANARY = "CANARY-SECRET-123"
DEVNET_BLOCKS = 250
CHUNK = 50


def rpc(url: str, method: str, *params: Any) -> Any:
    req = urllib.request.Request(
        url,
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode(),
        {"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["result"]


@dataclass
class Devnet:
    url: str
    chain: devnet.Chain


@pytest.fixture(scope="session")
def chain() -> Iterator[Devnet]:
    """A deterministic devnet of 250 blocks (+2 so all are final), shared by the session."""
    with devnet.anvil() as node:
        yield Devnet(node.url, devnet.generate_sync(node.url, DEVNET_BLOCKS, 10))


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> Run:
    """The real `cryo-ingest` console script in its own process."""
    exe = Path(sys.executable).parent / "cryo-ingest"
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    p = subprocess.run([str(exe), *args], capture_output=True, text=True, env=full_env, timeout=timeout)
    return Run(p.returncode, p.stdout, p.stderr)


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def manifest(root: Path, chain_id: int, dataset: str) -> dict[str, Any]:
    return dict(json.loads((root / "cold" / str(chain_id) / dataset / "manifest.json").read_text()))
