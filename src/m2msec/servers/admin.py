"""The SA admin endpoint on a Unix socket, and its client (issue 12 item 3).

An operator lists, shows, updates and removes the live Security Associations of a
running Responder (seed 003 7.3.3 Update, 7.3.6 Remove) through the API of
:mod:`m2msec.sa.admin`. Only the operator may reach it, and never over the public
listener, so :class:`AdminServer` serves it on a Unix socket only:

* the socket file is created mode 0600 (the umask is narrowed around ``bind`` and the
  mode then set exactly), so only its owner - and root - can connect (Linux checks write
  permission on the socket file at ``connect``);
* every connection's peer credentials (``SO_PEERCRED``) are checked as well: a process
  of another user is closed without an answer, whatever the file's mode became;
* the folder it is in must be a folder of ours (or root's) that neither group nor others
  may write (else anyone could swap the socket for their own and read what the operator
  sends); a missing folder is created 0700;
* an existing path is refused unless it is a socket nobody answers on (a stale one a
  killed server left), which is removed; a socket a server answers on is refused with
  ``EADDRINUSE``, and ``<path>.lock`` (an ``flock`` held while serving) keeps two
  servers starting at once from removing each other's socket.

Requests go through the one HTTP loop (:class:`~m2msec.service.server.HttpService` over
:class:`~m2msec.bindings.http.HttpServerConnection`), answers are JSON (docs/sa.md section 7).

:class:`AdminClient` is the client side, used by ``m2msec sa``: an
:class:`~m2msec.sa.admin.SaAdmin` over the socket through the one HTTP client
(:class:`~m2msec.service.client.HttpClient`), so that the CLI reads like code written
against the gateway itself. A socket that is absent, stale or not ours raises
:class:`AdminUnavailable` with a sentence that says what to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Self

from m2msec.bindings.http import BadRequest
from m2msec.bindings.http_client import HttpAnswer
from m2msec.bindings.messages import HttpResponse, OneM2MRequest
from m2msec.errors import ConfigurationError, M2MSecError
from m2msec.paths import PRIVATE_FILE_MODE, ensure_private_dir
from m2msec.sa.admin import (
    AdminCall,
    AdminOperation,
    AdminOutcome,
    SaAdmin,
    SaDetail,
    SaQuery,
    call_target,
    error_response,
    handle_request,
    read_detail,
    read_list,
    read_outcome,
    read_reload,
)
from m2msec.sa.records import SaId, SaRecord
from m2msec.service.client import HttpClient
from m2msec.service.lifecycle import (
    ReloadOutcome,
    ServerLifecycle,
    stop_accepting,
    wait_closed,
)
from m2msec.service.limits import HttpLimits
from m2msec.service.server import HttpService, PlainConnections, ServiceHooks
from m2msec.service.streams import PlainStream, Stream

__all__ = [
    "MAX_SOCKET_PATH",
    "AdminClient",
    "AdminServer",
    "AdminServerStats",
    "AdminUnavailable",
]

log = logging.getLogger(__name__)

#: The longest Unix socket path Linux binds (``sun_path`` is 108 octets with its NUL).
MAX_SOCKET_PATH: Final = 107
#: Requests to the admin API are small; answers (a long SA list) may be large.
_REQUEST_LIMITS: Final = HttpLimits(max_body=4096, idle_timeout=60.0)
_ANSWER_LIMITS: Final = HttpLimits(max_body=256 * 1024 * 1024)
#: How long a probe of an existing socket waits for an answer before taking it as live.
_PROBE_TIMEOUT: Final = 1.0
_UNAVAILABLE_HINT: Final = "is the gateway running with an admin socket?"


class AdminUnavailable(M2MSecError, ConnectionError):
    """The admin socket cannot be reached; the message says why and what to check."""


@dataclass(slots=True)
class AdminServerStats:
    requests: int = 0
    bad_requests: int = 0
    refused_peers: int = 0
    """Connections closed because their process belongs to another user."""


# ----------------------------------------------------------------------------- socket checks


def _check_length(path: Path) -> None:
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise ConfigurationError(
            f"admin socket path {path} is {size} octets long; a Unix socket path holds at "
            f"most {MAX_SOCKET_PATH}: choose a shorter one"
        )


def _check_folder(folder: Path) -> None:
    """The socket's folder must be ours (or root's) and writable by nobody else."""
    if not folder.exists():
        ensure_private_dir(folder)
    st = os.stat(folder)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigurationError(f"admin socket folder {folder} is not a directory")
    if st.st_uid not in (os.getuid(), 0):
        raise ConfigurationError(
            f"admin socket folder {folder} belongs to another user (uid {st.st_uid}): "
            "they could replace the socket"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigurationError(
            f"admin socket folder {folder} is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}): anyone could replace the socket; use a "
            "folder only its owner can write (chmod go-w, or the data directory)"
        )


async def _answers(path: Path) -> bool:
    """True when a server accepts connections on the socket at ``path``."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), _PROBE_TIMEOUT)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True  # a server too busy to accept is still a server
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _clear_stale(path: Path) -> None:
    """Remove a socket no one answers on; refuse anything else at ``path``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigurationError(
            f"admin socket path {path} exists and is not a socket: refusing to replace it"
        )
    if st.st_uid != os.getuid():
        raise ConfigurationError(
            f"admin socket {path} belongs to another user (uid {st.st_uid}): refusing to replace it"
        )
    try:
        live = await _answers(path)
    except PermissionError:
        raise ConfigurationError(f"admin socket {path} is not accessible to us") from None
    if live:
        raise OSError(errno.EADDRINUSE, f"a server already answers on admin socket {path}")
    log.info("removing stale admin socket %s (no one answers on it)", path)
    path.unlink(missing_ok=True)


def _lock(path: Path) -> int:
    """Hold ``<path>.lock`` (flock) while serving: two servers never share one socket path."""
    lock = path.with_name(path.name + ".lock")
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(lock, flags, PRIVATE_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OSError(
            errno.EADDRINUSE, f"another admin server holds {lock} for admin socket {path}"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _bind(path: Path) -> socket.socket:
    """A listening Unix socket at ``path``, mode 0600 from its creation."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)  # bind creates the file: rw for the owner only
        try:
            sock.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, PRIVATE_FILE_MODE)
        sock.listen(16)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _peer_uid(writer: asyncio.StreamWriter) -> int | None:
    """The uid of the connected process (``SO_PEERCRED``), None where not available."""
    sock = writer.get_extra_info("socket")
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return None
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


