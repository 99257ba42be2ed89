"""Real HTTP servers on loopback for the tests: a fault-injecting proxy and a mainnet replay node.

Each runs an aiohttp app on its own thread and event loop, answering on any path (so an
endpoint URL can carry a canary "key" in its path).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any, Self

import aiohttp
from aiohttp import web

from cryo_ingest import devnet

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "mainnet"


class Server:
    """An aiohttp app on 127.0.0.1 in a background thread."""

    def __init__(self, handler: Callable[[web.Request], Any]) -> None:
        self.handler = handler
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.url = ""

    def __enter__(self) -> Server:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()
        return self

    async def _start(self) -> None:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self.handler)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    def __exit__(self, *exc: object) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Proxy:
    """A server whose handler forwards upstream over one client session, closed with the server."""

    relay_encoded = False  # pass bodies on as encoded (with their headers), not decompressed

    def __init__(self) -> None:
        self.server = Server(self.handle)
        self.session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    def client(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=not self.relay_encoded)
        return self.session

    def __enter__(self) -> Self:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.session is not None:
            asyncio.run_coroutine_threadsafe(self.session.close(), self.server.loop).result()
        self.server.__exit__()


@dataclass
class Faults:
    """Fractions of requests answered with each fault instead of being forwarded."""

    http_429: float = 0.0
    http_500: float = 0.0
    http_503: float = 0.0
    rpc_32005: float = 0.0
    truncated: float = 0.0
    reset: float = 0.0
    null_result: float = 0.0
    status: int | None = None  # answer every request with this HTTP status (e.g. 401)
    chain_id: int | None = None  # claim another chain
    dead: bool = False  # close every connection
    die_after: int | None = None  # dead from this many requests on
    rate_limit: int | None = None  # a provider's limit: requests per 1-second window, HTTP 429 beyond it
    # and said in every answer's headers (RATE_LIMIT_HEADERS): "ietf" or "x"
    rate_limit_headers: str | None = None
    block_methods: set[str] = field(default_factory=set)  # answer these with -32601
    # Answer these calls ("method", or "method:first param" such as "eth_getBlockByNumber:0x7") with
    # a JSON-RPC error quoting the request's full URL, user info and key included, as some providers do.
    echo_url: set[str] = field(default_factory=set)
    # (method, n, seconds): the first n calls of `method` get HTTP 429 with `Retry-After: seconds`, or
    # with `throttle_date`, Retry-After as an HTTP date at least that many seconds ahead.
    throttle: tuple[str, int, int] | None = None
    throttle_date: bool = False
    # debug_traceBlockByNumber answers every transaction with this error instead of its trace (as
    # nodes that lost or never kept the state do: "Resource not found", "traces not found").
    trace_errors: str | None = None
    # eth_getLogs refused as providers refuse it (see LOGS_REFUSALS): wider than `logs_range` blocks, or
    # (the proxy asks the node first) more than `logs_results` logs
    logs_range: int | None = None
    logs_results: int | None = None
    logs_refusal: str = "infura_range"
    stall: tuple[float, float] | None = None  # (fraction, seconds): these requests wait that long, then are answered
    # Lies, well-formed and incomplete, by kind (LIES): the share of the blocks whose answers lie (1.0: all), chosen
    # by the seed and the block (whatever the order requests come in); `lie_once`: each of them lies the first time
    # it is asked only (a flaky provider), else every time. The node is asked, then its answer is cut.
    lies: dict[str, float] = field(default_factory=dict)
    lie_once: bool = False


# A provider's lie of omission: the method it is told in, and what it leaves out of the node's answer.
LIES = {
    "drop_log": "eth_getLogs",  # one log of the range's
    "drop_tx": "eth_getBlockByNumber",  # the last transaction of a block asked for with full transactions
    "drop_receipt_log": "eth_getBlockReceipts",  # one log of one receipt
}


# A provider's refusal of an eth_getLogs range: (HTTP status, JSON-RPC error), as gateway/logs.py lists them.
LOGS_REFUSALS: dict[str, tuple[int, dict[str, Any]]] = {
    "infura_range": (200, {"code": -32602, "message": "range 50 exceeds limit of 10000"}),
    "geth_results": (200, {"code": -32005, "message": "query returned more than 10000 results"}),
    "quicknode": (413, {"code": -32614, "message": "eth_getLogs is limited to a 10,000 range"}),
    "alchemy": (200, {"code": -32602, "message": "Log response size exceeded. Please reduce query block range."}),
    "tenderly": (
        200,
        {"code": -32602, "message": "invalid params", "data": {"payload": "range 50 is bigger than range limit 2"}},
    ),
}


def rate_limit_headers(style: str, limit: int, used: int) -> dict[str, str]:
    """What a provider says of its limit of `limit` requests per one-second window, `used` of this one
    taken: IETF draft-ietf-httpapi-ratelimit-headers (from draft 08), or the X-RateLimit-* of TheRPC
    and nodewell (the window's end as a Unix time)."""
    left = 1.0 - time.monotonic() % 1.0  # the proxy's windows are the monotonic clock's seconds
    if style == "ietf":
        return {"RateLimit-Policy": f'"default";q={limit};w=1', "RateLimit": f'"default";r={max(0, limit - used)};t=1'}
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(max(0, limit - used)),
        "X-RateLimit-Reset": str(math.ceil(time.time() + left)),
    }


