"""The receipts root and logs bloom recomputed by `roots.py`, against `trie`'s HexaryTrie, eth-bloom,
and the headers of real blocks: every receipt of the mainnet-modern fixtures and of Monad's execution output."""

from __future__ import annotations

import random

import pytest
import rlp
from eth_bloom.bloom import BloomFilter
from modern_replay import HAND_BUILT, SERVED, rows
from monad_exec import FILES, blocks
from trie.hexary import HexaryTrie

from cryo_ingest import roots


def hexary_root(values: dict[int, bytes]) -> bytes:
    trie = HexaryTrie({})
    for i, value in values.items():
        trie[rlp.encode(i)] = value
    return bytes(trie.root_hash)


@pytest.mark.parametrize("n", [0, 1, 2, 15, 16, 17, 127, 128, 129, 255, 256, 257, 1000])
@pytest.mark.parametrize("size", [1, 8, 40, 600])
def test_ordered_trie_is_hexary_trie(n: int, size: int) -> None:
    """Values of 1 to `size` bytes: short ones make nodes under 32 bytes, held inline by their parent;
    n across the key lengths of rlp(i) (1 byte up to 127, 0x80 for 0, 2 bytes from 128, 3 from 256)."""
    r = random.Random(n * 1000 + size)
    values = {i: r.randbytes(r.randint(1, size)) for i in range(n)}
    assert roots.ordered_trie_root(values) == hexary_root(values)


def test_bloom_is_eth_bloom() -> None:
    r = random.Random(5)
    logs = [
        roots.Log(r.randrange(4), r.randbytes(20), tuple(r.randbytes(32) for _ in range(r.randrange(5))), b"") for _ in range(50)
    ]
    logs += logs[:10]  # an address or topic seen twice sets the same bits
    expected = BloomFilter()
    for log in logs:
        for item in (log.address, *log.topics):
            expected.add(item)
    assert roots.bloom(logs) == int(expected)
    for tx, value in roots.receipt_blooms(logs).items():
        assert value == roots.bloom([log for log in logs if log.transaction_index == tx])


@pytest.mark.parametrize("name", [*SERVED, *HAND_BUILT])
def test_mainnet_modern_every_receipt(name: str) -> None:
    """Ethereum 15,000,000 to 21,925,176 and Arbitrum Sepolia: the header's root and bloom from every receipt."""
    block = rows(name)
    txs = [roots.tx_of(t) for t in block.transactions]
    logs = [roots.log_of(x) for x in block.logs]
    receipts = roots.receipts(txs, logs)
    assert len(receipts) == len(block.transactions) > 0
    assert roots.ordered_trie_root(receipts) == hexary_root(receipts) == block.blocks[0]["receipts_root"]
    assert roots.bloom_bytes(roots.bloom(logs)) == block.blocks[0]["logs_bloom"]


@pytest.mark.parametrize("name", list(FILES))
def test_monad_execution_every_receipt(name: str) -> None:
    """Monad's own client: each header's receipts root, bloom and gas used commit to that block's own receipts
    (504 devnet blocks, 15,011 receipts; 31 Ethereum blocks it executed, with logs), through the check the
    ingest runs before publishing (roots.check_block)."""
    checked = receipts = 0
    for block in blocks(name):
        outcome = roots.check_block(
            block.chain_id,
            block.number,
            roots.Header(block.receipts_root, block.logs_bloom, block.gas_used),
            block.txs,
            block.logs,
        )
        assert outcome.failed == [] and outcome.skipped == [], (block.number, outcome)
        assert [check for check, _ in outcome.applied] == ["logs_bloom", "gas_used", "receipts_root"]
        if checked % 10 == 0:  # HexaryTrie takes 9 ms a block: every tenth block
            assert roots.ordered_trie_root(encoded := roots.receipts(block.txs, block.logs)) == hexary_root(encoded)
        checked += 1
        receipts += len(block.txs)
    assert (checked, receipts) == {"devnet": (504, 15_011), "ethereum": (31, 6_402)}[name]


def test_a_changed_receipt_changes_the_root() -> None:
    """The root has teeth: one log less, one status flipped, one transaction less."""
    block = next(b for b in blocks("ethereum") if b.logs)
    root = roots.receipts_root(block.txs, block.logs)
    assert root == block.receipts_root
    flipped = [roots.Tx(t.index, t.type, not t.success if t.index == 0 else t.success, t.gas_used) for t in block.txs]
    for txs, logs in ((block.txs, block.logs[:-1]), (flipped, block.logs), (block.txs[:-1], block.logs)):
        assert roots.receipts_root(txs, logs) != root