# ----------------------------------------------------------------------------- server


class AdminServer(ServerLifecycle):
    """Serves :mod:`m2msec.sa.admin`'s API for ``admin`` on the Unix socket ``path``.

    ``async with AdminServer(gateway_admin, path) as server: ...``. Start raises
    ConfigurationError for an unsafe folder or path, OSError (EADDRINUSE) when another
    server answers on the socket or holds its lock.
    """

    what = "SA admin server"

    def __init__(self, admin: SaAdmin, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.admin = admin
        self.path = Path(path).absolute()
        self.stats = AdminServerStats()
        self._server: asyncio.Server | None = None
        self._lock_fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._allowed = frozenset({os.getuid(), 0})
        #: ``POST /reload`` calls this (the gateway's ``reload``); None: 404.
        self.reload_hook: Callable[[], Awaitable[ReloadOutcome]] | None = None
        self._http = HttpService(
            _REQUEST_LIMITS,
            ServiceHooks(
                bad_request=lambda event: error_response(event.response.status, event.reason),
                internal_error=lambda _request: error_response(
                    500, "internal error of the SA admin endpoint (see the server log)"
                ),
                on_bad_request=self._count_bad_request,
                on_request=self._count_request,
            ),
            name="SA admin",
        )
        self._plain = PlainConnections(self._http)

    async def _open(self) -> None:
        path = self.path
        _check_length(path)
        _check_folder(path.parent)
        self._lock_fd = _lock(path)
        await _clear_stale(path)
        sock = _bind(path)
        st = os.stat(path)
        self._inode = (st.st_dev, st.st_ino)
        self._server = await asyncio.start_unix_server(self._serve, sock=sock)
        log.info("SA admin API listening on %s (mode 0600)", path)

    async def _shutdown(self) -> None:
        servers = [self._server] if self._server is not None else []
        stop_accepting(servers)
        await self._http.close(self.drain_timeout)
        await self._plain.cancel()
        await wait_closed(servers)
        if self._inode is not None:
            with contextlib.suppress(OSError):
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:  # still ours, not a successor's
                    self.path.unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock; the lock file stays (no race)
            self._lock_fd = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = _peer_uid(writer)
        if uid is not None and uid not in self._allowed:
            self.stats.refused_peers += 1
            log.warning("SA admin: refused a connection of uid %d (not ours)", uid)
            writer.close()
            return
        await self._plain.serve(reader, writer, self._answer)

    async def _answer(self, request: OneM2MRequest) -> tuple[HttpResponse, bool]:
        if self.closing:
            return error_response(503, "the SA admin endpoint is shutting down"), True
        response = await handle_request(
            self.admin, request.method, request.target, request.body, self.reload_hook
        )
        return response, False

    def _count_request(self) -> None:
        self.stats.requests += 1

    def _count_bad_request(self, event: BadRequest) -> None:
        self.stats.bad_requests += 1


# ----------------------------------------------------------------------------- client


class AdminClient:
    """An :class:`~m2msec.sa.admin.SaAdmin` over the admin socket at ``path``.

    One kept-alive connection, opened at the first request; ``timeout`` bounds each
    request. Raises :class:`AdminUnavailable` when the socket cannot be reached and
    :class:`~m2msec.sa.admin_wire.AdminProtocolError` for an answer outside the API.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._http = HttpClient(limits=_ANSWER_LIMITS, connect=self._connect)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def list(self, query: SaQuery) -> Sequence[SaRecord]:
        answer = await self._send(AdminCall(AdminOperation.LIST, query=query))
        return read_list(answer.status, answer.body)

    async def show(self, sa_id: SaId) -> SaDetail | None:
        answer = await self._send(AdminCall(AdminOperation.SHOW, sa_id=sa_id))
        return read_detail(answer.status, answer.body)

    async def update(self, sa_id: SaId) -> AdminOutcome:
        answer = await self._send(AdminCall(AdminOperation.UPDATE, sa_id=sa_id))
        return read_outcome(answer.status, answer.body)

    async def remove(self, sa_id: SaId) -> AdminOutcome:
        answer = await self._send(AdminCall(AdminOperation.REMOVE, sa_id=sa_id))
        return read_outcome(answer.status, answer.body)

    async def remove_peer(self, peer_id: str) -> AdminOutcome:
        answer = await self._send(AdminCall(AdminOperation.REMOVE_PEER, peer=peer_id))
        return read_outcome(answer.status, answer.body)

    async def reload(self) -> ReloadOutcome:
        """``POST /reload``: the server re-reads its configuration (refused: ``applied``
        False with the reason; the old one stays in force)."""
        answer = await self._send(AdminCall(AdminOperation.RELOAD))
        return read_reload(answer.status, answer.body)

    async def _send(self, call: AdminCall) -> HttpAnswer:
        method, target = call_target(call)
        headers = [("Host", "localhost"), ("Accept", "application/json")]
        try:
            return await asyncio.wait_for(self._http.request(method, target, headers), self.timeout)
        except TimeoutError:
            await self.aclose()
            raise AdminUnavailable(
                f"the admin socket {self.path} did not answer within {self.timeout:g} s"
            ) from None
        except AdminUnavailable:
            raise
        except ConnectionError as exc:
            await self.aclose()
            raise AdminUnavailable(
                f"the admin socket {self.path} closed the connection ({exc})"
            ) from None

    async def _connect(self) -> Stream:
        path = self.path
        try:
            reader, writer = await asyncio.open_unix_connection(path)
        except FileNotFoundError:
            raise AdminUnavailable(f"no admin socket at {path}: {_UNAVAILABLE_HINT}") from None
        except ConnectionRefusedError:
            raise AdminUnavailable(
                f"nothing answers on the admin socket {path} (a stale socket): {_UNAVAILABLE_HINT}"
            ) from None
        except PermissionError:
            raise AdminUnavailable(
                f"permission denied on the admin socket {path}: it is its owner's only "
                "(mode 0600); run m2msec sa as the gateway's user"
            ) from None
        except OSError as exc:
            raise AdminUnavailable(
                f"cannot reach the admin socket {path}: {exc.strerror or exc}"
            ) from None
        return PlainStream(reader, writer)
