"""Waking consumers of one SQLite file in other processes: a datagram per change, no polling.

Each consuming broker binds a Unix datagram socket in a folder beside the database,
``<db>.wake/<pid>-<random>.sock``; whoever makes a task due (enqueue, requeue, resume) or
cancels a running task sends one datagram to every socket there. A full receive buffer means
that process has wake-ups waiting already, so the datagram is dropped. Only processes on one
host share a SQLite file, so this reaches every consumer.

The socket doubles as the process's presence: claims record its name as their owner. A socket
that refuses a datagram (``ECONNREFUSED``) belongs to a process that died without closing its
broker; consumers probe the sockets (``dead_peers``), recover the claims of the dead and only
then remove their sockets (``forget``). A socket that is missing is not taken for a death
(someone may have cleaned the folder): those claims wait for their leases.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import socket
import tempfile
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

__all__ = ["WakeSockets", "wake_folder"]

logger = logging.getLogger(__name__)

#: Longest socket path Linux and macOS accept (``sun_path`` is 108 and 104 bytes).
_MAX_SOCKET_PATH = 100
_NAME_LENGTH = 24  # "<pid>-<8 hex>.sock", with room for long pids
#: Datagrams read per wake-up at most: the rest wait for the next turn of the loop.
_DRAIN = 256
_RELIST_SECONDS = 0.5


def wake_folder(db_path: str) -> str:
    """``<db>.wake`` beside the database, or (for a path too long for a socket) a folder in
    the temporary directory named after the database's real path: the same for every
    process."""
    real = os.path.realpath(db_path)
    folder = f"{real}.wake"
    if len(folder) + 1 + _NAME_LENGTH <= _MAX_SOCKET_PATH:
        return folder
    digest = hashlib.sha256(real.encode()).hexdigest()[:20]
    return os.path.join(tempfile.gettempdir(), f"katana-wake-{digest}")


class WakeSockets:
    """This broker's socket (once it listens) and the sending side to every other one."""

    def __init__(self, db_path: str) -> None:
        self.folder = wake_folder(db_path)
        self._own: str | None = None
        #: This broker's name among the sockets (``<pid>-<random>``), once it listens.
        self.name: str | None = None
        self._socket: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sender: socket.socket | None = None
        self._peers: list[str] = []
        self._listed_at: int | None = None  # the folder's mtime when _peers was read
        self._read_at = 0.0
        self._closed = False

    def listen(self, loop: asyncio.AbstractEventLoop, on_message: Callable[[bytes], None]) -> None:
        """Bind this broker's socket and call ``on_message`` for every datagram it gets."""
        if self._socket is not None:
            return
        name = f"{os.getpid()}-{os.urandom(4).hex()}"
        path = os.path.join(self.folder, f"{name}.sock")
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.setblocking(False)
        try:
            os.makedirs(self.folder, exist_ok=True)
            try:
                receiver.bind(path)
            except FileNotFoundError:  # the last one out removed the folder just now
                os.makedirs(self.folder, exist_ok=True)
                receiver.bind(path)
        except OSError:
            receiver.close()
            raise
        self._socket, self._own, self._loop, self.name = receiver, path, loop, name

        def drain() -> None:
            for _ in range(_DRAIN):
                try:
                    message = receiver.recv(512)
                except (BlockingIOError, InterruptedError):
                    return
                on_message(message)

        loop.add_reader(receiver.fileno(), drain)

    def dead_peers(self, probe: bytes) -> list[str]:
        """The names of the sockets in the folder that refuse ``probe``: their processes died."""
        dead: list[str] = []
        if self._closed:
            return dead
        sender = self._sending()
        for peer in self._list_peers():
            if peer == self._own:
                continue
            try:
                sender.sendto(probe, peer)
            except ConnectionRefusedError:
                dead.append(os.path.basename(peer).removesuffix(".sock"))
            except OSError:  # gone meanwhile, or a full buffer: not known to be dead
                continue
        return dead

    def forget(self, name: str) -> None:
        """Remove the socket of a dead process, once its claims were recovered."""
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.folder, f"{name}.sock"))
        self._listed_at = None

    def _sending(self) -> socket.socket:
        if self._closed:  # e.g. an outcome settled after close(): nobody to tell any more
            raise BrokenPipeError("closed")
        if self._sender is None:
            self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sender.setblocking(False)
        return self._sender

    def send(self, message: bytes) -> None:
        """One datagram to every other socket in the folder; never blocks, never raises."""
        if self._closed:
            return
        sender = self._sending()
        for peer in self._list_peers():
            if peer == self._own:
                continue
            try:
                sender.sendto(message, peer)
            except (ConnectionRefusedError, FileNotFoundError):
                continue  # its process is gone: a consumer recovers its claims (dead_peers)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS):
                    logger.debug("cannot wake %s: %s", peer, exc)

    def _list_peers(self) -> list[str]:
        try:
            listed_at = os.stat(self.folder).st_mtime_ns
        except FileNotFoundError:
            return []
        now = time.monotonic()
        # The mtime may not move for two sockets made within one tick of the file system's
        # clock: the listing is read again after a while regardless.
        if listed_at != self._listed_at or now - self._read_at > _RELIST_SECONDS:
            with os.scandir(self.folder) as entries:
                self._peers = [e.path for e in entries if e.name.endswith(".sock")]
            self._listed_at, self._read_at = listed_at, now
        return self._peers

    def close(self) -> None:
        self._closed = True
        if self._socket is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None
        if self._own is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._own)
            self._own = self.name = None
            with contextlib.suppress(OSError):  # the last one out: no empty folder left behind
                os.rmdir(self.folder)
        if self._sender is not None:
            self._sender.close()
            self._sender = None