class FaultProxy(Proxy):
    """Forwards JSON-RPC to `upstream`, injecting faults; counts requests per method and second."""

    def __init__(self, upstream: str, faults: Faults | None = None, seed: int = 7) -> None:
        super().__init__()
        self.upstream = upstream
        self.faults = faults or Faults()
        self.random = random.Random(seed)
        self.seed = seed
        self.methods: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.times: list[float] = []
        self.paths: list[str] = []  # the path of each request in `times` (which client, when they differ)
        self.calls: list[tuple[float, str]] = []  # (arrival, method) of every single request
        self.bodies: list[dict[str, Any]] = []  # every single request (not batches), as sent
        self.logs_refused = 0
        self.throttled: list[float] = []  # when each HTTP 429 of `throttle` was sent
        self.echoed: list[str] = []  # the error messages of `echo_url`, key and all
        self.answered: list[float] = []  # when requests were forwarded and answered by the node
        self.window = (0, 0)  # (second, requests in it), for rate_limit
        self.lied: list[tuple[str, int]] = []  # (kind, block) of every lie told (for drop_log: the log's block)
        self.told: set[tuple[str, int]] = set()  # (kind, block asked for) of the lies told, for lie_once

    def url(self, path: str = "") -> str:
        return self.server.url + path

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = await self._handle(request)
        f = self.faults
        if f.rate_limit is not None and f.rate_limit_headers is not None:
            response.headers.update(rate_limit_headers(f.rate_limit_headers, f.rate_limit, self.window[1]))
        return response

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        f = self.faults
        raw = await request.read()
        body = json.loads(raw)
        self.times.append(time.monotonic())
        self.paths.append(request.path)
        items = body if isinstance(body, list) else [body]
        self.methods.update(str(item.get("method")) for item in items)
        if isinstance(body, list):
            return await self._forward(raw)  # batches (ethereum-etl sends them) are counted per call, never faulted
        method = str(body.get("method"))
        self.calls.append((self.times[-1], method))
        self.bodies.append(body)
        if f.die_after is not None and sum(self.methods.values()) > f.die_after:
            f.dead = True
        if f.dead:
            assert request.transport is not None
            request.transport.close()
            raise ConnectionResetError
        if f.status is not None:
            return web.Response(status=f.status, text="unauthorized")
        if f.rate_limit is not None:
            second = int(time.monotonic())
            count = self.window[1] + 1 if self.window[0] == second else 1
            self.window = (second, count)
            if count > f.rate_limit:
                self.injected["http_429"] += 1
                return web.Response(status=429, text="rate limited", headers={"Retry-After": "1"})
        if f.throttle is not None and method == f.throttle[0] and len(self.throttled) < f.throttle[1]:
            self.throttled.append(time.monotonic())
            seconds = f.throttle[2]
            after = formatdate(math.ceil(time.time()) + seconds, usegmt=True) if f.throttle_date else str(seconds)
            return web.Response(status=429, text="slow down", headers={"Retry-After": after})
        first = (body.get("params") or [None])[0]
        if method in f.echo_url or f"{method}:{first}" in f.echo_url:
            message = f"request {request_url(request)} rejected: {method} is not served for this key"
            self.echoed.append(message)
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "error": {"code": -32000, "message": message}})
        if f.chain_id is not None and method == "eth_chainId":
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": hex(f.chain_id)})
        if method in f.block_methods:
            return web.json_response(
                {"jsonrpc": "2.0", "id": body["id"], "error": {"code": -32601, "message": "the method does not exist"}}
            )
        if f.trace_errors is not None and method == "debug_traceBlockByNumber":
            async with self.client().post(self.upstream, data=raw, headers={"content-type": "application/json"}) as resp:
                reply = await resp.json()
            reply["result"] = [{"txHash": t.get("txHash"), "error": f.trace_errors} for t in reply.get("result") or []]
            return web.json_response(reply)
        if method == "eth_getLogs" and (f.logs_range is not None or f.logs_results is not None):
            return await self._limited_logs(raw, body)
        if any(LIES[kind] == method for kind in f.lies):
            return await self._lie(raw, method, body)
        if f.stall is not None and self.random.random() < f.stall[0]:
            self.injected["stall"] += 1
            await asyncio.sleep(f.stall[1])
        roll = self.random.random()
        for kind in ("http_429", "http_500", "http_503", "rpc_32005", "truncated", "reset", "null_result"):
            p = getattr(f, kind)
            if roll < p:
                if kind == "null_result" and method not in ("eth_getBlockByNumber", "eth_getBlockReceipts", "trace_block"):
                    break
                self.injected[kind] += 1
                return await self._fault(kind, request, body)
            roll -= p
        return await self._forward(raw)

    async def _limited_logs(self, raw: bytes, body: Any) -> web.StreamResponse:
        f, query = self.faults, body["params"][0]
        wide = f.logs_range is not None and int(query["toBlock"], 16) - int(query["fromBlock"], 16) + 1 > f.logs_range
        if not wide:
            async with self.client().post(self.upstream, data=raw, headers={"content-type": "application/json"}) as resp:
                data = await resp.read()
            if f.logs_results is None or len(json.loads(data).get("result") or []) <= f.logs_results:
                return web.Response(body=data, content_type="application/json")
        self.logs_refused += 1
        status, err = LOGS_REFUSALS[f.logs_refusal]
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "error": err}, status=status)

    async def _lie(self, raw: bytes, method: str, body: Any) -> web.StreamResponse:
        """The node's answer less what a lie of `method` leaves out, where the block is one that lies now."""
        async with self.client().post(self.upstream, data=raw, headers={"content-type": "application/json"}) as resp:
            reply = await resp.json()
        result, first = reply.get("result"), body["params"][0]
        asked = first["fromBlock"] if method == "eth_getLogs" else first
        if not asked.startswith("0x"):  # a tag ("finalized"): answered as it is
            return web.json_response(reply)
        block = int(asked, 16)
        for kind, share in self.faults.lies.items():
            if LIES[kind] != method or not result or not self._lies_now(kind, block, share):
                continue
            pick = random.Random(f"{self.seed}:{kind}:{block}")
            told = len(self.lied)
            if kind == "drop_log":
                log = result.pop(pick.randrange(len(result)))
                self.lied.append((kind, int(log["blockNumber"], 16)))
            elif kind == "drop_tx" and body["params"][1] and result["transactions"]:
                result["transactions"].pop()
                self.lied.append((kind, block))
            elif kind == "drop_receipt_log" and (with_logs := [r for r in result if r["logs"]]):
                receipt = pick.choice(with_logs)
                receipt["logs"].pop(pick.randrange(len(receipt["logs"])))
                self.lied.append((kind, block))
            if len(self.lied) > told:
                self.told.add((kind, block))
        return web.json_response(reply)

    def _lies_now(self, kind: str, block: int, share: float) -> bool:
        if share < 1.0 and random.Random(f"{self.seed}:{kind}:{block}:lies").random() >= share:
            return False
        return not (self.faults.lie_once and (kind, block) in self.told)

    async def _forward(self, raw: bytes) -> web.StreamResponse:
        async with self.client().post(self.upstream, data=raw, headers={"content-type": "application/json"}) as resp:
            data = await resp.read()
        self.answered.append(time.monotonic())
        return web.Response(body=data, content_type="application/json")

    async def _fault(self, kind: str, request: web.Request, body: Any) -> web.StreamResponse:
        if kind.startswith("http_"):
            headers = {"Retry-After": "0"} if kind == "http_429" else {}
            return web.Response(status=int(kind[5:]), text="fault", headers=headers)
        if kind == "rpc_32005":
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "error": {"code": -32005, "message": "limit exceeded"}})
        if kind == "truncated":
            return web.Response(body=b'{"jsonrpc":"2.0","id":', content_type="application/json")
        if kind == "null_result":
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": None})
        assert request.transport is not None
        request.transport.close()
        raise ConnectionResetError


