"""The gateway's own HTTP/1.1: its client to the endpoints (gateway/upstream.py) and its server for
Cryo (gateway/listener.py), over real sockets against servers that answer byte for byte as told."""

from __future__ import annotations

import asyncio
import base64
import gzip
import socket
import ssl
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cryo_ingest.gateway import upstream
from cryo_ingest.gateway.listener import Listener, Request, Response
from cryo_ingest.gateway.upstream import Client, ConnectFailed, ConnectionFailed

BODY = b'{"jsonrpc":"2.0","id":1,"result":"0x1"}'


def ok(body: bytes = BODY, *headers: str) -> bytes:
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Scripted:
    """A server that reads one request at a time and answers what `answer(n, request)` returns: bytes
    to send, or None to close the connection without a word. Counts connections and requests."""

    def __init__(self, answer: Callable[[int, bytes], bytes | None]) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Scripted:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/v2/key"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                reply = self.answer(len(self.requests), request)
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


def content_length(head: bytes) -> int:
    return next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))


def run(coro: Awaitable[Any]) -> Any:
    """On uvloop, as the gateway runs."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)  # type: ignore[arg-type]


def test_kept_alive_connection_is_reused() -> None:
    async def scenario() -> tuple[list[upstream.Answer], int]:
        async with Scripted(lambda n, r: ok()) as server:
            client = Client(server.url)
            answers = [await client.post(b"{}") for _ in range(5)]
            client.close()
            return answers, server.connections

    answers, connections = run(scenario())
    assert [a.body for a in answers] == [BODY] * 5 and connections == 1


def test_request_line_host_and_basic_auth_from_the_url() -> None:
    async def scenario() -> bytes:
        async with Scripted(lambda n, r: ok()) as server:
            client = Client(server.url.replace("http://", "http://us%40er:pa%3Ass@") + "?x=1")
            await client.post(b'{"a":1}')
            client.close()
            return server.requests[0]

    request = run(scenario())
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v2/key?x=1 HTTP/1.1" and body == b'{"a":1}'
    assert "Authorization: Basic " + base64.b64encode(b"us@er:pa:ss").decode() in lines
    assert {"User-Agent: cryo-ingest", "Accept: application/json", "Content-Type: application/json"} <= set(lines)
    assert not any(line.lower().startswith("accept-encoding") for line in lines)  # plain http: a node near us


def test_chunked_gzip_and_close_delimited_replies() -> None:
    chunked = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (BODY[:10], BODY[10:])) + b"0\r\n\r\n"
    replies = {
        1: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked,
        2: ok(gzip.compress(BODY), "Content-Encoding: gzip"),
        3: b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 2\r\nContent-Length: 4\r\n\r\nslow",
    }

    async def scripted() -> list[upstream.Answer]:
        async with Scripted(lambda n, r: replies[n]) as server:
            client = Client(server.url)
            got = [await client.post(b"{}") for _ in replies]
            client.close()
            return got

    async def close_delimited() -> upstream.Answer:
        """No length and no chunks: the body ends when the server closes (HTTP/1.0)."""

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n{}")
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + BODY)
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        client = Client(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/")
        answer = await client.post(b"{}")
        client.close()
        server.close()
        return answer

    got = run(scripted())
    assert got[0].body == BODY and got[1].body == BODY
    assert (got[2].status, got[2].retry_after, got[2].body) == (429, "2", b"slow")
    last = run(close_delimited())
    assert (last.status, last.body) == (200, BODY)


def test_connection_close_is_not_reused() -> None:
    async def scenario() -> int:
        async with Scripted(lambda n, r: ok(BODY, "Connection: close")) as server:
            client = Client(server.url)
            for _ in range(3):
                assert (await client.post(b"{}")).body == BODY
            client.close()
            return server.connections

    assert run(scenario()) == 3


def test_a_reset_is_a_fault_but_a_stale_idle_connection_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """Closed without an answer: on a connection used a moment ago, a fault for the pool to count and
    retry; on one idle past STALE_SECONDS (the server's idle timeout struck as we sent), sent again."""
    monkeypatch.setattr(upstream, "STALE_SECONDS", 0.2)

    async def scenario() -> tuple[str, bytes, int, int]:
        async with Scripted(lambda n, r: ok() if n != 2 else None) as server:
            client = Client(server.url)
            await client.post(b"{}")
            with pytest.raises(ConnectionFailed) as fault:
                await client.post(b"{}")  # request 2: closed at once
            assert (await client.post(b"{}")).body == BODY  # a new connection
            assert client.resent == 0
            client._idle[0].idle_since -= 1.0  # as if idle for a second: the server's close is taken for its idle timeout
            server.answer = lambda n, r: ok() if n != 4 else None
            return str(fault.value), (await client.post(b"{}")).body, server.connections, client.resent

    message, body, connections, resent = run(scenario())
    assert message == "the connection closed before an answer"
    assert body == BODY and connections == 3 and resent == 1  # counted in the endpoint's metrics


def test_refused_names_host_and_port_and_a_timeout_closes_the_connection() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused

        async def refused() -> str:
            with pytest.raises(ConnectFailed) as exc:
                await Client(f"http://127.0.0.1:{port}/").post(b"{}")
            return str(exc.value)

        assert run(refused()) == f"cannot connect to 127.0.0.1:{port}: Connection refused"

    async def timeout() -> tuple[int, int]:
        async with Scripted(lambda n, r: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{" if n == 1 else ok()) as server:
            client = Client(server.url)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await client.post(b"{}")  # half a reply, then nothing
            await client.post(b"{}")  # not on the connection the timeout left mid-reply
            client.close()
            return server.connections, len(client._open)

    assert run(timeout()) == (2, 0)


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context for `localhost` and a client context that trusts it alone."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return server, ssl.create_default_context(cafile=str(cert_file))


def test_https_asks_for_gzip_and_checks_the_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Providers are https: the handshake on uvloop, the host's name checked, replies compressed."""
    server_tls, trusting = self_signed(tmp_path)
    requests: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            requests.append(head + await reader.readexactly(content_length(head)))
            writer.write(ok(gzip.compress(BODY), "Content-Encoding: gzip"))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    async def scenario() -> tuple[bytes, str]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_tls)
        port = server.sockets[0].getsockname()[1]
        body = (await Client(f"https://localhost:{port}/v2/key").post(b"{}")).body
        monkeypatch.setattr(upstream, "_tls", ssl.create_default_context)  # the system's CAs: ours is unknown
        with pytest.raises(ConnectFailed) as untrusted:
            await Client(f"https://localhost:{port}/v2/key").post(b"{}")
        server.close()
        return body, str(untrusted.value)

    monkeypatch.setattr(upstream, "_tls", lambda: trusting)
    body, untrusted = run(scenario())
    assert body == BODY
    assert b"\r\nAccept-Encoding: gzip, deflate\r\n" in requests[0] and requests[0].startswith(b"POST /v2/key HTTP/1.1")
    assert untrusted.startswith("cannot connect to localhost:") and "CERTIFICATE_VERIFY_FAILED" in untrusted, untrusted


# ---- the listener --------------------------------------------------------------------------------


async def listening(handler: Callable[[Request], Awaitable[Response]]) -> tuple[Listener, int]:
    listener = Listener(handler)
    return listener, await listener.start()


async def echo(request: Request) -> Response:
    if request.path == "/slow":
        await asyncio.sleep(0.2)
    return Response(200, f"{request.method} {request.path} {sorted(request.query.items())} ".encode() + request.body)


def post(path: str, body: bytes, *headers: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def exchange(port: int, data: bytes, replies: int) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    got = []
    for _ in range(replies):
        head = await reader.readuntil(b"\r\n\r\n")
        got.append(head.split(b"\r\n")[0] + b" | " + await reader.readexactly(content_length(head)))
    writer.close()
    return got


def test_pipelined_requests_are_answered_in_order() -> None:
    async def scenario() -> list[bytes]:
        listener, port = await listening(echo)
        data = post("/slow", b"1") + post("/fast?to=9&from=2", b"2") + b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n"
        got = await exchange(port, data, 3)
        await listener.stop()
        return got

    assert run(scenario()) == [
        b"HTTP/1.1 200 OK | POST /slow [] 1",
        b"HTTP/1.1 200 OK | POST /fast [('from', '2'), ('to', '9')] 2",
        b"HTTP/1.1 200 OK | GET /x [] ",
    ]


def test_expect_continue_and_a_bad_request() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        listener, port = await listening(echo)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        interim = await reader.readuntil(b"\r\n\r\n")
        writer.write(b"ok")
        head = await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(content_length(head))
        writer.close()
        bad = await exchange(port, b"NOT HTTP AT ALL\r\n\r\n", 1)
        await listener.stop()
        return interim, bad[0]

    interim, bad = run(scenario())
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert bad == b"HTTP/1.1 400 Bad Request | bad request"


def test_a_client_that_hangs_up_cancels_its_request() -> None:
    """A partition killed at its deadline: its requests stop, not retried for minutes on behalf of no one."""

    async def scenario() -> list[str]:
        seen: list[str] = []

        async def handler(request: Request) -> Response:
            seen.append("started")
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise
            return Response(200, b"")

        listener, port = await listening(handler)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post("/", b"{}"))
        await asyncio.sleep(0.1)
        writer.close()
        await asyncio.sleep(0.1)
        cancelled = seen.copy()  # before stop() or the runner's end cancel what is left
        await listener.stop()
        return cancelled

    assert run(scenario()) == ["started", "cancelled"]


def test_a_handler_that_fails_gives_500_and_the_connection_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/bug":
            raise KeyError("from")
        return Response(200, b"fine")

    async def scenario() -> list[bytes]:
        listener, port = await listening(handler)
        got = await exchange(port, post("/bug", b"") + post("/", b""), 2)
        await listener.stop()
        return got

    assert run(scenario()) == [b"HTTP/1.1 500 Internal Server Error | internal error", b"HTTP/1.1 200 OK | fine"]
    assert "gateway: KeyError on POST" in caplog.text
