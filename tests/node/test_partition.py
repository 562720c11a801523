"""Network partitions between real replica processes (DESIGN 3.3, 3.4).

Replica-to-replica traffic goes through ``node.faultproxy`` (one port per directed
link); clients dial the replicas directly.  A star partition around the leader (every
replica reaches the hub, none reaches another) stalls BFT, whose WRITE and ACCEPT
exchanges are all-to-all, while the hub and the others still form a Raft majority
(3 of 4): the cluster falls back, commits PROVISIONAL, and after the heal re-certifies
those blocks FINAL, unchanged.  (A 2 | 2 split has no majority at all for n = 4,
q = 3 = majority: nothing can commit there, which is why the star is the partition.)

Every wait is on a condition with a deadline from one budget, so a loaded machine
makes the test slower, not flaky, and a broken cluster fails it within the budget.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from consensus.messages import Finality
from ledger import Account, Transfer
from node import demo
from node.client import Answer, Client, ClientError
from node.cluster import start_replicas, stop_replicas
from node.config import Tuning, init_cluster, load_client_config, load_node_config
from node.faultproxy import FaultProxy, listen_addresses, route_replicas

BUDGET_S = 75.0  # the whole cluster test; it takes ~10 s on an idle 2-core machine
# Ticks are 10 ms.  A request waiting 1 s starts a regency change; fallback after 2 s
# without a decision; a client call may wait at a replica up to 60 s (the partition).
FAST = Tuning(
    request_timeout_ticks=100,
    regency_timeout_ticks=100,
    fallback_after_ticks=200,
    client_wait_ms_max=60_000,
)
LEDGER = 1
ACCOUNTS = list(range(1, 9))


class Budget:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left_s(self) -> float:
        return max(0.0, self.end - time.monotonic())

    def until(self, check: Callable[[], bool], what: str, poll_s: float = 0.1) -> None:
        while not check():
            if self.left_s() == 0:
                raise AssertionError(f"out of time waiting for: {what}")
            time.sleep(poll_s)


def _transfer(id: int) -> Transfer:
    debit, credit = ACCOUNTS[id % 8], ACCOUNTS[(id + 3) % 8]
    return Transfer(id=id, debit_account_id=debit, credit_account_id=credit, amount=100 + id,
                    ledger=LEDGER, code=1)  # fmt: skip


def _statuses(client: Client) -> list[dict[str, object]]:
    found = []
    for replica in range(4):
        try:
            found.append(client.status(replica))
        except ClientError:
            found.append({})
    return found


class _Waiter(threading.Thread):
    """A blocking call in a thread, so the test can check it is still waiting."""

    def __init__(self, call: Callable[[], Answer]) -> None:
        super().__init__(daemon=True)
        self.call = call
        self.answer: Answer | None = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.answer = self.call()
        except BaseException as error:  # reported by the test, not lost in the thread
            self.error = error


@contextlib.contextmanager
def _cluster(directory: Path) -> Iterator[tuple[FaultProxy, list[Path], list[Path]]]:
    layout = init_cluster(directory, replicas=4, clients=2, tuning=FAST)
    with FaultProxy(listen_addresses(layout.node_configs)) as proxy:
        route_replicas(layout.node_configs, proxy)
        processes = start_replicas(layout.node_configs)
        try:
            yield proxy, list(layout.node_configs), list(layout.client_configs)
        finally:
            stop_replicas(processes, wait_s=10)
        codes = [p.returncode for p in processes]
    assert codes == [0, 0, 0, 0], f"replicas did not stop cleanly: {codes}"


def test_a_star_partition_commits_provisional_and_heals_to_final(tmp_path: Path) -> None:
    budget = Budget(BUDGET_S)
    with _cluster(tmp_path / "c") as (proxy, _, client_configs):
        status = Client.from_file(str(client_configs[0]), timeout_s=1)
        alice = Client.from_file(str(client_configs[0]), timeout_s=30)
        bob = Client.from_file(str(client_configs[1]), timeout_s=60)

        def connected() -> bool:  # every replica up, and linked to each peer (via the proxy)
            return all(len(s.get("peers_connected", [])) == 3 for s in _statuses(status))

        budget.until(connected, "4 replicas up and connected through the proxy")
        opened = alice.create_accounts([Account(id=i, ledger=LEDGER, code=1) for i in ACCOUNTS])
        assert opened.codes == (0,) * len(ACCOUNTS)
        before = alice.create_transfers([_transfer(i) for i in range(1, 11)])
        assert before.level == Finality.FINAL and before.codes == (0,) * 10
        acknowledged = {i: _transfer(i) for i in range(1, 11)}

        # ---- the partition: a star around the leader
        hub = int(str(_statuses(status)[0]["leader"]))
        final_at_cut = max(int(str(s["height"])) for s in _statuses(status))
        proxy.star(hub)
        cut_at = time.monotonic()
        assert proxy.is_cut((hub + 1) % 4, (hub + 2) % 4) and not proxy.is_cut(hub, (hub + 1) % 4)
        # Bob waits for FINAL from the start: it cannot come while BFT is stalled.
        bob_waits = _Waiter(lambda: bob.create_transfers([_transfer(i) for i in range(50, 55)]))
        provisional: list[Answer] = []
        first_provisional_s = 0.0
        for batch in range(3):
            ids = range(100 + 10 * batch, 110 + 10 * batch)
            answer = alice.create_transfers([_transfer(i) for i in ids], Finality.PROVISIONAL)
            assert answer.level == Finality.PROVISIONAL and answer.certificate is None
            assert answer.codes == (0,) * 10
            provisional.append(answer)
            acknowledged.update({i: _transfer(i) for i in ids})
            first_provisional_s = first_provisional_s or time.monotonic() - cut_at
        finals = [_Waiter(functools.partial(alice.await_final, a)) for a in provisional]

        statuses = _statuses(status)
        modes = [s.get("mode") for s in statuses]
        assert modes.count("fallback") >= 3 and statuses[hub]["mode"] == "fallback", statuses
        assert all(int(str(s["height"])) <= final_at_cut for s in statuses if s), statuses
        top = max(a.height for a in provisional)
        assert int(str(statuses[hub]["provisional_height"])) >= top > final_at_cut
        # Nothing became FINAL: FINAL needs q = 3 replicas exchanging votes.
        time.sleep(0.5)
        assert bob_waits.is_alive() and all(w.is_alive() for w in finals)
        assert all(int(str(s["height"])) <= final_at_cut for s in _statuses(status) if s)

        # ---- the heal
        proxy.heal()
        healed_at = time.monotonic()
        for waiter in (*finals, bob_waits):
            waiter.join(budget.left_s())
            assert not waiter.is_alive(), "a FINAL answer never came after the heal"
            assert waiter.error is None, waiter.error
        recertified_s = time.monotonic() - healed_at
        for was, waiter in zip(provisional, finals, strict=True):
            now = waiter.answer
            assert now is not None and now.level == Finality.FINAL and now.certificate
            # Re-certified unchanged: the very block the fallback committed (DESIGN S2).
            assert (now.header.digest, now.codes) == (was.header.digest, was.codes)
        assert bob_waits.answer is not None and bob_waits.answer.level == Finality.FINAL
        assert bob_waits.answer.codes == (0,) * 5
        acknowledged.update({i: _transfer(i) for i in range(50, 55)})

        def back_in_bft() -> bool:
            found = _statuses(status)
            return (
                all(s.get("mode") == "bft" for s in found)
                and len({(s["height"], s["final_height"], s["state_hash"]) for s in found}) == 1
            )

        budget.until(back_in_bft, "all 4 replicas in BFT mode at one height and state hash")
        after = alice.create_transfers([_transfer(i) for i in range(200, 210)])
        assert after.level == Finality.FINAL and after.codes == (0,) * 10
        acknowledged.update({i: _transfer(i) for i in range(200, 210)})
        budget.until(back_in_bft, "all 4 replicas at one height again")

        # ---- no acknowledged transfer lost, none twice, on any replica
        ids = sorted(acknowledged)
        answers = [demo.ask_replica(alice, r, ids, ACCOUNTS) for r in range(4)]
        findings = demo.check_exactly_once(acknowledged, ACCOUNTS, answers)
        assert all(f.ok for f in findings), demo.problems_of(findings)
        for client in (status, alice, bob):
            client.close()
    print(f"\nstar partition around replica {hub}: first PROVISIONAL answer "
          f"{first_provisional_s:.1f} s after the cut; FINAL for all {len(provisional)} "
          f"provisional batches and bob's {recertified_s:.1f} s after the heal; "
          f"{len(ids)} transfers once on each of 4 replicas")  # fmt: skip


def test_a_two_two_split_commits_nothing_until_the_heal(tmp_path: Path) -> None:
    """{0, 1} | {2, 3}: no side has q = 3 for BFT or a majority of 3 for the fallback, so
    no answer comes, not even PROVISIONAL; after the heal the waiting call is FINAL and
    a retry of the unanswered transfers finds them once (``exists`` or created)."""
    budget = Budget(BUDGET_S)
    with _cluster(tmp_path / "c") as (proxy, _, client_configs):
        status = Client.from_file(str(client_configs[0]), timeout_s=1)
        alice = Client.from_file(str(client_configs[0]), timeout_s=8)
        bob = Client.from_file(str(client_configs[1]), timeout_s=60)
        budget.until(
            lambda: all(len(s.get("peers_connected", [])) == 3 for s in _statuses(status)),
            "4 replicas up and connected through the proxy",
        )
        opened = alice.create_accounts([Account(id=i, ledger=LEDGER, code=1) for i in ACCOUNTS])
        assert opened.codes == (0,) * len(ACCOUNTS)
        final_at_cut = max(int(str(s["height"])) for s in _statuses(status))

        proxy.partition([0, 1], [2, 3])
        bob_waits = _Waiter(lambda: bob.create_transfers([_transfer(i) for i in range(50, 55)]))
        unanswered = [_transfer(i) for i in range(300, 310)]
        with pytest.raises(ClientError, match="no FINAL answer and no 2 matching PROVISIONAL"):
            alice.create_transfers(unanswered, Finality.PROVISIONAL)  # waits its 8 s
        statuses = _statuses(status)
        assert all(int(str(s["height"])) <= final_at_cut for s in statuses), statuses
        assert bob_waits.is_alive()

        proxy.heal()
        bob_waits.join(budget.left_s())
        assert bob_waits.error is None and bob_waits.answer is not None, bob_waits.error
        assert bob_waits.answer.level == Finality.FINAL and bob_waits.answer.codes == (0,) * 5
        alice.timeout_s = 30
        retry = alice.create_transfers(unanswered)  # a new request, the same transfer ids
        assert retry.level == Finality.FINAL and set(retry.codes) <= {0, demo.EXISTS}
        acknowledged = {t.id: t for t in [*unanswered, *map(_transfer, range(50, 55))]}

        def back_in_bft() -> bool:
            found = _statuses(status)
            return (
                all(s.get("mode") == "bft" for s in found)
                and len({(s["height"], s["final_height"], s["state_hash"]) for s in found}) == 1
            )

        budget.until(back_in_bft, "all 4 replicas in BFT mode at one height and state hash")
        ids = sorted(acknowledged)
        answers = [demo.ask_replica(alice, r, ids, ACCOUNTS) for r in range(4)]
        findings = demo.check_exactly_once(acknowledged, ACCOUNTS, answers)
        assert all(f.ok for f in findings), demo.problems_of(findings)
        for client in (status, alice, bob):
            client.close()


# ---------------------------------------------------------------------- the proxy alone


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@pytest.fixture
def echoes() -> Iterator[dict[int, str]]:
    servers = [socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo) for _ in range(3)]
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {i: f"127.0.0.1:{s.server_address[1]}" for i, s in enumerate(servers)}
    for server in servers:
        server.shutdown()
        server.server_close()


def _dial(proxy: FaultProxy, a: int, b: int) -> socket.socket:
    host, port = proxy.address(a, b).rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def _echoed(sock: socket.socket, data: bytes, timeout_s: float = 5.0) -> bytes:
    sock.settimeout(timeout_s)
    received = b""
    with contextlib.suppress(TimeoutError):
        while len(received) < len(data):
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    return received


def test_proxy_forwards_holds_while_cut_and_delivers_after_mend(echoes: dict[int, str]) -> None:
    with FaultProxy(echoes) as proxy:
        assert len(proxy.links) == 6 and len(set(proxy.ports.values())) == 6
        with _dial(proxy, 0, 1) as sock:
            sock.sendall(b"hello")
            assert _echoed(sock, b"hello") == b"hello"
            proxy.cut(1, 0)  # the echo's way back: held, not lost
            sock.sendall(b"held")
            assert _echoed(sock, b"held", timeout_s=0.3) == b""
            proxy.mend(1, 0)
            assert _echoed(sock, b"held") == b"held"
        proxy.cut(0, 2)  # a new connection over a cut link is held until the mend
        with _dial(proxy, 0, 2) as sock:
            sock.sendall(b"late")
            assert _echoed(sock, b"late", timeout_s=0.3) == b""
            proxy.heal()
            assert _echoed(sock, b"late") == b"late"
        assert proxy.stats[(0, 1)].bytes_forwarded == len(b"hello") + len(b"held")


def test_proxy_reset_closes_the_links_connections(echoes: dict[int, str]) -> None:
    with FaultProxy(echoes) as proxy, _dial(proxy, 2, 0) as sock:
        sock.sendall(b"x")
        assert _echoed(sock, b"x") == b"x"
        proxy.cut(0, 2, reset=True)  # either direction of the pair resets its connections
        sock.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(10) == b""  # closed by the proxy
        assert proxy.stats[(2, 0)].connections_reset == 1


def test_partition_star_and_isolate_cut_the_right_links(echoes: dict[int, str]) -> None:
    def cut(proxy: FaultProxy) -> set[tuple[int, int]]:
        return {link for link in proxy.links if proxy.is_cut(*link)}

    with FaultProxy(echoes) as proxy:
        proxy.partition([0], [1, 2])
        assert cut(proxy) == {(0, 1), (1, 0), (0, 2), (2, 0)}
        proxy.heal()
        proxy.star(1)
        assert cut(proxy) == {(0, 2), (2, 0)}
        proxy.heal()
        proxy.isolate(2)
        assert cut(proxy) == {(0, 2), (2, 0), (1, 2), (2, 1)}
        proxy.heal()
        assert cut(proxy) == set()
        proxy.cut(0, 1)  # directed: the other way still works
        assert cut(proxy) == {(0, 1)}
        with pytest.raises(AssertionError):
            proxy.partition([0], [1])  # replica 2 in no group


def test_route_replicas_sends_peer_traffic_through_the_proxy(tmp_path: Path) -> None:
    layout = init_cluster(tmp_path / "c", replicas=4)
    real = listen_addresses(layout.node_configs)
    with FaultProxy(real) as proxy:
        route_replicas(layout.node_configs, proxy)
        assert listen_addresses(layout.node_configs) == real  # each still listens there
        for replica, path in enumerate(layout.node_configs):
            config = load_node_config(path)  # still a valid config
            for peer in config.replicas:
                expected = real[peer.id] if peer.id == replica else proxy.address(replica, peer.id)
                assert peer.address == expected
        client = load_client_config(layout.client_configs[0])
        assert [p.address for p in client.replicas] == [real[i] for i in range(4)]
