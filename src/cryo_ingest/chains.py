"""What "final" means on each chain: the one place for per-chain rules.

Cold storage takes final blocks only. Most chains need no rule beyond the `finalized` tag (or
`latest - reorg_buffer` where it is not served). Monad executes asynchronously: consensus attests
a block's state and receipts roots only D = 3 blocks after it, and indexers have seen blocks
served before their `logsBloom` was ready (DESIGN.md, Monad), so its cold archive stays 3 blocks
behind `finalized`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ChainProfile:
    name: str
    unsettled_after_finalized: int = 0  # blocks at and below `finalized` whose roots are not attested yet


MONAD = ChainProfile("monad", unsettled_after_finalized=3)
PROFILES = {10143: MONAD, 143: MONAD}  # testnet, mainnet
DEFAULT = ChainProfile("evm")


def profile(chain_id: int) -> ChainProfile:
    return PROFILES.get(chain_id, DEFAULT)


class HeadSource(Protocol):
    def final_head(self, reorg_buffer: int) -> int: ...


def final_head(rpc: HeadSource, chain_id: int, reorg_buffer: int) -> int:
    """The highest block that cold storage may take on this chain."""
    return rpc.final_head(reorg_buffer) - profile(chain_id).unsettled_after_finalized