def request_url(request: web.Request) -> str:
    """The URL the client asked for, as a provider sees it: user info (from Basic auth), host, path, query."""
    auth = request.headers.get("Authorization", "")
    userinfo = base64.b64decode(auth[6:]).decode().removesuffix(":") + "@" if auth.startswith("Basic ") else ""
    return f"http://{userinfo}{request.host}{request.raw_path}"


def _result(path: Path) -> Any:
    return json.loads(path.read_text())["result"]


class Replay:
    """A JSON-RPC node answering from recorded responses (`answer`); a LookupError is a JSON-RPC error."""

    def __init__(self) -> None:
        self.methods: Counter[str] = Counter()
        self.server = Server(self.handle)

    def __enter__(self) -> Self:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__()

    @property
    def url(self) -> str:
        return self.server.url

    def answer(self, method: str, params: list[Any]) -> Any:
        raise NotImplementedError

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        self.methods[body["method"]] += 1
        try:
            return web.json_response(
                {"jsonrpc": "2.0", "id": body["id"], "result": self.answer(body["method"], body.get("params", []))}
            )
        except LookupError as err:
            return web.json_response({"jsonrpc": "2.0", "id": body["id"], "error": {"code": -32000, "message": str(err)}})


class MainnetReplay(Replay):
    """Serves ../shared/fixtures/mainnet as a chain-1 node: only what the fixtures determine.

    eth_getBlockReceipts is built from the per-transaction receipt files (only for blocks whose
    receipts are all there), eth_getLogs from those receipts' logs; for blocks known only from
    their traces, eth_getBlockByNumber(n, false) gives the header fields the traces determine
    (hash, number, transaction hashes in order) and nothing else; anything else is an error.
    """

    def __init__(self) -> None:
        if not (FIXTURES / "README.md").exists():
            raise FileNotFoundError(f"mainnet fixtures not found at {FIXTURES} (shared/ must sit beside the repository)")
        self.full = {int(p.stem): _result(p) for p in (FIXTURES / "eth_getBlockByNumber").glob("*.json")}
        self.hashes_only = {int(p.stem): _result(p) for p in (FIXTURES / "eth_getBlockByNumber_txhashes_only").glob("*.json")}
        receipts = [_result(p) for p in (FIXTURES / "eth_getTransactionReceipt").glob("*.json")]
        self.receipts = {r["transactionHash"]: r for r in receipts}
        self.traces = {int(p.stem): _result(p) for p in (FIXTURES / "trace_block").glob("*.json")}
        self.debug = {int(p.stem): _result(p) for p in (FIXTURES / "debug_traceBlockByNumber").glob("*.json")}
        self.trace_headers = {
            n: {
                "hash": t[0]["blockHash"],
                "number": hex(n),
                "transactions": list(dict.fromkeys(x["transactionHash"] for x in t if x["transactionHash"])),
            }
            for n, t in self.traces.items()
            if t
        }
        self.head = 2_200_000
        super().__init__()

    def block_receipts(self, number: int) -> list[Any] | None:
        block = self.full.get(number)
        if block is None:
            return None
        found = [self.receipts.get(t["hash"]) for t in block["transactions"]]
        return None if any(r is None for r in found) else found

    def answer(self, method: str, params: list[Any]) -> Any:
        if method == "eth_chainId":
            return "0x1"
        if method == "eth_blockNumber":
            return hex(self.head)
        if method == "eth_getBlockByNumber":
            if params[0] in ("finalized", "latest", "safe"):
                return {"number": hex(self.head), "hash": "0x" + "00" * 32, "transactions": []}
            n = int(params[0], 16)
            if n in self.full:
                block = self.full[n]
                return block if params[1] else {**block, "transactions": [t["hash"] for t in block["transactions"]]}
            if n in self.hashes_only and not params[1]:
                return self.hashes_only[n]
            if n in self.trace_headers and not params[1]:
                return self.trace_headers[n]
            raise LookupError(f"block {n} with full={params[1]} is not in the fixtures")
        if method == "eth_getBlockReceipts":
            receipts = self.block_receipts(int(params[0], 16))
            if receipts is None:
                raise LookupError("receipts not in the fixtures")
            return receipts
        if method == "eth_getLogs":
            lo, hi = int(params[0]["fromBlock"], 16), int(params[0]["toBlock"], 16)
            logs = []
            for n in range(lo, hi + 1):
                if n in self.full:
                    receipts = self.block_receipts(n)
                    if receipts is None:
                        raise LookupError(f"receipts of block {n} are not in the fixtures")
                    logs += [log for r in receipts for log in r["logs"]]
            return logs
        if method == "trace_block" and int(params[0], 16) in self.traces:
            return self.traces[int(params[0], 16)]
        if method == "debug_traceBlockByNumber" and int(params[0], 16) in self.debug:
            return self.debug[int(params[0], 16)]
        raise LookupError(f"{method} {params} is not in the fixtures")


