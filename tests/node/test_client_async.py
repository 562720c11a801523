"""The asyncio client against four in-process replicas (real gRPC, mutual TLS, WAL on
disk): it creates, reads back, verifies certificates, watches commits, and when a
replica (the leader) is stopped sends the same request, same number, to the next one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from consensus import certificate as certificates
from consensus.messages import Finality, Request
from consensus.wire import decode_as
from ledger import Account, AccountFilter, AccountFlags, Transfer
from node.aclient import AsyncClient
from node.client import ClientError, Metadata
from node.config import init_cluster, load_client_config, load_node_config
from node.replica import serve

REPLICAS = 4


class RecordingClient(AsyncClient):
    """Remembers every create attempt: (replica, request number, error or None)."""

    attempts: list[tuple[int, int, str | None]]

    async def _call(
        self, replica: int, service: str, method: str, body: bytes, metadata: Metadata = ()
    ) -> bytes:
        number = decode_as(body[1:], Request).request_number if method.startswith("Create") else 0
        try:
            answer = await super()._call(replica, service, method, body, metadata)
        except ClientError as error:
            self.attempts.append((replica, number, str(error)))
            raise
        self.attempts.append((replica, number, None))
        return answer


def _transfer(id: int, amount: int) -> Transfer:
    return Transfer(id=id, debit_account_id=1, credit_account_id=2, amount=amount, ledger=1, code=1)


async def _until_every_replica_at(client: AsyncClient, height: int) -> None:
    for _ in range(200):  # 10 s
        statuses = [await client.status(i) for i in range(REPLICAS)]
        if all(int(str(s["height"])) >= height for s in statuses):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not every replica reached h{height}: {statuses}")


def test_async_client_creates_reads_verifies_and_fails_over(tmp_path: Path) -> None:
    cluster = tmp_path / "c"
    init_cluster(cluster, replicas=REPLICAS)
    client_config = load_client_config(cluster / "client-0" / "client.toml")
    history = AccountFlags.HISTORY
    accounts = [Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1, flags=history)]
    query = AccountFilter(account_id=2, limit=10)

    async def test() -> None:
        stops = [asyncio.Event() for _ in range(REPLICAS)]
        configs = [load_node_config(cluster / f"replica-{i}" / "node.toml") for i in range(4)]
        replicas = [asyncio.create_task(serve(c, s)) for c, s in zip(configs, stops, strict=True)]
        client = RecordingClient(client_config, timeout_s=20)
        client.attempts = []
        try:
            opened = await client.create_accounts(accounts)
            assert opened.codes == (0, 0) and opened.level is Finality.FINAL
            moved = await client.create_transfers([_transfer(9, 5)])
            assert moved.codes == (0,) and moved.height == opened.height + 1
            certificate = moved.certificate
            assert certificate is not None and certificate.digest == moved.header.digest
            assert certificates.verify(certificate, client.checker.verifier, REPLICAS)
            # A PROVISIONAL wait asks every replica; await_final then returns it as FINAL.
            early = await client.create_transfers([_transfer(10, 7)], Finality.PROVISIONAL)
            final = await client.await_final(early)
            assert final.level is Finality.FINAL and final.codes == (0,)
            assert final.request_number == early.request_number
            # FINAL is a quorum's word: the fourth replica may decide the block a moment
            # later, and reads are served from each replica's own state.
            await _until_every_replica_at(client, final.height)
            found = await client.lookup_accounts([1, 2, 3], replica=1)
            posted = [(a.id, a.debits_posted, a.credits_posted) for a in found]
            assert posted == [(1, 12, 0), (2, 0, 12)]
            assert [t.id for t in await client.lookup_transfers([9, 10, 11])] == [9, 10]
            assert [t.id for t in await client.get_account_transfers(query, 2)] == [9, 10]
            balances = await client.get_account_balances(query)
            assert [b.credits_posted for b in balances] == [5, 12]
            heights = []
            async for decided in client.watch_commits(0, replica=3):
                heights.append(decided.block.header.height)
                if len(heights) == 2:
                    break
            assert heights == [1, 2]
            status = await client.status(0)
            assert status["replica"] == 0 and status["leader"] == 0

            # Stop the leader, replica 0, which answered so far: the next create call
            # fails there and goes, unchanged, to the next replicas until one is FINAL.
            stops[0].set()
            await replicas[0]
            client.attempts.clear()
            after = await client.create_transfers([_transfer(11, 100)])
            assert after.codes == (0,) and after.level is Finality.FINAL and after.replica != 0
            assert after.certificate is not None
            numbers = {number for _, number, _ in client.attempts}
            assert numbers == {after.request_number}, client.attempts
            first_replica, _, first_error = client.attempts[0]
            assert first_replica == 0 and first_error is not None
            assert client.attempts[-1] == (after.replica, after.request_number, None)
            # Once: one transfer 11, and account 2 got 5 + 7 + 100.
            assert [t.id for t in await client.lookup_transfers([11])] == [11]
            credited = await client.lookup_accounts([2], replica=after.replica)
            assert credited[0].credits_posted == 112
            # The replica that answered is asked first from now on.
            client.attempts.clear()
            await client.lookup_accounts([1])
            assert client.attempts == [(after.replica, 0, None)]
            with pytest.raises(ClientError, match="replica 0: Status"):
                await client.status(0)
            with pytest.raises(ValueError, match=r"1\.\.8189 ids"):
                await client.lookup_transfers([])
            with pytest.raises(ClientError, match="cannot wait for ANCHORED"):
                await client.create_transfers([_transfer(12, 1)], Finality.ANCHORED)
        finally:
            await client.close()
            for stop in stops:
                stop.set()
            await asyncio.gather(*replicas)

    asyncio.run(asyncio.wait_for(test(), 90))
