"""A fault-injecting TCP proxy between the replicas of a loopback cluster.

Guarantees:

* One listening port per directed link ``a -> b``: replica ``a`` dials ``b`` there
  (``route_replicas`` rewrites each replica's ``node.toml`` so), and the bytes go to
  ``b``'s real address unchanged.  TLS runs end to end through it, so the proxy can
  delay traffic but never read or forge it.  Clients keep dialling replicas directly.
* ``cut(a, b)`` blackholes the direction ``a -> b``: what ``a`` sends towards ``b``
  (on ``a``'s connections to ``b``, and as answers on ``b``'s connections to ``a``)
  is no longer read from the sender, so it is neither delivered nor lost: as on a
  network that drops packets while TCP retransmits, it arrives, in order, after
  ``mend`` (if the endpoints have not given up on the connection by then).  A new
  connection over a cut link is accepted and held, and reaches ``b`` only after the
  mend.  ``cut(..., reset=True)`` also closes the link's connections at once.
* ``partition``, ``star``, ``isolate`` and ``heal`` are sets of such cuts; cuts are
  directed, so asymmetric and partial partitions are expressible.
* Bounded: ``CONNECTIONS_PER_LINK_MAX`` connections per link (more are closed at
  once), reads of at most ``READ_BYTES_MAX``; held bytes stay in the kernel's socket
  buffers, whose fill pushes back on the sender.
* The proxy runs its own asyncio loop in a daemon thread, so blocking code (tests,
  the demo) can drive it; every control call returns after the change is in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import tomllib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

import tomli_w

CONNECTIONS_PER_LINK_MAX: Final = 64
READ_BYTES_MAX: Final = 64 * 1024
CONTROL_TIMEOUT_S: Final = 10.0
CONNECT_TIMEOUT_S: Final = 5.0

Link = tuple[int, int]  # (from replica, to replica)
_T = TypeVar("_T")


@dataclass(slots=True)
class LinkStats:
    bytes_forwarded: int = 0
    connections_accepted: int = 0
    connections_refused: int = 0  # over the bound, or the target did not answer
    connections_reset: int = 0  # closed by cut(..., reset=True)


@dataclass(slots=True, eq=False)  # kept in sets, by identity
class _Connection:
    """One accepted connection ``a -> b`` and, once the link is open, its upstream."""

    link: Link
    downstream: asyncio.StreamWriter  # towards a (who dialled)
    upstream: asyncio.StreamWriter | None = None  # towards b
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for writer in (self.downstream, self.upstream):
            if writer is not None:
                writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """Directed, cuttable links between ``len(targets)`` replicas on ``host``."""

    def __init__(self, targets: Mapping[int, str], host: str = "127.0.0.1") -> None:
        assert len(targets) >= 2 and all(":" in address for address in targets.values())
        self.targets = dict(targets)  # replica -> its real host:port
        self.host = host
        self.links: tuple[Link, ...] = tuple(
            (a, b) for a in sorted(self.targets) for b in sorted(self.targets) if a != b
        )
        self.ports: dict[Link, int] = {}
        self.stats = {link: LinkStats() for link in self.links}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.Server] = []
        self._open: dict[Link, asyncio.Event] = {}  # set while the direction forwards
        self._connections: dict[Link, set[_Connection]] = {link: set() for link in self.links}

    # ---------------------------------------------------------------- life cycle

    def start(self) -> FaultProxy:
        assert self._thread is None, "start once"
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=serve, name="fault-proxy", daemon=True)
        self._thread.start()
        ready.wait(CONTROL_TIMEOUT_S)
        self._run(self._listen)
        assert set(self.ports) == set(self.links)
        return self

    def close(self) -> None:
        """Close every port and connection and end the loop's thread (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        self._run(self._shutdown)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CONTROL_TIMEOUT_S)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    def address(self, a: int, b: int) -> str:
        """Where replica ``a`` must dial replica ``b``."""
        return f"{self.host}:{self.ports[(a, b)]}"

    # ---------------------------------------------------------------- faults

    def cut(self, a: int, b: int, *, reset: bool = False) -> None:
        """Blackhole the direction a -> b (see the module's guarantees)."""
        self.cut_links([(a, b)], reset=reset)

    def cut_links(self, links: Iterable[Link], *, reset: bool = False) -> None:
        chosen = list(links)
        assert all(link in self.stats for link in chosen), chosen

        async def apply() -> None:
            for link in chosen:
                self._open[link].clear()
                if reset:
                    self._reset(link)
                    self._reset((link[1], link[0]))

        self._run(apply)

    def mend(self, a: int, b: int) -> None:
        self.mend_links([(a, b)])

    def mend_links(self, links: Iterable[Link]) -> None:
        chosen = list(links)
        assert all(link in self.stats for link in chosen), chosen

        async def apply() -> None:
            for link in chosen:
                self._open[link].set()

        self._run(apply)

    def heal(self) -> None:
        """Every link forwards again; held bytes are delivered."""
        self.mend_links(self.links)

    def partition(self, *groups: Sequence[int], reset: bool = False) -> None:
        """Cut every link between different groups, both ways; links within a group
        stay as they are.  Every replica must be in exactly one group."""
        where = {replica: index for index, group in enumerate(groups) for replica in group}
        assert sorted(where) == sorted(self.targets), "each replica in exactly one group"
        self.cut_links([(a, b) for a, b in self.links if where[a] != where[b]], reset=reset)

    def isolate(self, replica: int, reset: bool = False) -> None:
        """Cut ``replica`` from every other replica, both ways."""
        self.cut_links([link for link in self.links if replica in link], reset=reset)

    def star(self, hub: int, reset: bool = False) -> None:
        """Every replica reaches ``hub`` and ``hub`` reaches every replica; no other link
        works (a partial partition: BFT's all-to-all votes stall, a leader-centred
        majority can still run through the hub)."""
        assert hub in self.targets
        self.cut_links([link for link in self.links if hub not in link], reset=reset)

    def is_cut(self, a: int, b: int) -> bool:
        return not self._open[(a, b)].is_set()

    def connection_count(self, a: int, b: int) -> int:
        return len(self._connections[(a, b)])

    # ---------------------------------------------------------------- inside the loop

    def _run(self, make: Callable[[], Awaitable[_T]]) -> _T:
        """Run a coroutine on the proxy's loop and wait for it (from another thread)."""
        assert self._loop is not None, "start the proxy first"
        assert threading.current_thread() is not self._thread, "would wait for itself"

        async def wrapped() -> _T:
            return await make()

        future = asyncio.run_coroutine_threadsafe(wrapped(), self._loop)
        return future.result(CONTROL_TIMEOUT_S)

    async def _listen(self) -> None:
        for link in self.links:
            self._open[link] = asyncio.Event()
            self._open[link].set()
            server = await asyncio.start_server(functools.partial(self._accept, link), self.host, 0)
            self._servers.append(server)
            self.ports[link] = server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        for connections in self._connections.values():
            for connection in list(connections):
                connection.abort()
        for server in self._servers:
            await server.wait_closed()

    def _reset(self, link: Link) -> None:
        for connection in list(self._connections[link]):
            self.stats[link].connections_reset += 1
            connection.abort()

    async def _accept(
        self, link: Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        stats = self.stats[link]
        connections = self._connections[link]
        if len(connections) >= CONNECTIONS_PER_LINK_MAX:
            stats.connections_refused += 1
            writer.transport.abort()
            return
        stats.connections_accepted += 1
        connection = _Connection(link=link, downstream=writer)
        connections.add(connection)
        try:
            await self._open[link].wait()  # a cut link: the dialler's SYN is "lost"
            host, _, port = self.targets[link[1]].rpartition(":")
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(host, int(port)), CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError):
                stats.connections_refused += 1  # the target is down: so is the link
                return
            connection.upstream = up_writer
            reverse = (link[1], link[0])
            connection.tasks = [
                asyncio.create_task(self._pump(reader, up_writer, link)),
                asyncio.create_task(self._pump(up_reader, writer, reverse)),
            ]
            await asyncio.wait(connection.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connections.discard(connection)
            connection.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: Link
    ) -> None:
        """Copy one direction of one connection, pausing while ``direction`` is cut."""
        gate = self._open[direction]
        stats = self.stats[direction]
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                await gate.wait()
                data = await reader.read(READ_BYTES_MAX)
                if not data:
                    return
                await gate.wait()  # cut while reading: hold what was read
                writer.write(data)
                await writer.drain()
                stats.bytes_forwarded += len(data)


def route_replicas(node_configs: Sequence[Path], proxy: FaultProxy) -> None:
    """Rewrite each replica's ``node.toml`` (from ``init_cluster``) so it dials every
    peer through ``proxy``; its own entry and its listen address stay."""
    for replica, path in enumerate(node_configs):
        document = tomllib.loads(path.read_text())
        assert document["node"]["id"] == replica, f"{path} is not replica {replica}'s"
        for peer in document["replicas"]:
            if peer["id"] != replica:
                peer["address"] = proxy.address(replica, peer["id"])
        path.write_text(tomli_w.dumps(document))


def listen_addresses(node_configs: Sequence[Path]) -> dict[int, str]:
    """Each replica's real listen address, from its ``node.toml``."""
    addresses = {}
    for path in node_configs:
        document = tomllib.loads(path.read_text())
        addresses[int(document["node"]["id"])] = str(document["node"]["listen"])
    return addresses