class S3FaultProxy(Proxy):
    """An HTTP proxy in front of the S3 server answering a fraction of requests with 500/503 or a dropped connection."""

    relay_encoded = True  # it forwards the upstream's headers too

    def __init__(self, upstream: str, http_500: float = 0.0, http_503: float = 0.0, drop: float = 0.0, seed: int = 11) -> None:
        super().__init__()
        self.upstream, self.http_500, self.http_503, self.drop = upstream, http_500, http_503, drop
        self.random = random.Random(seed)
        self.injected: Counter[str] = Counter()
        self.requests = 0

    @property
    def url(self) -> str:
        return self.server.url

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests += 1
        roll = self.random.random()
        if roll < self.http_500 + self.http_503:
            status = 500 if roll < self.http_500 else 503
            self.injected[f"http_{status}"] += 1
            return web.Response(status=status, text="<Error><Code>InternalError</Code></Error>", content_type="application/xml")
        if roll < self.http_500 + self.http_503 + self.drop:
            self.injected["drop"] += 1
            assert request.transport is not None
            request.transport.close()
            raise ConnectionResetError
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
        async with self.client().request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body, allow_redirects=False
        ) as resp:
            data = await resp.read()
            out = {
                k: v for k, v in resp.headers.items() if k.lower() not in ("content-length", "transfer-encoding", "connection")
            }
            return web.Response(status=resp.status, body=data, headers=out)


