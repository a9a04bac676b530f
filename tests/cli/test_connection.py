"""The worker and `platform-apply` connect as the temporal CLI does (temporalio.envconfig):
a profile of a temporal.toml, and mTLS by the standard variable names or our deprecated ones.

The dev server has no TLS, so the mTLS tests reach it through a TLS-terminating proxy of
their own (it requires a client certificate from the test CA, ALPN h2), on the session's
shared dev server.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from platformctl import client as client_module
from platformctl.client import connect
from platformctl.config import Settings
from tests.cli.conftest import Cli
from tests.e2e.conftest import REPO, closed_port
from tests.servers import DevServer

STANDARD = ("TEMPORAL_TLS_CLIENT_CERT_PATH", "TEMPORAL_TLS_CLIENT_KEY_PATH", "TEMPORAL_TLS_SERVER_CA_CERT_PATH")
DEPRECATED = ("TEMPORAL_TLS_CERT", "TEMPORAL_TLS_KEY", "TEMPORAL_TLS_CA")


# ---- a CA, a server certificate for 127.0.0.1/localhost, a client certificate ----


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _issue(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *extensions: tuple[x509.ExtensionType, bool],
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signer = issuer or (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def _write(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        (folder / f"{name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ))
    return folder / f"{name}.pem"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _issue("test CA", ca_key, None, (x509.BasicConstraints(ca=True, path_length=0), True),
                (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True))
    leaf = (x509.BasicConstraints(ca=False, path_length=None), True)
    server = _issue(
        "localhost", server_key, (ca.subject, ca_key), leaf,
        (x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
         False),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
    )
    client = _issue("platform-apply test client", client_key, (ca.subject, ca_key), leaf,
                    (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False))
    return Pki(_write(folder, "ca", ca), _write(folder, "server", server, server_key), folder / "server.key",
               _write(folder, "client", client, client_key), folder / "client.key")


# ---- the TLS-terminating proxy in front of the plaintext dev server ---------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, ssl.SSLError, RuntimeError):
            writer.close()


@pytest.fixture(scope="module")
async def tls_proxy(pki: Pki, dev_server: DevServer) -> AsyncIterator[str]:
    """127.0.0.1:<port>, mTLS only, forwarding each connection to the dev server."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki.ca)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    host, _, port = dev_server.address.rpartition(":")
    tasks: set[asyncio.Task[None]] = set()

    async def forward(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, server_writer), _pipe(server_reader, client_writer))

    def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(forward(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    # A refused handshake (no client certificate) is the test's point, not an error to log.
    loop = asyncio.get_running_loop()
    default_handler = loop.get_exception_handler()

    def quiet_handshakes(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        if not isinstance(context.get("exception"), ssl.SSLError | ConnectionError):
            (default_handler or asyncio.AbstractEventLoop.default_exception_handler)(loop, context)  # type: ignore[arg-type]

    loop.set_exception_handler(quiet_handshakes)
    server = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=context, ssl_handshake_timeout=5)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        loop.set_exception_handler(default_handler)


# ---- environments, as an operator or CI sets them -------------------------------


@pytest.fixture
def base_env(tmp_path) -> dict[str, str]:
    """No TEMPORAL_* of this machine's; a task queue of the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "PLATFORM_", "PLATFORMCTL_"))}
    env.update(PLATFORM_ROOT=str(tmp_path), PLATFORM_STATE_DIR=str(tmp_path / "state"),
               PLATFORM_TASK_QUEUE=f"conn-{uuid.uuid4().hex[:8]}")
    return env


@pytest.fixture(autouse=True)
def fresh_notices(monkeypatch):
    """Notices show once per process: each test is a process of its own here."""
    monkeypatch.setattr(client_module, "_shown", set(), raising=False)


def tls_env(pki: Pki, names: tuple[str, str, str]) -> dict[str, str]:
    return dict(zip(names, (str(pki.client_cert), str(pki.client_key), str(pki.ca)), strict=True))


def worker_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The worker's Settings, read in this process with `env` as its whole TEMPORAL_*/PLATFORM_* environment."""
    for name in list(os.environ):
        if name.startswith(("TEMPORAL_", "PLATFORM_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings.from_env()


async def worker_connects(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The worker's connect with `env` works: a call in the namespace answers. Returns the Settings."""
    settings = worker_settings(env, monkeypatch)
    client = await connect(settings)
    await client.count_workflows(f"TaskQueue = '{settings.task_queue}'")
    return settings


def notice_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("platform-apply: deprecated")]


# ---- a profile file -------------------------------------------------------------


async def test_a_profile_chosen_by_temporal_profile_configures_the_cli_and_the_worker(
    dev_server, base_env, tmp_path, monkeypatch
):
    toml = tmp_path / "temporal.toml"
    toml.write_text(
        f'[profile.default]\naddress = "127.0.0.1:{closed_port()}"\nnamespace = "not-this-one"\n\n'
        f'[profile.ci]\naddress = "{dev_server.address}"\nnamespace = "default"\n'
    )
    env = {**base_env, "TEMPORAL_CONFIG_FILE": str(toml), "TEMPORAL_PROFILE": "ci"}
    ran = await Cli(env).run("status")
    assert ran.code == 0, ran
    settings = await worker_connects(env, monkeypatch)
    assert (settings.temporal_address, settings.namespace) == (dev_server.address, "default")


# ---- mTLS through the proxy -------------------------------------------------------


async def test_mtls_by_the_standard_names_for_the_cli_and_the_worker(tls_proxy, pki, base_env, monkeypatch):
    env = {**base_env, "TEMPORAL_ADDRESS": tls_proxy, **tls_env(pki, STANDARD)}
    ran = await Cli(env).run("status")
    assert (ran.code, notice_lines(ran.err)) == (0, []), ran
    await worker_connects(env, monkeypatch)


async def test_mtls_by_the_deprecated_names_works_with_one_notice(tls_proxy, pki, base_env, monkeypatch, caplog):
    env = {**base_env, "TEMPORAL_ADDRESS": tls_proxy, **tls_env(pki, DEPRECATED)}
    ran = await Cli(env).run("status")
    assert ran.code == 0, ran
    (notice,) = notice_lines(ran.err)
    assert notice == (
        "platform-apply: deprecated: TEMPORAL_TLS_CERT is now TEMPORAL_TLS_CLIENT_CERT_PATH, TEMPORAL_TLS_KEY is "
        "now TEMPORAL_TLS_CLIENT_KEY_PATH, TEMPORAL_TLS_CA is now TEMPORAL_TLS_SERVER_CA_CERT_PATH (the names the "
        "temporal CLI reads; the old ones still work for now)"
    ), ran.err

    # The worker: connected, and the same notice in its log, once.
    from worker import run_worker

    caplog.set_level(logging.INFO, logger="platform.worker")
    settings = await worker_connects(env, monkeypatch)
    stop = asyncio.Event()
    stop.set()
    await run_worker(settings, stop)
    await run_worker(settings, stop)
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("deprecated")]
    assert warned == [notice.removeprefix("platform-apply: ")], warned
    assert "worker polling" in caplog.text


async def test_without_the_client_certificate_the_connection_fails_and_says_so(
    tls_proxy, pki, base_env, monkeypatch
):
    env = {**base_env, "TEMPORAL_ADDRESS": tls_proxy, "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(pki.ca)}
    hint = ("TLS is on without a client certificate: if the server requires one (mTLS), set "
            "TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH")
    ran = await Cli(env).run("status")
    assert ran.code == 2, ran
    (line,) = ran.err.splitlines()
    assert line.startswith(f"platform-apply: cannot reach Temporal at {tls_proxy} (namespace default): "), line
    assert line.endswith(hint), line

    from worker import run_worker

    with pytest.raises(SystemExit) as refused:
        await run_worker(worker_settings(env, monkeypatch), asyncio.Event())
    assert str(refused.value.code).startswith(f"cannot use Temporal at {tls_proxy}"), refused.value
    assert str(refused.value.code).endswith(hint), refused.value


# ---- an old name and its standard name disagreeing -----------------------------


async def test_an_old_name_and_its_standard_name_disagreeing_stop_the_cli_and_the_worker(pki, base_env):
    env = {
        **base_env, "TEMPORAL_ADDRESS": f"127.0.0.1:{closed_port()}", **tls_env(pki, STANDARD),
        "TEMPORAL_TLS_CERT": str(pki.server_cert),
    }
    both = ("TEMPORAL_TLS_CERT", "TEMPORAL_TLS_CLIENT_CERT_PATH")
    ran = await Cli(env).run("status")
    assert ran.code == 64, ran
    (line,) = ran.err.splitlines()
    assert all(name in line for name in both), line
    worker = await asyncio.to_thread(
        subprocess.run, [sys.executable, "worker.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert worker.returncode == 1 and "Traceback" not in worker.stderr, worker
    last = worker.stderr.strip().splitlines()[-1]
    assert all(name in last for name in both), worker.stderr
