"""The SSH transport: asyncssh, one pooled connection per host, pinned keys only.

Trust is fixed by hosts.yaml and nothing else: the host key must match the
pinned `known_hosts` (never trust on first use), the client authenticates
with the configured key file only (no agent, no password, no keyboard
interactive, no ~/.ssh/config), and the user is never root.

A command that outlives its timeout is killed on the host in two ways, since
neither works everywhere: a KILL "signal" request (OpenSSH >= 7.9 kills the
session's process group, but refuses this for forced-command sessions) and
closing the channel (which host/platform-gate, the forced command, watches
for and answers by killing its command).

A command's standard input is its `stdin` bytes followed by EOF, or EOF at
once when it has none: a remote program never waits on input.

A frozen host (a stopped sshd, a flow a middlebox dropped) keeps a pooled TCP
connection open but answers nothing. A channel open it does not confirm
within OPEN_ANSWER_S takes the connection out of the pool (nothing was sent
to run yet) and the command is tried once on a new connection, so the next
command to such a host fails or succeeds within OPEN_ANSWER_S plus the host's
connect timeout. Commands already running on it are bounded by keepalive.
"""

from __future__ import annotations

import asyncio
import copy
import os
import time
from dataclasses import dataclass

import asyncssh

from platformctl.commands import RemoteCommand
from platformctl.models import HostConfig
from platformctl.policy.hosts import is_inline_pin
from platformctl.transport.base import (
    AuthenticationFailed,
    ConnectFailed,
    HostKeyMismatch,
    RemoteOutput,
    TransportError,
)

MAX_CHANNELS = 8  # per connection; OpenSSH refuses the 11th with its default MaxSessions 10
OUTPUT_CAP_BYTES = 1 << 20  # per stream; the tail is kept
KEEPALIVE_INTERVAL_S = 5
KEEPALIVE_COUNT_MAX = 2  # a silent host is dropped after 3 unanswered intervals: 15 s
OPEN_ANSWER_S = 2.0  # a live sshd confirms a channel open in milliseconds, busy or not
KILL_GRACE_S = 2.0  # how long to wait for the host to confirm a killed channel closed
READ_CHUNK = 64 * 1024
OPEN_RETRY_DELAYS_S = (0.02, 0.05, 0.1, 0.2, 0.4)  # a refused channel open is retried after each
# AES-GCM ahead of asyncssh's defaults (chacha20-poly1305 first), which follow: with AES-NI
# it costs the worker less CPU per command (docs/performance.md); OpenSSH offers it since 6.2.
CIPHERS = "^aes128-gcm@openssh.com,aes256-gcm@openssh.com"


@dataclass
class _Pooled:
    conn: asyncssh.SSHClientConnection
    trust: tuple[str, str]  # (known_hosts, client_key) the connection was made with
    slots: asyncio.Semaphore  # open channels on this connection
    users: int = 0  # commands running on it or waiting for a slot


class _Tail:
    """Keeps the last `cap` bytes of a stream and counts what it dropped."""

    def __init__(self, cap: int):
        self.cap = cap
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self.cap
        if excess > 0:
            del self.data[:excess]
            self.dropped += excess

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace")
        return f"[... {self.dropped} bytes dropped ...]\n{text}" if self.dropped else text


class _DroppedWhilePooled(Exception):
    """The pooled connection was gone, or did not answer, before the command's channel opened."""


class _Unanswered(Exception):
    """The host did not confirm a channel open within OPEN_ANSWER_S."""


