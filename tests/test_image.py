"""The image: built with a private index's token at hand, it holds it nowhere; inside it, `cryo-ingest`
archives the host's devnet byte for byte as the host does; it runs as a non-root user; SIGTERM to
its PID 1 reaches `cryo-ingest`, and `run` stops gracefully.

A full build (minutes): marked `image`, run by `make image-test`, which .ci/run calls only when the
image's inputs or these tests changed. buildah builds and runs it here (vfs storage, chroot isolation); podman
cannot start a container on these machines, and buildah run makes no PID namespace, so the signal
tests start the image's entrypoint as PID 1 of a PID namespace of their own (`unshare`).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psutil
import pytest
from conftest import ALL, CHUNK, DEVNET_BLOCKS, Devnet, backfill, cli, files_under, run_command
from test_config import SPEC_YAML
from test_operator import StallProxy

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]  # the first test waits for the build

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "cryo_ingest:latest"
BUILDAH = ["buildah", "--storage-driver", "vfs"]


@dataclass
class Image:
    config: dict[str, Any]  # the OCI image config: User, Env, Entrypoint, Cmd, WorkingDir
    build_log: str
    canary: str
    container: str = ""  # a working container of the image, shared by the tests (each is a full copy with vfs)
    rootfs: str = ""  # its root filesystem, mounted


def buildah(*args: str, timeout: float = 120) -> str:
    p = subprocess.run([*BUILDAH, *args], capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"buildah {' '.join(args)}: {p.stderr}"
    return p.stdout


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    """`make image`'s build, forced, with a canary where secrets sit: in a pip.conf for the index
    (its token) and in the builder's environment (an RPC pool, as an operator's shell holds one)."""
    canary = f"canary{uuid.uuid4().hex}"
    index = urlsplit(os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple")
    conf = tmp_path_factory.mktemp("build") / "pip.conf"
    token_index = urlunsplit(index._replace(netloc=f"__token__:{canary}@{index.netloc.rpartition('@')[2]}"))
    conf.write_text(f"[global]\nindex-url = {token_index}\n")
    env = {
        **os.environ,
        "IMAGE": IMAGE,
        "FORCE": "1",
        "CONTAINER_TOOL": "buildah",
        "CRYO_INGEST_PIP_CONF": str(conf),
        "CRYO_INGEST_RPC_POOL_MAINNET": json.dumps([f"https://eth.example/v2/{canary}"]),
    }
    t = time.monotonic()
    p = subprocess.run([str(ROOT / "scripts" / "build-image.sh")], capture_output=True, text=True, env=env, timeout=1800)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    print(f"image built in {time.monotonic() - t:.0f} s")
    config = json.loads(buildah("inspect", "--type", "image", IMAGE))["OCIv1"]["config"]
    built = Image(config, p.stdout + p.stderr, canary)
    built.container = buildah("from", "--pull=never", IMAGE).strip()
    try:
        built.rootfs = buildah("mount", built.container).strip()
        yield built
    finally:
        buildah("rm", built.container)  # unmounts it too


def test_no_secret_in_any_layer(image: Image, tmp_path: Path) -> None:
    # the token did reach pip inside the build (pip masks it in what it prints) ...
    assert "Looking in indexes: https://__token__:****@" in image.build_log
    assert image.canary not in image.build_log
    # ... and is in no layer, read uncompressed, nor in the config (environment, labels, history)
    buildah("push", "--disable-compression", IMAGE, f"dir:{tmp_path / 'image'}", timeout=600)
    layers = [d["digest"].split(":")[1] for d in json.loads((tmp_path / "image" / "manifest.json").read_text())["layers"]]
    assert len(layers) >= 2  # the base's and this image's
    for blob in sorted((tmp_path / "image").iterdir()):
        if blob.name in layers:
            with blob.open("rb") as f:
                assert f.read(262)[257:] == b"ustar", f"{blob.name} is not a plain tar: the scan would read it compressed"
        assert not contains(blob, image.canary.encode()), f"the canary is in {blob.name}"
    assert image.canary not in buildah("inspect", "--type", "image", IMAGE)


def contains(path: Path, needle: bytes) -> bool:
    with path.open("rb") as f:
        tail = b""
        while chunk := f.read(16 << 20):
            if needle in tail + chunk:
                return True
            tail = chunk[-len(needle) :]
    return False


def test_runs_as_a_non_root_user_who_cannot_change_its_code(image: Image) -> None:
    assert image.config["User"] == "10001:10001"
    script = "id -u; touch /opt/cryo-ingest/x 2>&1; echo $?"
    who = buildah("run", "--isolation", "chroot", image.container, "--", "sh", "-c", script)
    uid, *_, code = who.split()
    assert uid == "10001" and code != "0", who


def container_command(image: Image, *args: str) -> list[str]:
    """The image's entrypoint followed by `args` (by default, its command)."""
    return [*image.config["Entrypoint"], *(args or image.config["Cmd"])]


