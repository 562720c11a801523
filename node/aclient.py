"""An asyncio Python client for a cluster's gRPC API (``node.service``), on ``grpc.aio``.

Same guarantees and method names as the blocking ``node.client.Client``, whose pure
parts it uses (request signing, answer and certificate checks, retry order, error
mapping, the PROVISIONAL tally), so the two cannot drift apart:

* mutual TLS to replica ``i`` under the TLS name ``replica-i``; requests signed with
  the client's Ed25519 key, numbers strictly increasing from the wall clock in ns;
* one create call in flight per client (an ``asyncio.Lock``): replicas decide a
  client's requests in number order;
* a FINAL answer only with a commit certificate that verifies; an unreachable, busy
  or slow replica gets the same request (same number) sent to the next one, so a
  retry never creates anything twice, and the replica that answered is asked first
  next time (a leader change is followed);
* PROVISIONAL asks every replica at once: the first FINAL answer or f + 1 matching
  PROVISIONAL ones win, the other calls are cancelled.

Use it inside one event loop: ``async with AsyncClient(config) as client: ...``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import grpc
import grpc.aio
from opentelemetry import trace

from consensus.messages import (
    OP_CREATE_ACCOUNTS,
    OP_TRANSFERS,
    BlockHeader,
    DecidedBlock,
    Finality,
    Request,
)
from ledger import (
    Account,
    AccountBalance,
    AccountFilter,
    Transfer,
    decode_accounts,
    decode_transfers,
    encode_accounts,
    encode_transfers,
)
from node.client import (
    Answer,
    Checker,
    ClientError,
    Metadata,
    ProvisionalTally,
    Signing,
    annotate,
    call_error,
    channel_credentials,
    channel_options,
    checked_level,
    create_body,
    create_method,
    create_span,
    decode_balances,
    decode_status,
    lookup_body,
    no_replica_answered,
    note_failure,
    retry_order,
    trace_metadata,
)
from node.config import ClientConfig, load_client_config
from node.service import ADMIN_SERVICE, LEDGER_SERVICE, encode_filter


class AsyncClient:
    def __init__(
        self,
        config: ClientConfig,
        timeout_s: float = 30.0,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self.config = config
        self.timeout_s = timeout_s
        self.tracer = trace.get_tracer("aegis.client", tracer_provider=tracer_provider)
        self.signing = Signing(config)
        self.checker = Checker(config)
        credentials = channel_credentials(config)
        self.channels = [
            grpc.aio.secure_channel(peer.address, credentials, options=channel_options(peer.id))
            for peer in config.replicas
        ]
        self._lock = asyncio.Lock()
        self._preferred = 0

    @classmethod
    def from_file(cls, path: str, timeout_s: float = 30.0) -> AsyncClient:
        return cls(load_client_config(path), timeout_s)

    async def close(self) -> None:
        await asyncio.gather(*(channel.close() for channel in self.channels))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    # ---------------------------------------------------------------- creating

    async def create_accounts(
        self, accounts: Sequence[Account], level: Finality = Finality.FINAL
    ) -> Answer:
        return await self._create(OP_CREATE_ACCOUNTS, encode_accounts(accounts), level)

    async def create_transfers(
        self, transfers: Sequence[Transfer], level: Finality = Finality.FINAL
    ) -> Answer:
        return await self._create(OP_TRANSFERS, encode_transfers(transfers), level)

    async def _create(self, operation: int, records: bytes, level: Finality) -> Answer:
        checked_level(level)
        async with self._lock:
            request = self.signing.request(operation, records, time.time_ns())
            with create_span(self.tracer, request, level) as span:
                if level == Finality.PROVISIONAL:
                    answer = await self._provisional(request, trace_metadata())
                else:
                    answer = await self._final(request)
                annotate(span, answer)
                return answer

    async def await_final(self, answer: Answer) -> Answer:
        """The FINAL answer for the request behind ``answer`` (a PROVISIONAL one), by
        sending the same signed request again; see ``Client.await_final``."""
        if answer.level >= Finality.FINAL:
            return answer
        with create_span(self.tracer, answer.request, Finality.FINAL) as span:
            final = await self._final(answer.request)
            annotate(span, final)
            return final

    async def _final(self, request: Request) -> Answer:
        body = create_body(request, Finality.FINAL)
        method = create_method(request.operation)
        replica, data = await self._call_any(LEDGER_SERVICE, method, body, trace_metadata())
        return self.checker.reply(request, Finality.FINAL, replica, data)

    async def _provisional(self, request: Request, metadata: Metadata) -> Answer:
        """Ask every replica; a FINAL answer, or f + 1 matching PROVISIONAL ones."""
        body = create_body(request, Finality.PROVISIONAL)
        method = create_method(request.operation)

        async def ask(replica: int) -> tuple[int, bytes | BaseException]:
            try:
                return replica, await self._call(replica, LEDGER_SERVICE, method, body, metadata)
            except ClientError as error:
                return replica, error

        calls = [asyncio.ensure_future(ask(r)) for r in range(len(self.channels))]
        tally = ProvisionalTally(self.checker, request)
        try:
            for done in asyncio.as_completed(calls):
                answer = tally.add(*await done)
                if answer is not None:
                    return answer
        finally:
            for call in calls:
                call.cancel()
        raise tally.failed()

    # ---------------------------------------------------------------- reading

    async def lookup_accounts(
        self, ids: Sequence[int], replica: int | None = None
    ) -> list[Account]:
        return decode_accounts(await self._read("LookupAccounts", lookup_body(ids), replica))

    async def lookup_transfers(
        self, ids: Sequence[int], replica: int | None = None
    ) -> list[Transfer]:
        return decode_transfers(await self._read("LookupTransfers", lookup_body(ids), replica))

    async def get_account_transfers(
        self, query: AccountFilter, replica: int | None = None
    ) -> list[Transfer]:
        data = await self._read("GetAccountTransfers", encode_filter(query), replica)
        return decode_transfers(data)

    async def get_account_balances(
        self, query: AccountFilter, replica: int | None = None
    ) -> list[AccountBalance]:
        data = await self._read("GetAccountBalances", encode_filter(query), replica)
        return decode_balances(data)

    async def _read(self, method: str, body: bytes, replica: int | None) -> bytes:
        metadata = self.checker.read_metadata()
        if replica is None:
            return (await self._call_any(LEDGER_SERVICE, method, body, metadata))[1]
        return await self._call(replica, LEDGER_SERVICE, method, body, metadata)

    async def watch_commits(self, after_height: int, replica: int) -> AsyncIterator[DecidedBlock]:
        """FINAL blocks above ``after_height`` from ``replica``, each checked as in
        ``Client.watch_commits``; ends with ``ClientError`` or when the caller stops."""
        call: grpc.aio.UnaryStreamMultiCallable[bytes, bytes] = self.channels[replica].unary_stream(
            f"/{LEDGER_SERVICE}/WatchCommits"
        )
        stream = call(after_height.to_bytes(8, "little"))
        previous: BlockHeader | None = None
        try:
            async for data in stream:
                assert isinstance(data, bytes)
                decided = self.checker.block(replica, data, previous)
                previous = decided.block.header
                yield decided
        except grpc.RpcError as error:
            raise call_error(error, replica, "WatchCommits") from None
        finally:
            stream.cancel()

    async def status(self, replica: int) -> dict[str, object]:
        return decode_status(await self._call(replica, ADMIN_SERVICE, "Status", b""))

    # ---------------------------------------------------------------- plumbing

    async def _call(
        self, replica: int, service: str, method: str, body: bytes, metadata: Metadata = ()
    ) -> bytes:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self.channels[replica].unary_unary(
            f"/{service}/{method}"
        )
        try:
            answer = await call(body, timeout=self.timeout_s, metadata=metadata)
        except grpc.RpcError as error:
            raise call_error(error, replica, method) from None
        assert isinstance(answer, bytes)
        return answer

    async def _call_any(
        self, service: str, method: str, body: bytes, metadata: Metadata = ()
    ) -> tuple[int, bytes]:
        """Ask replicas in turn until one answers; retry only what is safe to retry."""
        failures: list[str] = []
        for replica in retry_order(self._preferred, len(self.channels)):
            try:
                answer = await self._call(replica, service, method, body, metadata)
            except ClientError as error:
                note_failure(error, failures)
                continue
            self._preferred = replica
            return replica, answer
        raise no_replica_answered(failures, len(self.channels))