class SshTransport:
    def __init__(self, *, max_channels: int = MAX_CHANNELS, output_cap_bytes: int = OUTPUT_CAP_BYTES):
        self._max_channels = max_channels
        self._output_cap = output_cap_bytes
        self._pool: dict[tuple[str, str, int, str], _Pooled] = {}
        self._locks: dict[tuple[str, str, int, str], asyncio.Lock] = {}
        # The last failed connect per host: when it ended, with which trust, and why.
        self._failed: dict[tuple[str, str, int, str], tuple[float, tuple[str, str], TransportError]] = {}

    async def run(self, host: HostConfig, command: RemoteCommand, *, timeout_s: float) -> RemoteOutput:
        """Run `command` on `host`. `timeout_s` counts from opening the channel;
        waiting for a free channel slot on a busy connection is not included."""
        try:
            return await self._run_once(host, command, timeout_s, may_retry=True)
        except _DroppedWhilePooled:
            # Every command this worker sends is idempotent (compose up -d converges,
            # the rest only read), so one retry on a new connection is safe.
            return await self._run_once(host, command, timeout_s, may_retry=False)

    async def _run_once(
        self, host: HostConfig, command: RemoteCommand, timeout_s: float, *, may_retry: bool
    ) -> RemoteOutput:
        key, pooled = await self._connection(host)
        pooled.users += 1
        try:
            async with pooled.slots:
                started = time.monotonic()
                deadline = asyncio.get_running_loop().time() + timeout_s
                try:
                    async with asyncio.timeout_at(deadline):
                        process = await _open_process(pooled.conn, command)
                except TimeoutError:
                    raise ConnectFailed(f"{host.name}: no channel opened within {timeout_s} s") from None
                except _Unanswered:
                    if self._pool.get(key) is pooled:
                        del self._pool[key]  # closed below once no command uses it
                    if may_retry:
                        raise _DroppedWhilePooled from None
                    raise ConnectFailed(f"{host.name}: no answer to a channel open within {OPEN_ANSWER_S} s") from None
                except (asyncssh.Error, OSError) as exc:
                    # A connection that died while pooled is only noticed when it is used.
                    if may_retry and pooled.conn.is_closed():
                        raise _DroppedWhilePooled from None
                    raise ConnectFailed(f"{host.name}: cannot open a channel: {_describe(exc)}") from None
                return await self._collect(host, process, command.stdin, deadline, started)
        finally:
            pooled.users -= 1
            if not pooled.users and self._pool.get(key) is not pooled:
                pooled.conn.close()  # out of the pool (unanswered, or replaced) and now unused

    async def close(self) -> None:
        pooled, self._pool = list(self._pool.values()), {}
        for entry in pooled:
            entry.conn.close()
        for entry in pooled:
            await entry.conn.wait_closed()

    async def _collect(
        self,
        host: HostConfig,
        process: asyncssh.SSHClientProcess[bytes],
        stdin: bytes | None,
        deadline: float,
        started: float,
    ) -> RemoteOutput:
        stdout, stderr = _Tail(self._output_cap), _Tail(self._output_cap)
        try:
            async with asyncio.timeout_at(deadline):
                if stdin is not None:
                    _feed(process, stdin)
                await asyncio.gather(_drain(process.stdout, stdout), _drain(process.stderr, stderr))
                await process.wait_closed()
        except asyncio.CancelledError:
            await _kill(process)  # a cancelled activity must not leave its command running
            raise
        except TimeoutError:
            await _kill(process)
            return RemoteOutput(
                returncode=None,
                stdout=stdout.text(),
                stderr=stderr.text(),
                duration_s=time.monotonic() - started,
                timed_out=True,
            )
        except (asyncssh.Error, OSError) as exc:
            process.close()
            raise ConnectFailed(
                f"{host.name}: connection lost while the command ran (it may have run): {_describe(exc)}"
            ) from None
        if process.returncode is None:  # the channel closed without an exit status
            raise ConnectFailed(f"{host.name}: connection lost while the command ran (it may have run)")
        return RemoteOutput(
            returncode=process.returncode,
            stdout=stdout.text(),
            stderr=stderr.text(),
            duration_s=time.monotonic() - started,
        )

    async def _connection(self, host: HostConfig) -> tuple[tuple[str, str, int, str], _Pooled]:
        key = (host.name, host.address, host.port, host.user)
        trust = (host.known_hosts, host.client_key)
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        # One lock per host: concurrent first calls share one new connection, and share
        # its failure too (those waiting fail with it, not after one timeout each in turn).
        async with self._locks.setdefault(key, asyncio.Lock()):
            pooled = self._pool.get(key)
            if pooled and not pooled.conn.is_closed() and pooled.trust == trust:
                return key, pooled
            failed = self._failed.get(key)
            if failed is not None and failed[0] >= arrived and failed[1] == trust:
                raise copy.copy(failed[2])
            if pooled:
                # Dropped, or hosts.yaml changed the pinned key: the old identity is no longer trusted.
                pooled.conn.close()
            try:
                conn = await _connect(host)
            except TransportError as e:
                self._failed[key] = (loop.time(), trust, e)
                raise
            self._failed.pop(key, None)
            pooled = self._pool[key] = _Pooled(conn, trust, asyncio.Semaphore(self._max_channels))
            return key, pooled


async def _connect(host: HostConfig) -> asyncssh.SSHClientConnection:
    if host.user == "root":
        raise AuthenticationFailed(f"{host.name}: refusing to connect as root")
    known_hosts = _pinned_host_keys(host)
    client_key = _client_key(host)
    try:
        return await asyncssh.connect(
            host.address,
            host.port,
            username=host.user,
            known_hosts=known_hosts,
            x509_trusted_certs=None,  # no X.509 CA may vouch for a host: the pin decides
            client_keys=[client_key],
            agent_path=None,
            password=None,
            kbdint_auth=False,
            gss_auth=False,
            host_based_auth=False,
            preferred_auth="publickey",
            encryption_algs=CIPHERS,
            config=[],  # ignore ~/.ssh/config: hosts.yaml is the whole truth
            connect_timeout=host.connect_timeout_seconds,
            keepalive_interval=KEEPALIVE_INTERVAL_S,
            keepalive_count_max=KEEPALIVE_COUNT_MAX,
        )
    except asyncssh.HostKeyNotVerifiable:
        raise HostKeyMismatch(
            f"{host.name}: {host.address}:{host.port} did not present the pinned host key"
        ) from None
    except asyncssh.PermissionDenied:
        raise AuthenticationFailed(f"{host.name}: {host.address}:{host.port} refused the client key") from None
    except (asyncssh.Error, OSError) as exc:  # OSError covers refused, unreachable, TimeoutError
        raise ConnectFailed(f"{host.name}: cannot connect to {host.address}:{host.port}: {_describe(exc)}") from None


