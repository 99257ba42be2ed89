"""The CPU cost of checking blocks against their headers (roots.py, validate.py).

1. The receipts root: the ordered trie of roots.py against the Ethereum Foundation's `trie` (HexaryTrie) on the
   same encoded receipts, and the blooms, on real blocks: Monad's execution output (../shared/fixtures/monad-exec/).
2. The validate stage on a devnet archive of blocks + transactions + logs, per block: the shape checks alone
   (checks off: what validate did before) and with the content checks (on), in the same run, on the same files.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rlp
from common import CACHE, INGEST, cached_chain, command_line, measure, save
from monad_exec import FILES, blocks
from trie.hexary import HexaryTrie

from cryo_ingest import roots
from cryo_ingest.pipeline.plan import Chunk
from cryo_ingest.pipeline.validate import check_content, validate_blocks, validate_rows


def cpu(fn: Callable[[], object], repeat: int) -> float:
    """The least CPU seconds of `repeat` runs of fn (the least disturbed by the machine's other work)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        fn()
        best = min(best, time.process_time() - started)
    return best


def hexary(receipts: dict[int, bytes]) -> bytes:
    trie = HexaryTrie({})
    for i, value in receipts.items():
        trie[rlp.encode(i)] = value
    return bytes(trie.root_hash)


def receipts_root(name: str, repeat: int) -> dict[str, Any]:
    """ms of CPU per 40 receipts of one fixture file: blooms, the ordered trie (encoding included), HexaryTrie on the
    same receipts."""
    chain = [b for b in blocks(name) if b.txs]
    n = sum(len(b.txs) for b in chain)
    prepared = [(b, roots.receipt_blooms(b.logs)) for b in chain]
    encoded = [roots.receipts(b.txs, b.logs, bl) for b, bl in prepared]
    assert all(roots.receipts_root(b.txs, b.logs, bl) == b.receipts_root for b, bl in prepared)
    timings = {
        "blooms": cpu(lambda: [roots.receipt_blooms(b.logs) for b in chain], repeat),
        "ordered_trie": cpu(lambda: [roots.receipts_root(b.txs, b.logs, bl) for b, bl in prepared], repeat),
        "encode_only": cpu(lambda: [roots.receipts(b.txs, b.logs, bl) for b, bl in prepared], repeat),
        "hexary_trie": cpu(lambda: [hexary(e) for e in encoded], max(1, repeat // 3)),
    }
    return {
        "blocks": len(chain),
        "receipts": n,
        "logs": sum(len(b.logs) for b in chain),
        "ms_per_40_receipts": {k: round(v / n * 40 * 1000, 3) for k, v in timings.items()},
    }


def archive(blocks_n: int, txs: int, chunk: int) -> Path:
    root = CACHE / f"checks-archive-{blocks_n}x{txs}-{chunk}"
    if not (root / "cold").exists():
        with cached_chain(blocks_n + 2, txs) as url:
            args = ["--chain-id", "31337", "--start", "0", "--end", str(blocks_n - 1), "--datasets", "blocks,transactions,logs"]
            done = measure([INGEST, "backfill", *args, "--rpc", url, "--root", str(root), "--chunk-size", str(chunk)])
            assert done.returncode == 0, done.stderr
    return root


def validate_stage(root: Path, blocks_n: int, chunk: int, repeat: int) -> dict[str, Any]:
    """ms of CPU per block of the validate stage, checks off (shape) and on (shape + content), on the archived files."""
    base = root / "cold" / "31337"
    chunks = [Chunk(k, k + chunk - 1) for k in range(0, blocks_n, chunk)]
    files = [{d: base / d / f"{d}_{c.start:08}_{c.end:08}.parquet" for d in ("blocks", "transactions", "logs")} for c in chunks]

    def shape() -> None:
        for c, f in zip(chunks, files, strict=True):
            _, hashes = validate_blocks(f["blocks"], c, None, None)
            for d in ("transactions", "logs"):
                validate_rows(f[d], d, c, hashes)

    def content() -> None:
        for c, f in zip(chunks, files, strict=True):
            check_content(f, c, 31337, None)

    off, extra = cpu(shape, repeat), cpu(content, repeat)
    checked = check_content(files[0], chunks[0], 31337, None).counts
    assert checked.get("receipts_root") == chunk, checked
    return {
        "blocks": blocks_n,
        "ms_per_block": {"checks_off": round(off / blocks_n * 1000, 3), "checks_on": round((off + extra) / blocks_n * 1000, 3)},
        "content_ms_per_block": round(extra / blocks_n * 1000, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--blocks", type=int, default=1000)
    p.add_argument("--txs-per-block", type=int, default=40)
    p.add_argument("--chunk-size", type=int, default=250)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-save", action="store_true")
    a = p.parse_args()
    command = command_line()
    roots_doc = {name: receipts_root(name, a.repeat) for name in FILES}
    stage = validate_stage(archive(a.blocks, a.txs_per_block, a.chunk_size), a.blocks, a.chunk_size, a.repeat)
    rows = "\n".join(
        f"| {name} | {d['blocks']:,} | {d['receipts']:,} | {d['logs']:,} | "
        + " | ".join(str(d["ms_per_40_receipts"][k]) for k in ("blooms", "encode_only", "ordered_trie", "hexary_trie"))
        + f" | {d['ms_per_40_receipts']['hexary_trie'] / d['ms_per_40_receipts']['ordered_trie']:.1f}× |"
        for name, d in roots_doc.items()
    )
    md = f"""### Checking blocks against their headers: CPU

Receipts root, ms of CPU per 40 receipts (least of {a.repeat} runs; real blocks of `../shared/fixtures/monad-exec/`:
`devnet` is Monad's devnet, no logs; `ethereum` is Ethereum 15,000,001–15,000,031 executed by Monad's client).
`ordered trie` is roots.py's root (encoding included, blooms given); `HexaryTrie` is `trie`'s on the same encoded receipts.

| fixture | blocks | receipts | logs | blooms | encode | ordered trie | HexaryTrie | HexaryTrie ÷ ordered |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

Validate stage on a devnet archive of blocks + transactions + logs ({stage["blocks"]:,} blocks, {a.txs_per_block} transactions
each, chunks of {a.chunk_size}), ms of CPU per block: checks off (the shape checks alone) {stage["ms_per_block"]["checks_off"]},
checks on {stage["ms_per_block"]["checks_on"]} (content checks {stage["content_ms_per_block"]}: logs bloom, gas used,
receipts root; the receipts count costs the gateway one `len` per block).
"""
    doc = {"receipts_root": roots_doc, "validate": stage}
    print(md)
    if not a.no_save:
        save("checks", command, doc, md)


if __name__ == "__main__":
    main()
