"""A TCP fault proxy for tests: sits between a workload and PostgreSQL and breaks the link.

Like asyncpg's own test suite (and toxiproxy's toxics), in-process on the test's
event loop, so a test switches faults on and off between two awaits:

- `latency_s`: every chunk is delivered that long after it arrived, in order, in
  both directions (a slow network, not a slow server);
- `blackhole()` / `heal()`: while blackholed, bytes in both directions are
  discarded and nothing is closed: a connection looks alive and answers nothing,
  a new one is accepted and never completes its handshake (a partition, or a
  firewall that dropped the connection's state). A close from either side is
  held back until the link heals, as a FIN is a packet too;
- `reset()`: every open connection is aborted with a TCP RST on both sides;
- `refuse`: new connections are closed as soon as they are accepted.

`accepted` and `open_connections` tell a test that traffic really went through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

_CHUNK = 1 << 16
_LINGER_RST = struct.pack("ii", 1, 0)


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class FaultProxy:
    """Listens on `listen_host:port` (0: any free port) and forwards to `upstream`."""

    def __init__(self, upstream_host: str, upstream_port: int, *,
                 listen_host: str = "127.0.0.1", listen_port: int = 0,
                 upstream_path: str | None = None) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.upstream_path = upstream_path  # a Unix socket instead of host:port
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.latency_s = 0.0
        self.refuse = False
        self.accepted = 0
        self.bytes_forwarded = 0
        self.bytes_dropped = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._healed = asyncio.Event()
        self._healed.set()

    @classmethod
    def for_dsn(cls, dsn: str) -> FaultProxy:
        """A proxy to the server of `dsn` (TCP, or a Unix socket directory in `?host=`)."""
        parts = urlsplit(dsn)
        port = parts.port or 5432
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
        if socket_dir.startswith("/"):
            return cls("", port, upstream_path=f"{socket_dir}/.s.PGSQL.{port}")
        return cls(parts.hostname or "127.0.0.1", port)

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the proxy first"
        sockets = self._server.sockets
        port: int = sockets[0].getsockname()[1]
        return port

    def dsn(self, dsn: str) -> str:
        """`dsn` with its host and port replaced by this proxy's."""
        parts = urlsplit(dsn)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" if userinfo else ""
        netloc += f"{self.listen_host}:{self.port}"
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")])
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))

    @property
    def open_connections(self) -> int:
        return len(self._links)

    @property
    def blackholed(self) -> bool:
        return not self._healed.is_set()

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(
            self._accept, self.listen_host, self.listen_port)
        return self

    async def close(self) -> None:
        self.heal()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.reset()
        await asyncio.sleep(0)

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def blackhole(self) -> None:
        self._healed.clear()

    def heal(self) -> None:
        """End every fault: no latency, no blackhole, connections accepted."""
        self.latency_s = 0.0
        self.refuse = False
        self._healed.set()

    def reset(self) -> int:
        """Abort every open connection with an RST to both peers; how many were open."""
        links = list(self._links)
        for link in links:
            self._abort(link)
        return len(links)

    def _abort(self, link: _Link) -> None:
        self._links.discard(link)
        for writer in (link.client, link.upstream):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            writer.transport.abort()
        for task in link.tasks:
            task.cancel()

    async def _accept(self, c_reader: asyncio.StreamReader,
                      c_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refuse:
            c_writer.transport.abort()
            return
        try:
            if self.upstream_path is not None:
                u_reader, u_writer = await asyncio.open_unix_connection(self.upstream_path)
            else:
                u_reader, u_writer = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port)
        except OSError:
            c_writer.transport.abort()  # the upstream refuses: so does the proxy
            return
        link = _Link(c_writer, u_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(link, c_reader, u_writer)),
            asyncio.create_task(self._pump(link, u_reader, c_writer)),
        ]

    async def _pump(self, link: _Link, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> None:
        """One direction: read, drop while blackholed, delay by the latency, write in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        deliver = asyncio.create_task(self._deliver(queue, writer))
        try:
            while True:
                try:
                    data = await reader.read(_CHUNK)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    break
                if self.blackholed:
                    self.bytes_dropped += len(data)
                    continue
                queue.put_nowait((time.monotonic() + self.latency_s, data))
            await queue.join()
            await self._healed.wait()  # a close crosses the link only once it is up
        finally:
            deliver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await deliver
            if link in self._links:
                self._links.discard(link)
                for w in (link.client, link.upstream):
                    w.close()
                for task in link.tasks:
                    if task is not asyncio.current_task():
                        task.cancel()

    async def _deliver(self, queue: asyncio.Queue[tuple[float, bytes]],
                       writer: asyncio.StreamWriter) -> None:
        while True:
            due, data = await queue.get()
            try:
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self.blackholed:
                    self.bytes_dropped += len(data)
                    continue
                writer.write(data)
                self.bytes_forwarded += len(data)
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.drain()
            finally:
                queue.task_done()
