"""The chain's own commitments, recomputed from archived rows: a block's logs bloom and receipts root.

The receipts root commits to every receipt of a block: its type, status, cumulative gas, bloom and
logs. Recomputing it from the archived `transactions` (type, success, gas_used) and `logs` proves
both datasets complete and exact for that block with no RPC call: a missing, extra or altered log,
a dropped transaction or a wrong status changes the root. RLP and the Merkle-Patricia trie come
from the Ethereum Foundation's `rlp` and `trie` packages, the bloom from `eth-bloom`.

The check applies where receipts follow EIP-658 and EIP-2718 (post-Byzantium Ethereum and the chains
that follow it). `not_applicable` says why it does not apply to a block elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import rlp
from eth_bloom.bloom import BloomFilter
from trie.hexary import HexaryTrie

# Receipts before Byzantium hold an intermediate state root instead of a status (EIP-658).
BYZANTIUM = {1: 4_370_000, 61: 8_772_000}  # Ethereum, Ethereum Classic (Atlantis)
# Ethereum's transaction types: legacy, EIP-2930, EIP-1559, EIP-4844, EIP-7702.
ETHEREUM_TYPES = frozenset({0, 1, 2, 3, 4})
# Chains with types of their own whose receipts use the standard typed encoding (type ‖ rlp(receipt)).
# Arbitrum Nitro (One, Nova, Sepolia): checked on Arbitrum Sepolia block 185,232,421 (type 0x6a).
EXTRA_TYPES = {chain: frozenset(range(0x64, 0x6B)) for chain in (42161, 42170, 421614)}
EMPTY_ROOT = HexaryTrie.BLANK_NODE_HASH


@dataclass(frozen=True)
class Tx:
    index: int
    type: int | None
    success: bool | None
    gas_used: int | None


@dataclass(frozen=True)
class Log:
    transaction_index: int
    address: bytes
    topics: tuple[bytes, ...]
    data: bytes


def bloom(logs: Iterable[Log]) -> int:
    """The 2048-bit bloom of logs' addresses and topics, as an integer."""
    b = BloomFilter()
    for log in logs:
        b.add(log.address)
        for topic in log.topics:
            b.add(topic)
    return int(b)


def bloom_bytes(value: int) -> bytes:
    return value.to_bytes(256, "big")


def receipt_blooms(logs: Iterable[Log]) -> dict[int, int]:
    """Each receipt's bloom by transaction index: computed once, OR-ed into the block's, encoded in the receipts."""
    out: dict[int, int] = {}
    for log in logs:
        out[log.transaction_index] = out.get(log.transaction_index, 0) | bloom([log])
    return out


def block_bloom(blooms: dict[int, int]) -> int:
    out = 0
    for value in blooms.values():
        out |= value
    return out


def not_applicable(chain_id: int, block: int, txs: Sequence[Tx]) -> str | None:
    """Why the receipts root cannot be recomputed for this block from archived rows, or None if it can.

    A block without transactions always can (its root is the empty trie's), whatever the era.
    """
    if not txs:
        return None
    if block < BYZANTIUM.get(chain_id, 0):
        return "pre-Byzantium: receipts hold a state root, not a status"
    allowed = ETHEREUM_TYPES | EXTRA_TYPES.get(chain_id, frozenset())
    for tx in txs:
        if tx.success is None:
            return "no status archived (pre-Byzantium receipts hold a state root, not a status)"
        if tx.gas_used is None:
            return "gas used not archived"
        if tx.type is None or tx.type not in allowed:
            kind = "unknown" if tx.type is None else hex(tx.type)
            return f"transaction type {kind}: receipts of this type follow the chain's own rules"
    return None


def receipts_root(txs: Sequence[Tx], logs: Sequence[Log], blooms: dict[int, int] | None = None) -> bytes:
    """The receipts trie root of a block: txs in index order, logs in log-index order (`not_applicable` was None)."""
    blooms = receipt_blooms(logs) if blooms is None else blooms
    by_tx: dict[int, list[Log]] = {}
    for log in logs:
        by_tx.setdefault(log.transaction_index, []).append(log)
    trie = HexaryTrie({})
    cumulative = 0
    for tx in txs:
        assert tx.gas_used is not None and tx.success is not None and tx.type is not None
        cumulative += tx.gas_used
        mine = by_tx.get(tx.index, [])
        body = rlp.encode(
            [
                1 if tx.success else 0,
                cumulative,
                bloom_bytes(blooms.get(tx.index, 0)),
                [[log.address, list(log.topics), log.data] for log in mine],
            ]
        )
        trie[rlp.encode(tx.index)] = body if tx.type == 0 else bytes([tx.type]) + body
    return bytes(trie.root_hash)