def test_archives_the_devnet_byte_for_byte_as_the_host_does(image: Image, chain: Devnet, tmp_path: Path) -> None:
    host = backfill(tmp_path / "host", chain.url)
    assert host.code == 0, host.text
    archive = tmp_path / "image"
    archive.mkdir(mode=0o777)
    archive.chmod(0o777)  # writable by the image's user, whatever the umask
    args = ["backfill", "--chain-id", "31337", "--start", "0", "--end", str(DEVNET_BLOCKS - 1), "--datasets", ALL]
    args += ["--root", "/archive", "--chunk-size", str(CHUNK), "--rpc", chain.url]
    volume = ["-v", f"{archive}:/archive"]
    run = run_command(
        [*BUILDAH, "run", "--isolation", "chroot", *volume, image.container, "--", *container_command(image, *args)]
    )
    assert run.code == 0, run.text
    inside, outside = files_under(archive), files_under(tmp_path / "host")
    assert len([k for k in inside if k.endswith(".parquet")]) == 4 * DEVNET_BLOCKS // CHUNK
    assert inside == outside


def test_carries_the_iceberg_extra(image: Image, chain: Devnet, tmp_path: Path) -> None:
    """`catalog sync` in the image, its SQLite catalog and the tables' metadata beside the mounted archive."""
    archive = tmp_path / "archive"
    assert backfill(archive, chain.url, end=99, datasets="blocks,logs").code == 0
    archive.chmod(0o777)
    args = ["catalog", "sync", "/archive", "--chain-id", "31337", "--catalog", "sqlite:////archive/catalog.db", "--json"]
    volume = ["-v", f"{archive}:/archive"]
    command = container_command(image, *args)
    run = run_command([*BUILDAH, "run", "--isolation", "chroot", *volume, image.container, "--", *command])
    assert run.code == 0, run.text
    assert {t["dataset"]: len(t["added"]) for t in json.loads(run.out)["tables"]} == {"blocks": 2, "logs": 2}
    assert (archive / "iceberg" / "cold_31337" / "logs" / "metadata").is_dir()


@contextmanager
def as_pid_1(image: Image, mounts: dict[str, Path], *args: str) -> Iterator[subprocess.Popen[str]]:
    """The image's entrypoint and command as PID 1 of a new PID namespace, as its user, in its working
    directory and environment, with `mounts` (container path: host folder) bound in: what of a container
    runtime matters to signals, and no more. The mounts live in the namespace and go with it."""
    rootfs = image.rootfs
    binds = [f"mount --rbind /dev {rootfs}/dev", f"mount -t proc proc {rootfs}/proc"]
    for target, source in mounts.items():
        Path(rootfs + target).mkdir(parents=True, exist_ok=True)
        binds.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(rootfs + target)}")
    cfg = image.config
    env = [*cfg["Env"], "HOME=/home/cryo", "COLUMNS=200"]
    inner = ["env", "-i", "-C", cfg["WorkingDir"], *env, *container_command(image, *args)]
    chroot = ["chroot", f"--userspec={cfg['User']}", rootfs, *inner]
    # the shell is PID 1 until it execs chroot, which execs the image's env, which execs the entrypoint
    script = " && ".join(binds) + " && exec " + shlex.join(chroot)
    p = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--mount", "--propagation", "private", "sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def pid_1(image: Image, p: subprocess.Popen[str], timeout: float = 30) -> psutil.Process:
    """The host's view of the namespace's PID 1, once it is the image's entrypoint (tini)."""
    entrypoint = Path(image.config["Entrypoint"][0]).name
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(p.pid).children():
            if child.name() == entrypoint:
                return child
        time.sleep(0.1)
    raise AssertionError(f"{entrypoint} did not start")


