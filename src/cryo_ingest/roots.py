"""The chain's own commitments, recomputed from rows: a block's logs bloom and receipts root (verify and validate).

The receipts root commits to every receipt of a block: its type, status, cumulative gas, bloom and
logs. Recomputing it from the archived `transactions` (type, success, gas_used) and `logs` proves
both datasets complete and exact for that block with no RPC call: a missing, extra or altered log,
a dropped transaction or a wrong status changes the root. The trie's keys are rlp(0..n-1), so its
root is built in one pass over the sorted keys, without a trie database (`ordered_trie_root`); RLP
is encoded here (byte strings and lists are all a receipt holds); keccak is eth-hash's pysha3
backend (safe-pysha3's C keccak, called directly: under 1 µs a call where eth_hash.auto's pycryptodome
took about 5), for the trie's nodes and the bloom's items alike (40 receipts: 9 ms with `trie`'s
HexaryTrie, about 0.5 ms here with their blooms; docs/benchmarks.md, `bench/checks.py`).

The check applies where receipts follow EIP-658 and EIP-2718 (post-Byzantium Ethereum and the chains
that follow it). `not_applicable` says why it does not apply to a block elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from typing import Any

from eth_hash.backends.pysha3 import keccak256 as keccak

# Receipts before Byzantium hold an intermediate state root instead of a status (EIP-658).
BYZANTIUM = {1: 4_370_000, 61: 8_772_000}  # Ethereum, Ethereum Classic (Atlantis)
# Ethereum's transaction types: legacy, EIP-2930, EIP-1559, EIP-4844, EIP-7702.
ETHEREUM_TYPES = frozenset({0, 1, 2, 3, 4})
# Chains with types of their own whose receipts use the standard typed encoding (type ‖ rlp(receipt)).
# Arbitrum Nitro (One, Nova, Sepolia): checked on Arbitrum Sepolia block 185,232,421 (type 0x6a).
EXTRA_TYPES = {chain: frozenset(range(0x64, 0x6B)) for chain in (42161, 42170, 421614)}
EMPTY_ROOT = keccak(b"\x80")  # the root of a trie with no keys: keccak(rlp(b""))


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


def tx_of(row: Mapping[str, Any]) -> Tx:
    """A transaction from an archived row (Cryo's columns)."""
    return Tx(row["transaction_index"], row["transaction_type"], row["success"], row["gas_used"])


def log_of(row: Mapping[str, Any]) -> Log:
    """A log from an archived row (Cryo's columns: topic0..topic3, null where absent)."""
    topics = tuple(t for t in (row["topic0"], row["topic1"], row["topic2"], row["topic3"]) if t is not None)
    return Log(row["transaction_index"], row["address"] or b"", topics, row["data"] or b"")


def bloom(logs: Iterable[Log]) -> int:
    """The 2048-bit bloom of logs' addresses and topics, as an integer."""
    return block_bloom(receipt_blooms(logs))


def bloom_bytes(value: int) -> bytes:
    return value.to_bytes(256, "big")


def receipt_blooms(logs: Iterable[Log]) -> dict[int, int]:
    """Each receipt's bloom by transaction index: computed once, OR-ed into the block's, encoded in the receipts.
    An address or topic recurs within a block (a token, the Transfer topic): hashed once."""
    bits: dict[bytes, int] = {}
    out: dict[int, int] = {}
    for log in logs:
        value = out.get(log.transaction_index, 0)
        for item in (log.address, *log.topics):
            if (b := bits.get(item)) is None:
                b = bits[item] = _bloom_bits(item)
            value |= b
        out[log.transaction_index] = value
    return out


def _bloom_bits(item: bytes) -> int:
    """The three bits an item sets (Yellow Paper M3:2048): low 11 bits of the first three pairs of bytes of its keccak."""
    h = keccak(item)
    return (1 << (((h[0] << 8) | h[1]) & 2047)) | (1 << (((h[2] << 8) | h[3]) & 2047)) | (1 << (((h[4] << 8) | h[5]) & 2047))


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
    return ordered_trie_root(receipts(txs, logs, blooms))


def receipts(txs: Sequence[Tx], logs: Sequence[Log], blooms: dict[int, int] | None = None) -> dict[int, bytes]:
    """Each transaction's consensus receipt by its index: type ‖ rlp([status, cumulative gas, bloom, logs]), no type
    byte if legacy. Keyed by the rows' own indexes, so that rows whose indexes are not 0..n-1 do not make the root."""
    blooms = receipt_blooms(logs) if blooms is None else blooms
    by_tx: dict[int, list[bytes]] = {}
    for log in logs:
        topics = encode_list([encode_bytes(t) for t in log.topics])
        entry = encode_list([encode_bytes(log.address), topics, encode_bytes(log.data)])
        by_tx.setdefault(log.transaction_index, []).append(entry)
    out = {}
    cumulative = 0
    for tx in txs:
        assert tx.gas_used is not None and tx.success is not None and tx.type is not None
        cumulative += tx.gas_used
        value = blooms.get(tx.index, 0)
        body = encode_list(
            [
                b"\x01" if tx.success else b"\x80",
                encode_bytes(_uint(cumulative)),
                _BLOOM_PREFIX + value.to_bytes(256, "big") if value else _EMPTY_BLOOM,
                encode_list(by_tx.get(tx.index, ())),
            ]
        )
        out[tx.index] = body if tx.type == 0 else bytes((tx.type,)) + body
    return out


# ---- a block against its header: what verify and the ingest's validate stage both check ---------


@dataclass(frozen=True)
class Header:
    """What a block's header commits to, as the blocks dataset holds it (None: not archived)."""

    receipts_root: bytes | None
    logs_bloom: bytes | None
    gas_used: int | None


@dataclass(frozen=True)
class Finding:
    """A check the block failed: `datasets` names the rows at fault, `what` says how."""

    check: str
    datasets: str
    what: str


@dataclass
class Outcome:
    failed: list[Finding] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (check, why it cannot apply here)
    applied: list[tuple[str, bool]] = field(default_factory=list)  # (check, whether the block had anything to check)


def check_block(chain_id: int, number: int, header: Header, txs: Sequence[Tx] | None, logs: Sequence[Log] | None) -> Outcome:
    """A block's rows against its header: the logs bloom (logs), the gas used (transactions), the receipts
    root (both). None for a dataset the caller does not hold: its checks do not run."""
    out = Outcome()
    blooms = receipt_blooms(logs) if logs is not None else {}
    if logs is not None:
        if header.logs_bloom is None:
            out.skipped.append(("logs_bloom", "the header's logs_bloom is not archived"))
        else:
            out.applied.append(("logs_bloom", bool(logs)))
            if bloom_bytes(block_bloom(blooms)) != header.logs_bloom:
                out.failed.append(
                    Finding("logs_bloom", "logs", f"the bloom of the {len(logs)} logs differs from the header's logs_bloom")
                )
    if txs is None:
        return out
    used = [t.gas_used for t in txs]
    if header.gas_used is not None and None not in used:
        total = sum(u for u in used if u is not None)
        out.applied.append(("gas_used", bool(txs)))
        if total != header.gas_used:
            out.failed.append(
                Finding(
                    "gas_used",
                    "transactions",
                    f"the {len(txs)} transactions used {total:,} gas, the header says {header.gas_used:,}",
                )
            )
    if logs is None:
        return out
    if header.receipts_root is None:
        out.skipped.append(("receipts_root", "the header's receipts_root is not archived"))
        return out
    if (reason := not_applicable(chain_id, number, txs)) is not None:
        out.skipped.append(("receipts_root", reason))
        return out
    out.applied.append(("receipts_root", bool(txs)))
    computed = receipts_root(txs, logs, blooms)
    if computed != header.receipts_root:
        out.failed.append(
            Finding(
                "receipts_root",
                "transactions+logs",
                f"receipts root recomputed from {len(txs)} transactions and {len(logs)} logs is 0x{computed.hex()[:16]}…, "
                f"the header's is 0x{header.receipts_root.hex()[:16]}…",
            )
        )
    return out


# ---- the ordered trie ------------------------------------------------------------------------


def ordered_trie_root(values: Mapping[int, bytes]) -> bytes:
    """The root of the Merkle-Patricia trie mapping rlp(i) to values[i], as transactions and receipts
    tries are: the keys sorted once, each node encoded and hashed once, bottom up; no trie database."""
    if not values:
        return EMPTY_ROOT
    items = sorted((_nibbles(encode_bytes(_uint(i))), value) for i, value in values.items())
    return keccak(_node(items, 0))  # the root is hashed whatever its size


def _node(items: list[tuple[bytes, bytes]], depth: int) -> bytes:
    """The RLP of the node holding `items` (sorted, distinct keys as nibbles) below their first `depth` nibbles."""
    first = items[0][0]
    if len(items) == 1:
        return encode_list([encode_bytes(_compact(first[depth:], leaf=True)), encode_bytes(items[0][1])])
    last = items[-1][0]
    shared = depth  # sorted keys: what the first and last share, all share
    while shared < len(first) and shared < len(last) and first[shared] == last[shared]:
        shared += 1
    if shared > depth:
        return encode_list([encode_bytes(_compact(first[depth:shared], leaf=False)), _reference(_node(items, shared))])
    slots = [b"\x80"] * 17
    rest = items
    if len(first) == depth:  # a key ending here: its value sits in the branch itself
        slots[16], rest = encode_bytes(items[0][1]), items[1:]
    for nibble, group in groupby(rest, key=lambda item: item[0][depth]):
        slots[nibble] = _reference(_node(list(group), depth + 1))
    return encode_list(slots)


def _reference(node: bytes) -> bytes:
    """A child as its parent holds it: inline if its RLP is shorter than 32 bytes, else its hash."""
    return node if len(node) < 32 else b"\xa0" + keccak(node)


def _nibbles(key: bytes) -> bytes:
    return bytes(n for byte in key for n in (byte >> 4, byte & 15))


def _compact(nibbles: bytes, leaf: bool) -> bytes:
    """Hex-prefix encoding of a path: a flag nibble (leaf, odd length), then the nibbles packed in bytes."""
    flag = 2 if leaf else 0
    nibbles = (bytes([flag + 1]) if len(nibbles) % 2 else bytes([flag, 0])) + nibbles
    return bytes((nibbles[i] << 4) | nibbles[i + 1] for i in range(0, len(nibbles), 2))


# ---- RLP: byte strings and lists ---------------------------------------------------------------


def _uint(value: int) -> bytes:
    """An integer as RLP holds it: big-endian, no leading zeros (zero is the empty string)."""
    return value.to_bytes((value.bit_length() + 7) // 8, "big")


def _prefix(length: int, short: int) -> bytes:
    if length < 56:
        return bytes((short + length,))
    size = _uint(length)
    return bytes((short + 55 + len(size),)) + size


def encode_bytes(value: bytes) -> bytes:
    n = len(value)
    if n == 1 and value[0] < 0x80:
        return value
    return (bytes((0x80 + n,)) if n < 56 else _prefix(n, 0x80)) + value


def encode_list(encoded: Iterable[bytes]) -> bytes:
    """A list of items already encoded."""
    payload = b"".join(encoded)
    n = len(payload)
    return (bytes((0xC0 + n,)) if n < 56 else _prefix(n, 0xC0)) + payload


_BLOOM_PREFIX = _prefix(256, 0x80)  # a receipt's bloom: 256 bytes
_EMPTY_BLOOM = _BLOOM_PREFIX + bytes(256)  # the bloom of a receipt without logs
