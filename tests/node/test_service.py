"""The client API of four in-process replicas (real gRPC, mutual TLS, WAL on disk):
bad input gets a status naming the problem and the replicas go on serving."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from pathlib import Path

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from consensus.crypto import Ed25519Signer
from consensus.encoding import canonical
from consensus.messages import (
    OP_CREATE_ACCOUNTS,
    OP_TRANSFERS,
    DecidedBlock,
    Finality,
    Reply,
    Request,
)
from consensus.wire import decode_as, encode
from ledger import (
    Account,
    AccountFilter,
    AccountFlags,
    Transfer,
    encode_accounts,
    encode_transfers,
)
from node.client import Client, ClientError
from node.config import TlsFiles, init_cluster, load_client_config, load_node_config
from node.replica import serve
from node.service import encode_filter
from node.transport import secure_channel

HISTORY = AccountFlags.HISTORY


def _tls(directory: Path, owner: str) -> TlsFiles:
    return TlsFiles(
        ca_cert=(directory / "ca.crt").read_bytes(),
        cert=(directory / owner / "tls.crt").read_bytes(),
        key=(directory / owner / "tls.key").read_bytes(),
    )


class Caller:
    """Raw calls to replica 0 as ``owner`` (a client or a replica directory)."""

    def __init__(self, cluster: Path, owner: str) -> None:
        self.address = load_node_config(cluster / "replica-0" / "node.toml").listen
        self.channel = secure_channel(_tls(cluster, owner), self.address, 0)

    async def call(self, service: str, method: str, body: bytes) -> bytes:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(
            f"/{service}/{method}"
        )
        # wait_for_ready: the replicas were just started and may not listen yet.
        return await call(body, timeout=10, wait_for_ready=True)

    async def refused(self, method: str, body: bytes) -> tuple[str, str]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.call("aegis.v1.Ledger", method, body)
        return caught.value.code().name, str(caught.value.details())


def _signed(cluster: Path, request: Request) -> Request:
    key = load_client_config(cluster / "client-0" / "client.toml").signing_key
    return dataclasses.replace(request, signature=Ed25519Signer(key).sign(canonical(request)))


def test_bad_client_input_is_refused_clearly_and_changes_nothing(tmp_path: Path) -> None:
    cluster = tmp_path / "c"
    init_cluster(cluster, replicas=4)
    transfer = Transfer(id=9, debit_account_id=1, credit_account_id=2, amount=5, ledger=1, code=1)
    good = _signed(
        cluster,
        Request(
            client_id=0,
            request_number=50,
            transfers=encode_accounts(
                [Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1, flags=HISTORY)]
            ),
            operation=OP_CREATE_ACCOUNTS,
        ),
    )
    transfers = encode_transfers([transfer])
    final = bytes((Finality.FINAL,))
    query = AccountFilter(account_id=2, limit=10)

    async def test() -> None:
        stop = asyncio.Event()
        configs = [load_node_config(cluster / f"replica-{i}" / "node.toml") for i in range(4)]
        replicas = [asyncio.create_task(serve(config, stop)) for config in configs]
        client = Caller(cluster, "client-0")
        try:
            answer = decode_as(await client.call("aegis.v1.Ledger", "CreateAccounts",
                                                 final + encode(good)), Reply)  # fmt: skip
            assert answer.results[0][2] == bytes(2) and answer.level is Finality.FINAL
            cases = [
                ("CreateTransfers", b"", "INVALID_ARGUMENT", "the finality level to wait for"),
                ("CreateTransfers", b"\x03" + encode(good), "INVALID_ARGUMENT", "ANCHORED"),
                ("CreateTransfers", final + b"\x01junk", "INVALID_ARGUMENT", "not an encoded"),
                ("CreateTransfers", final + encode(good), "INVALID_ARGUMENT",
                 "operation 2, expected 0"),
                ("CreateTransfers",
                 final + encode(_signed(cluster, Request(client_id=1, request_number=60,
                                                         transfers=transfers))),
                 "PERMISSION_DENIED", "request for client 1 from the certificate of client 0"),
                ("CreateTransfers",
                 final + encode(Request(client_id=0, request_number=61, transfers=transfers,
                                        signature=bytes(64))),
                 "UNAUTHENTICATED", "signature is not client 0's"),
                ("CreateTransfers",
                 final + encode(_signed(cluster, Request(client_id=0, request_number=62,
                                                         transfers=b"\xff" * 128))),
                 "INVALID_ARGUMENT", "the records cannot execute"),
                ("CreateAccounts",
                 final + encode(dataclasses.replace(good, request_number=49)),
                 "UNAUTHENTICATED", "signature"),
                ("CreateAccounts",
                 final + encode(_signed(cluster, dataclasses.replace(good, request_number=49,
                                                                     signature=b""))),
                 "FAILED_PRECONDITION", "not above client 0's last decided number 50"),
                ("LookupAccounts", b"\x01" * 15, "INVALID_ARGUMENT", "ids of 16 bytes"),
                ("GetAccountTransfers", bytes(127), "INVALID_ARGUMENT", "must be 128 bytes"),
                ("GetAccountBalances", encode_filter(dataclasses.replace(query, flags=0)),
                 "INVALID_ARGUMENT", "flags 0x0 must select debits, credits or both"),
                ("GetAccountBalances", encode_filter(query)[:-8] + bytes(8),
                 "INVALID_ARGUMENT", "limit must be at least 1"),
            ]  # fmt: skip
            for method, body, code, details in cases:
                got = await client.refused(method, body)
                assert got[0] == code and details in got[1], (method, got)
            as_replica = Caller(cluster, "replica-1")
            code, details = await as_replica.refused("CreateAccounts", final + encode(good))
            assert code == "PERMISSION_DENIED" and "needs a client" in details
            # A retry of the decided request is answered again, from the reply cache.
            again = await client.call("aegis.v1.Ledger", "CreateAccounts", final + encode(good))
            assert decode_as(again, Reply).header == answer.header
            status = await as_replica.call("aegis.v1.Admin", "Status", b"")
            assert b'"height": 1' in status and b'"evidence": 0' in status
            assert b'"fenced": null' in status and b'"provisional_height": 0' in status
            health = health_pb2_grpc.HealthStub(client.channel)
            checked = await health.Check(health_pb2.HealthCheckRequest(service="aegis.v1.Ledger"))
            assert checked.status == health_pb2.HealthCheckResponse.SERVING
            await client.channel.close()
            await as_replica.channel.close()
            # The blocking client, as an application uses it: sign, submit, verify.
            with Client.from_file(str(cluster / "client-0" / "client.toml"), 10) as app:
                done = await asyncio.to_thread(app.create_transfers, [transfer])
                assert done.codes == (0,) and done.level is Finality.FINAL
                assert (
                    done.certificate is not None and done.certificate.digest == done.header.digest
                )
                # Waiting for PROVISIONAL asks every replica; in BFT mode a FINAL answer wins.
                again_transfer = dataclasses.replace(transfer, id=10)
                early = await asyncio.to_thread(
                    app.create_transfers, [again_transfer], Finality.PROVISIONAL
                )
                assert early.codes == (0,) and early.level is Finality.FINAL
                found = await asyncio.to_thread(app.lookup_transfers, [9, 10, 11], 2)
                assert [t.id for t in found] == [9, 10]
                moved = await asyncio.to_thread(app.get_account_transfers, query, 3)
                assert [t.id for t in moved] == [9, 10]
                balances = await asyncio.to_thread(app.get_account_balances, query)
                assert [b.credits_posted for b in balances] == [5, 10]
                assert [b.timestamp for b in balances] == [t.timestamp for t in moved]
                watched = await asyncio.to_thread(_first_blocks, app, 2)
                assert [d.block.header.height for d in watched] == [1, 2]
                assert watched[1].block.requests[0].transfers == transfers
                with pytest.raises(ValueError, match=r"1\.\.8189 ids"):
                    await asyncio.to_thread(app.lookup_transfers, [])
                with pytest.raises(ClientError, match="cannot wait for ANCHORED"):
                    await asyncio.to_thread(app.create_transfers, [transfer], Finality.ANCHORED)
        finally:
            stop.set()
            await asyncio.gather(*replicas)

    asyncio.run(asyncio.wait_for(test(), 60))


def _first_blocks(app: Client, count: int) -> list[DecidedBlock]:
    return list(itertools.islice(app.watch_commits(0, replica=1), count))


def test_the_wire_request_used_by_clients_round_trips() -> None:
    request = Request(client_id=3, request_number=7, transfers=bytes(128), operation=OP_TRANSFERS)
    assert decode_as(encode(request), Request) == request