def _pinned_host_keys(host: HostConfig) -> asyncssh.SSHKnownHosts:
    """hosts.yaml holds either known_hosts lines or a path to a known_hosts file."""
    value = host.known_hosts.strip()
    if not value:
        raise HostKeyMismatch(f"{host.name}: no pinned host key (known_hosts is empty)")
    try:
        if is_inline_pin(value):
            return asyncssh.import_known_hosts(value + "\n")
        return asyncssh.read_known_hosts(os.path.expanduser(value))
    except (OSError, ValueError) as exc:
        raise HostKeyMismatch(f"{host.name}: cannot read the pinned host keys: {type(exc).__name__}") from None


def _client_key(host: HostConfig) -> asyncssh.SSHKey:
    if not host.client_key:
        raise AuthenticationFailed(f"{host.name}: no client_key configured")
    path = os.path.expanduser(host.client_key)
    try:
        return asyncssh.read_private_key(path)
    except (OSError, asyncssh.KeyImportError) as exc:
        # The message names the file and the problem, never the key's content.
        raise AuthenticationFailed(
            f"{host.name}: cannot load client key {path} (missing, encrypted or invalid): {type(exc).__name__}"
        ) from None


async def _open_process(
    conn: asyncssh.SSHClientConnection, command: RemoteCommand
) -> asyncssh.SSHClientProcess[bytes]:
    # Without input, DEVNULL sends EOF at once; with it, _feed writes it and the EOF.
    stdin = asyncssh.DEVNULL if command.stdin is None else asyncssh.PIPE
    # sshd frees a session only after the main-loop pass that processes its
    # channel close, so a channel opened right after several others closed can
    # be refused ("no more sessions") although fewer than MaxSessions are open.
    # A refused open runs nothing: on a live connection, wait briefly and retry.
    for delay in OPEN_RETRY_DELAYS_S:
        try:
            return await _open_once(conn, command, stdin)
        except asyncssh.ChannelOpenError:
            if conn.is_closed():
                raise
        await asyncio.sleep(delay)
    return await _open_once(conn, command, stdin)


async def _open_once(
    conn: asyncssh.SSHClientConnection, command: RemoteCommand, stdin: int
) -> asyncssh.SSHClientProcess[bytes]:
    """conn.create_process(command, stdin=stdin), raising _Unanswered if the
    host does not confirm the channel open within OPEN_ANSWER_S."""
    process: asyncssh.SSHClientProcess[bytes] = asyncssh.SSHClientProcess()
    answer = asyncio.timeout(OPEN_ANSWER_S)

    def confirmed() -> asyncssh.SSHClientProcess[bytes]:
        # asyncssh asks for the session once the host confirmed the open and
        # before it sends the command: from here on only the command's own
        # deadline counts, so a command is never abandoned once sent.
        answer.reschedule(None)
        return process

    try:
        async with answer:
            await conn.create_session(confirmed, command.render(), encoding=None)
    except TimeoutError:
        if answer.expired():
            raise _Unanswered from None
        raise
    await process.redirect(stdin, asyncssh.PIPE, asyncssh.PIPE)  # as create_process does
    return process


def _feed(process: asyncssh.SSHClientProcess[bytes], data: bytes) -> None:
    """Queue `data` and the EOF after it; asyncssh sends them as the channel's window allows."""
    try:
        process.stdin.write(data)
    except BrokenPipeError:
        # The channel is already closing: the program ended (or was refused,
        # e.g. exit 126 from the host gate) without reading; its exit status says so.
        return
    process.stdin.write_eof()


async def _drain(stream: asyncssh.SSHReader[bytes], tail: _Tail) -> None:
    while chunk := await stream.read(READ_CHUNK):
        tail.add(chunk)


async def _kill(process: asyncssh.SSHClientProcess[bytes]) -> None:
    try:
        process.kill()
    except OSError:  # the channel closed in the meantime
        pass
    process.close()
    try:
        async with asyncio.timeout(KILL_GRACE_S):
            await process.wait_closed()
    except TimeoutError:
        pass  # the host is unresponsive; the connection's keepalive will notice


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
