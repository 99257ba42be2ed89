"""What one call costs at providers that meter compute units or credits, not requests.

Each table is the provider's published figure per method, for the unit its rate limit counts
(docs/rpc-pool.md cites the pages). `default` is what a method the table does not list costs:
Infura and QuickNode publish one; Alchemy does not, and its most common figure (20) stands in.
"""

from __future__ import annotations

# Alchemy's *throughput* CU (what its compute-units-per-second limit counts; where the page shows
# no separate throughput figure it equals the CU): https://www.alchemy.com/docs/reference/compute-unit-costs
# and the method pages (debug_traceBlockByNumber, trace_block) under https://www.alchemy.com/docs/chains/.
ALCHEMY = {
    "net_version": 0,
    "eth_chainId": 0,
    "eth_syncing": 0,
    "eth_blockNumber": 10,
    "eth_feeHistory": 10,
    "eth_maxPriorityFeePerGas": 10,
    "eth_getTransactionReceipt": 20,
    "eth_getBlockByNumber": 20,
    "eth_getBlockByHash": 20,
    "eth_getTransactionByHash": 20,
    "eth_getBalance": 20,
    "eth_getCode": 20,
    "eth_getStorageAt": 20,
    "eth_getTransactionCount": 20,
    "eth_getProof": 20,
    "eth_gasPrice": 20,
    "eth_estimateGas": 20,
    "eth_call": 26,
    "eth_getLogs": 60,
    "eth_getFilterLogs": 60,
    "eth_sendRawTransaction": 250,
    "eth_getBlockReceipts": 500,
    "trace_block": 20,
    "debug_traceBlockByNumber": 1000,
    "debug_traceBlockByHash": 1000,
    "debug_traceTransaction": 1000,
    "debug_traceCall": 1000,
    "default": 20,
}

# Infura's credits (Ethereum, the baseline other networks fall back to; 80 for an unlisted method):
# https://docs.metamask.io/services/get-started/pricing/credit-cost
INFURA = {
    "eth_chainId": 5,
    "eth_syncing": 5,
    "net_version": 5,
    "eth_blockNumber": 80,
    "eth_call": 80,
    "eth_getBalance": 80,
    "eth_getBlockByHash": 80,
    "eth_getBlockByNumber": 80,
    "eth_getCode": 80,
    "eth_getStorageAt": 80,
    "eth_getTransactionByHash": 80,
    "eth_getTransactionCount": 80,
    "eth_getTransactionReceipt": 80,
    "eth_sendRawTransaction": 80,
    "eth_feeHistory": 80,
    "eth_gasPrice": 80,
    "eth_getProof": 150,
    "eth_getBlockTransactionCountByNumber": 150,
    "eth_estimateGas": 300,
    "eth_getLogs": 255,
    "eth_getFilterLogs": 255,
    "eth_getBlockReceipts": 1000,
    "trace_block": 300,
    "trace_call": 300,
    "trace_callMany": 300,
    "trace_filter": 300,
    "trace_transaction": 300,
    "debug_traceBlock": 1000,
    "debug_traceBlockByHash": 1000,
    "debug_traceBlockByNumber": 1000,
    "debug_traceCall": 1000,
    "debug_traceTransaction": 1000,
    "default": 80,
}

# QuickNode's API credits on Ethereum (and the other chains its table puts at 20): every method 20,
# trace and debug methods twice that, the "large calls" four times: https://quicknode.com/api-credits/blast
# (one table on every chain's page; other chains have other multipliers, e.g. 50 for Monad: give those as a table).
QUICKNODE = {
    "debug_traceBlockByNumber": 40,
    "debug_traceBlockByHash": 40,
    "debug_traceBlock": 40,
    "debug_traceTransaction": 40,
    "debug_traceCall": 40,
    "trace_block": 40,
    "trace_transaction": 40,
    "trace_call": 40,
    "trace_callMany": 40,
    "trace_filter": 40,
    "trace_get": 40,
    "trace_replayBlockTransactions": 80,
    "trace_replayTransaction": 80,
    "txpool_content": 80,
    "default": 20,
}

PROFILES: dict[str, dict[str, int]] = {"alchemy": ALCHEMY, "infura": INFURA, "quicknode": QUICKNODE}

# Methods a custom table may name: any a profile prices, and the rest of the standard read methods.
KNOWN_METHODS = frozenset(m for table in PROFILES.values() for m in table) | {
    "eth_getBlockTransactionCountByHash",
    "eth_getTransactionByBlockHashAndIndex",
    "eth_getTransactionByBlockNumberAndIndex",
    "eth_getUncleByBlockHashAndIndex",
    "eth_getUncleByBlockNumberAndIndex",
    "eth_getUncleCountByBlockHash",
    "eth_getUncleCountByBlockNumber",
    "eth_createAccessList",
    "eth_blobBaseFee",
    "net_listening",
    "net_peerCount",
    "web3_clientVersion",
    "erigon_getHeaderByNumber",
    "parity_getBlockReceipts",
}