def test_sigterm_to_pid_1_stops_run_gracefully(image: Image, chain: Devnet, tmp_path: Path) -> None:
    """The default command (`run` on the mounted DAG file), a partition under way: SIGTERM to PID 1,
    and `run` stops it, releases its lease and exits 0 within seconds, as ECS allows 30."""
    archive = tmp_path / "archive"
    archive.mkdir(mode=0o777)
    archive.chmod(0o777)
    with StallProxy(chain.url, stall=range(120, 250)) as proxy:
        config = f"    rpc: [{proxy.url()}]\n    root: /archive\n    chunk_size: 50\n    grace_seconds: 0\n"
        dag = SPEC_YAML.replace("chain_id: 10143", "chain_id: 31337").replace("    rpc_pool: monad\n", config)
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc" / "dag.yaml").write_text(dag.replace("idle_timeout: 0", "idle_timeout: 600"))
        request = cli(
            "request", "--config", str(tmp_path / "etc" / "dag.yaml"), "--root", str(archive), "--start", "0", "--end", "249"
        )
        assert request.code == 0, request.text
        with as_pid_1(image, {"/etc/cryo-ingest": tmp_path / "etc", "/archive": archive}) as p:
            init = pid_1(image, p)
            deadline = time.monotonic() + 120
            while not any(block >= 120 for _, block, _ in proxy.seen):  # a partition is held at the stall
                assert p.poll() is None and time.monotonic() < deadline, p.stdout.read() if p.stdout else ""
                time.sleep(0.2)
            init.send_signal(signal.SIGTERM)
            t = time.monotonic()
            out, _ = p.communicate(timeout=60)
    assert time.monotonic() - t < 15, out
    assert p.returncode == 0, out
    assert "SIGTERM: stopping" in out and "lease released" in out, out


def test_sigterm_to_pid_1_ends_a_backfill(image: Image, tmp_path: Path) -> None:
    """`backfill` sets no SIGTERM handler: as PID 1 itself, the kernel would drop the signal and the
    job would wait on its RPC; tini passes it on and the job ends at once (128 + 15)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        accepted: list[socket.socket] = []  # an RPC that accepts and never answers

        def accept() -> None:
            while True:
                try:
                    accepted.append(server.accept()[0])
                except OSError:
                    return

        threading.Thread(target=accept, daemon=True).start()
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        args = ["backfill", "--chain-id", "31337", "--start", "0", "--end", "99", "--datasets", "blocks", "--rpc", url]
        with as_pid_1(image, {}, *args) as p:
            init = pid_1(image, p)
            deadline = time.monotonic() + 60
            while not accepted:  # the job is waiting on the RPC
                assert p.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
            init.send_signal(signal.SIGTERM)
            t = time.monotonic()
            out, _ = p.communicate(timeout=60)
        for conn in accepted:
            conn.close()
    assert time.monotonic() - t < 5, out
    assert p.returncode == 128 + signal.SIGTERM, out


def test_default_command_without_a_dag_file_says_so(image: Image) -> None:
    start = [*BUILDAH, "run", "--isolation", "chroot", image.container, "--"]
    run = run_command([*start, *container_command(image)])
    assert run.code == 2 and "cannot read /etc/cryo-ingest/dag.yaml" in run.text, run.text
    version = run_command([*start, *container_command(image, "--version")])
    assert version.code == 0 and version.out.startswith("cryo-ingest ") and "(cryo 0.3.2)" in version.out, version.text
