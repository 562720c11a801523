"""The asyncio driver around the real cores: persist before send, replies after the WAL,
recovery from the WAL.  Four drivers in one event loop, linked in memory (the gRPC
transport has its own tests), each with a real write-ahead log on disk."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from consensus.crypto import Ed25519Signer
from consensus.effects import DecidedRecord, PersistRecord, VoteRecord
from consensus.encoding import canonical
from consensus.messages import (
    OP_CREATE_ACCOUNTS,
    OP_TRANSFERS,
    Accept,
    Finality,
    Reply,
    Request,
    Write,
)
from consensus.wire import decode_one_of
from ledger import Account, Transfer, encode_accounts, encode_transfers
from node.config import NodeConfig, init_cluster, load_client_config, load_node_config
from node.driver import Driver
from node.replica import open_wal
from node.transport import PEER_INPUT_TYPES, Received


class MemoryLinks:
    """Delivers every sent message to its targets' inbound queues, and logs events."""

    def __init__(self) -> None:
        self.drivers: dict[int, Driver] = {}
        self.events: list[tuple[str, int, Any]] = []

    def attach(self, driver: Driver) -> None:
        replica = driver.config.replica_id
        self.drivers[replica] = driver
        driver.transport = _MemoryTransport(self, replica)  # type: ignore[assignment]
        append = driver.wal.append

        def logged_append(records: list[PersistRecord]) -> int:
            last = append(records)
            self.events.append(("durable", replica, tuple(records)))
            return last

        driver.wal.append = logged_append  # type: ignore[method-assign,assignment]
        deferrable = driver._deferrable

        def logged_deferrable(batch: list[PersistRecord]) -> list[PersistRecord]:
            deferred = deferrable(batch)  # checkpoints left to the next WAL snapshot
            if deferred:
                self.events.append(("deferred", replica, tuple(deferred)))
            return deferred

        driver._deferrable = logged_deferrable  # type: ignore[method-assign]
        answer = driver._answer

        def logged_answer(reply: Reply) -> None:
            self.events.append(("reply", replica, reply))
            answer(reply)

        driver._answer = logged_answer  # type: ignore[method-assign]


class _MemoryTransport:
    def __init__(self, links: MemoryLinks, replica: int) -> None:
        self.peers: dict[int, Any] = {}  # no gRPC links to report on
        self.links = links
        self.replica = replica

    def send(self, to: int | None, payload: bytes) -> None:
        message = decode_one_of(payload, PEER_INPUT_TYPES)  # what the wire would carry
        self.links.events.append(("send", self.replica, message))
        for target, driver in self.links.drivers.items():
            if target != self.replica and to in (None, target):
                driver.inbound.put_nowait(Received(self.replica, (message,)))  # type: ignore[arg-type]


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    init_cluster(tmp_path / "c", replicas=4)
    return tmp_path / "c"


def _configs(cluster: Path) -> list[NodeConfig]:
    return [load_node_config(cluster / f"replica-{i}" / "node.toml") for i in range(4)]


def _request(cluster: Path, number: int, operation: int, records: bytes) -> Request:
    client = load_client_config(cluster / "client-0" / "client.toml")
    unsigned = Request(client_id=0, request_number=number, transfers=records, operation=operation)
    signature = Ed25519Signer(client.signing_key).sign(canonical(unsigned))
    return dataclasses.replace(unsigned, signature=signature)


def _open(cluster: Path, links: MemoryLinks) -> list[Driver]:
    drivers = []
    for config in _configs(cluster):
        drivers.append(open_wal(config)[1])
        links.attach(drivers[-1])
    return drivers


async def _until_decided(drivers: list[Driver], height: int) -> None:
    """Until every replica has decided ``height`` (the caller's deadline bounds it)."""
    while min(d.core.bft.decided_height for d in drivers) < height:
        await asyncio.sleep(0.01)