def s3_env(endpoint: str) -> dict[str, str]:
    """What a client (obstore, boto3, a cryo-ingest process) needs to use the S3 server at `endpoint`."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",  # what boto3 reads
        "AWS_ALLOW_HTTP": "true",
    }


class S3Server:
    """moto's S3 (and Secrets Manager) on loopback (or `host`), one request at a time.

    moto checks If-Match / If-None-Match and then writes, without a lock: under its threaded
    server two writers holding the same ETag can both pass the check (seen here: a lost
    manifest entry with 20 writers). S3 makes a conditional write atomic; serving one request at
    a time gives moto the same property.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        self.server = make_server(host, port, DomainDispatcherApplication(create_backend_app), threaded=False)
        self.endpoint = f"http://{host}:{self.server.server_port}"
        self.env = s3_env(self.endpoint)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> S3Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join(5)


class AuthS3Server:
    """moto's S3 in its own process, enforcing authentication from the first request (unknown keys get
    403 InvalidAccessKeyId). moto reads that setting once per process, so it cannot share S3Server's.
    Entered only once it answers HTTP; a server that does not start is an error, not a wait."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"

    def __enter__(self) -> AuthS3Server:
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            self._wait_until_up(time.monotonic() + 20)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_until_up(self, deadline: float) -> None:
        while True:
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
                return
            except urllib.error.HTTPError:  # it answers (anonymous requests are refused): up
                return
            except OSError:  # not listening yet
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start (exit code {self.process.poll()})") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(10)


class RedisServer:
    """A real `redis-server` on a free loopback port, no persistence; `stop` ends it mid-test (a store outage)."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def __enter__(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found: `make system-deps` installs it (Debian's package)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start (exit code {self.process.poll()})")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PostgresServer:
    """A throwaway PostgreSQL cluster (Debian's `postgresql` package) on a free loopback port, password auth.

    initdb and postgres refuse to run as root: as root, the cluster belongs to `nobody` (setpriv), in a
    folder of its own under /tmp (pytest's tmp_path is closed to other users)."""

    user = "cryo"

    def __init__(self, password: str) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="cryo-ingest-pg-"))
        self.password = password
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"postgresql://{self.user}:{password}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        bindir = Path(shutil.which("initdb") or next(Path("/usr/lib/postgresql").glob("*/bin/initdb"), Path("initdb"))).parent
        drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"] if os.geteuid() == 0 else []
        subprocess.run([*drop, str(bindir / args[0]), *args[1:]], check=True, capture_output=True, timeout=60)

    def __enter__(self) -> PostgresServer:
        if not shutil.which("initdb") and not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
            raise RuntimeError("initdb not found: `make system-deps` installs PostgreSQL (Debian's package)")
        (self.base / "pw").write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.base, "nobody")
        data = str(self.base / "data")
        self._run("initdb", "-D", data, "-U", self.user, "--pwfile", str(self.base / "pw"), "--auth=scram-sha-256", "--no-sync")
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", data, "-o", options, "-l", str(self.base / "log"), "-w", "start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._run("pg_ctl", "-D", str(self.base / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.base, ignore_errors=True)


if __name__ == "__main__":  # `python tests/servers.py HOST PORT`: S3Server in a process of its own (tests/test_netns.py)
    S3Server(sys.argv[1], int(sys.argv[2])).server.serve_forever()


@dataclass
class Forks:
    """Two anvil nodes that agree up to `fork - 1` and differ from `fork` on: `stale` on an older fork, shorter."""

    canonical: str
    stale: str
    fork: int


def _mine_empty(url: str, blocks: int, skew: int) -> None:
    """`blocks` empty blocks on top of the node's head, `skew` seconds off the devnet's timestamps (another fork)."""
    for _ in range(blocks):
        head = int(_rpc(url, "eth_blockNumber"), 16)
        _rpc(url, "evm_mine", devnet.GENESIS_TIMESTAMP + devnet.BLOCK_TIME * (head + 1) + skew)


def _rpc(url: str, method: str, *params: Any) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
    req = urllib.request.Request(url, body, {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())["result"]


@contextmanager
def stale_fork(blocks: int) -> Iterator[Forks]:
    """A reorg as an endpoint left behind sees it: both nodes mine the same devnet (devnet.generate is
    deterministic: blocks 1..blocks + 2), then block `blocks + 3` differs (its timestamp) and the canonical
    chain grows two blocks longer than the stale one. Both keep the fork final (finalized = head - 2)."""
    with ExitStack() as stack:
        canonical, stale = (stack.enter_context(devnet.anvil()) for _ in range(2))
        for node in (canonical, stale):
            devnet.generate_sync(node.url, blocks, 10)
        fork = blocks + 3
        assert (
            _rpc(canonical.url, "eth_getBlockByNumber", hex(fork - 1), False)["hash"]
            == _rpc(stale.url, "eth_getBlockByNumber", hex(fork - 1), False)["hash"]
        ), "the devnets differ before the fork"
        _mine_empty(canonical.url, 5, 0)
        _mine_empty(stale.url, 3, 1)
        yield Forks(canonical.url, stale.url, fork)