async def _stop(drivers: list[Driver], tasks: list[asyncio.Task[None]]) -> None:
    for driver in drivers:
        driver.stop()
    await asyncio.gather(*tasks)
    for driver in drivers:
        driver.wal.close()


async def _run(drivers: list[Driver], requests: list[Request]) -> list[Reply]:
    tasks = [asyncio.create_task(d.run()) for d in drivers]
    replies = []
    try:
        for request in requests:
            future = drivers[request.request_number % 4].submit(request, Finality.FINAL)
            replies.append(await asyncio.wait_for(future, 20))
        # Let every replica decide the last block before stopping.
        await _until_decided(drivers, replies[-1].header.height)
    finally:
        await _stop(drivers, tasks)
    return replies


def _accounts(cluster: Path) -> Request:
    accounts = [Account(id=i, ledger=1, code=1) for i in range(1, 5)]
    return _request(cluster, 1, OP_CREATE_ACCOUNTS, encode_accounts(accounts))


def _transfers(cluster: Path, number: int) -> Request:
    transfers = [
        Transfer(
            id=number * 100 + i,
            debit_account_id=1 + i % 4,
            credit_account_id=1 + (i + 1) % 4,
            amount=10,
            ledger=1,
            code=1,
        )
        for i in range(10)
    ]
    return _request(cluster, number, OP_TRANSFERS, encode_transfers(transfers))


def test_votes_and_replies_leave_only_after_their_records_are_durable(cluster: Path) -> None:
    links = MemoryLinks()
    drivers = _open(cluster, links)
    requests = [_accounts(cluster), _transfers(cluster, 2), _transfers(cluster, 3)]
    replies = asyncio.run(_run(drivers, requests))
    assert [set(r.results[0][2]) for r in replies] == [{0}, {0}, {0}]
    assert all(r.level is Finality.FINAL and r.certificate is not None for r in replies)
    durable: dict[int, set[object]] = {i: set() for i in range(4)}
    votes_checked = replies_checked = 0
    for kind, replica, item in links.events:
        if kind == "durable":
            durable[replica].update(item)
        elif kind == "send" and isinstance(item, Write | Accept):
            vote = (type(item).__name__.lower(), item.regency, item.height, item.digest)
            persisted = {(r.kind, r.regency, r.height, r.digest)
                         for r in durable[replica] if isinstance(r, VoteRecord)}  # fmt: skip
            assert vote in persisted, f"r{replica} sent {vote} before persisting it"
            votes_checked += 1
        elif kind == "reply":
            decided = [r for r in durable[replica] if isinstance(r, DecidedRecord)
                       and r.decided.block.header == item.header]  # fmt: skip
            assert decided, f"r{replica} answered h{item.header.height} before persisting it"
            replies_checked += 1
    assert votes_checked >= 3 * 4 * 2 and replies_checked >= 3 * 4
    assert len({d.core.bft.last_header.state_hash for d in drivers}) == 1
    assert {d.read_model.height for d in drivers} == {replies[-1].header.height}


def test_a_restarted_replica_recovers_from_its_wal_and_goes_on(cluster: Path) -> None:
    first = _open(cluster, MemoryLinks())
    asyncio.run(_run(first, [_accounts(cluster)]))
    header = first[0].core.bft.last_header
    again = _open(cluster, MemoryLinks())
    for driver in again:  # before running: rebuilt from the WAL alone
        assert driver.core.bft.last_header == header
        assert driver.read_model.height == header.height
        assert len(driver.read_model.ledger.lookup_accounts([1, 2, 3, 4])) == 4
    (reply,) = asyncio.run(_run(again, [_transfers(cluster, 2)]))
    assert reply.header.height > header.height and set(reply.results[0][2]) == {0}
    for driver in again:
        found = driver.read_model.ledger.lookup_accounts([1, 2, 3, 4])
        assert [a.debits_posted for a in found] == [30, 30, 20, 20]
        assert [a.credits_posted for a in found] == [20, 30, 30, 20]
