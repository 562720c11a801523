"""The client API of a replica: gRPC methods with opaque byte bodies.

Guarantees:

* Only callers whose mutual-TLS certificate names a client of this cluster may
  call ``aegis.v1.Ledger``; a request must carry the caller's own client id and a
  valid Ed25519 client signature.  ``Status`` also admits replicas.
* Bad input is answered with a gRPC status naming the problem
  (INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED, FAILED_PRECONDITION,
  RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED) and changes nothing; it never reaches
  the core unchecked and never ends the process.
* A create call returns only a reply at least as final as asked, released by
  the driver after the replica's WAL holds everything the reply depends on.
  Lookups read FINAL state (the driver's read model).

Bodies (no protobuf code generation; ``node.client`` speaks this):

* ``CreateAccounts`` / ``CreateTransfers``: one byte, the finality level to wait
  for (1 PROVISIONAL, 2 FINAL), then ``consensus.wire.encode(Request)`` with
  operation ``OP_CREATE_ACCOUNTS`` / ``OP_TRANSFERS``.  Answer:
  ``consensus.wire.encode(Reply)`` (header, certificate when FINAL, results of the
  whole block; the caller's codes are under its (client, request number)).
* Reads (the four below) may carry the metadata ``aegis-min-height``: a decimal
  height; the replica answers only from FINAL state at least that high, waiting up to
  ``Tuning.read_wait_ms_max`` for it, else UNAVAILABLE (ask another replica).  Clients
  send the highest FINAL height they were answered with: read-your-writes.
* ``LookupAccounts`` / ``LookupTransfers``: 1..8189 ids, 16 bytes little-endian
  each.  Answer: the 128-byte records found, in the order asked, missing ids left
  out (TigerBeetle's semantics).
* ``GetAccountTransfers`` / ``GetAccountBalances``: a 128-byte account filter in
  TigerBeetle's layout (``FILTER``; the user_data and code filters must be zero:
  not supported yet).  Answer: 128-byte transfer or balance records.
* ``WatchCommits`` (server stream): ``after_height``, 8 bytes little-endian.
  Stream: ``consensus.wire.encode(DecidedBlock)`` for every FINAL block above it,
  in height order, the backlog first, then each block as it is decided.  Blocks
  below the last checkpoint are gone (FAILED_PRECONDITION says from where to
  watch); a watcher more than ``WATCH_BLOCKS_MAX`` blocks behind is ended with
  RESOURCE_EXHAUSTED and may watch again from its last height.
* ``aegis.v1.Admin/Status``: empty.  Answer: UTF-8 JSON (see ``status_of``).

Telemetry (``node.telemetry``): every ``aegis.v1.Ledger`` unary call is a SERVER span
continuing the W3C ``traceparent`` in the call's metadata; a create call's span carries
the request's attributes and the events ``submitted``, ``provisional``, ``final``.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Final

import grpc
import grpc.aio

from consensus.encoding import canonical
from consensus.messages import (
    OP_CREATE_ACCOUNTS,
    OP_TRANSFERS,
    Finality,
    Reply,
    Request,
)
from consensus.wire import WireError, decode_as, encode
from ledger import (
    BATCH_EVENTS_MAX,
    TIMESTAMP_MAX,
    U128_MAX,
    AccountFilter,
    AccountFilterFlags,
    encode_account,
    encode_transfer,
)
from ledger.codec import encode_balance
from node import certs, telemetry
from node.driver import WATCH_BLOCKS_MAX, Driver, Overloaded
from node.telemetry import ServerCall
from node.transport import peer_identity

LEDGER_SERVICE: Final = "aegis.v1.Ledger"
ADMIN_SERVICE: Final = "aegis.v1.Admin"
ID_BYTES: Final = 16
# Read-your-writes: a read carrying this metadata is answered from FINAL state at
# least that high (it waits up to ``Tuning.read_wait_ms_max``, else UNAVAILABLE).
MIN_HEIGHT_METADATA: Final = "aegis-min-height"
HEIGHT_MAX: Final = 2**63 - 1
# account id, user_data_128, user_data_64, user_data_32, code, reserved, timestamp_min,
# timestamp_max, limit, flags: TigerBeetle's AccountFilter, little-endian.
FILTER: Final = struct.Struct("<QQQQQIH58xQQII")
assert FILTER.size == 128
_FLAGS_KNOWN = int(AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS
                   | AccountFilterFlags.REVERSED)  # fmt: skip
Context = grpc.aio.ServicerContext[bytes, bytes]


class _Refused(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def min_height(metadata: Iterable[tuple[str, str | bytes]] | None) -> int:
    """The ``aegis-min-height`` of a call's metadata (0 without one)."""
    values = [value for key, value in metadata or () if key == MIN_HEIGHT_METADATA]
    if not values:
        return 0
    text = values[-1]
    if len(values) > 1 or not isinstance(text, str) or not text.isascii() or not text.isdigit():
        raise _Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{MIN_HEIGHT_METADATA} must be one decimal height, got {values!r}"[:300],
        )
    height = int(text)
    if height > HEIGHT_MAX:
        raise _Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{MIN_HEIGHT_METADATA} {height} is over the largest height {HEIGHT_MAX}",
        )
    return height


def _ids(body: bytes) -> list[int]:
    if not body or len(body) % ID_BYTES or len(body) // ID_BYTES > BATCH_EVENTS_MAX:
        raise _Refused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the body must be 1..{BATCH_EVENTS_MAX} ids of {ID_BYTES} bytes (little-endian), "
            f"got {len(body)} bytes",
        )
    return [int.from_bytes(body[i : i + ID_BYTES], "little") for i in range(0, len(body), 16)]


def _filter(body: bytes) -> AccountFilter:
    """The account filter in ``body``, or INVALID_ARGUMENT naming what is wrong with it."""

    def invalid(why: str) -> _Refused:
        return _Refused(grpc.StatusCode.INVALID_ARGUMENT, f"account filter: {why}")

    if len(body) != FILTER.size:
        raise invalid(f"must be {FILTER.size} bytes, got {len(body)}")
    (id_low, id_high, data_low, data_high, data_64, data_32, code,
     low, high, limit, flags) = FILTER.unpack(body)  # fmt: skip
    account_id = id_low | id_high << 64
    if data_low or data_high or data_64 or data_32 or code:
        raise invalid("user_data and code filters are not supported yet; leave them zero")
    if body[46:104] != bytes(58):
        raise invalid("reserved bytes must be zero")
    if account_id in (0, U128_MAX):
        raise invalid(f"account_id {account_id} is not a valid id")
    if max(low, high) > TIMESTAMP_MAX or (high and low > high):
        raise invalid(f"timestamps {low}..{high} are not a valid range")
    if limit == 0:
        raise invalid("limit must be at least 1")
    if flags & ~_FLAGS_KNOWN or not flags & (
        AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS
    ):
        raise invalid(f"flags 0x{flags:x} must select debits, credits or both (and nothing else)")
    return AccountFilter(
        account_id=account_id, timestamp_min=low, timestamp_max=high, limit=limit, flags=flags
    )


def encode_filter(query: AccountFilter) -> bytes:
    """The body of a GetAccountTransfers / GetAccountBalances call."""
    low, high = query.account_id & ((1 << 64) - 1), query.account_id >> 64
    times = (query.timestamp_min, query.timestamp_max)
    return FILTER.pack(low, high, 0, 0, 0, 0, 0, *times, query.limit, query.flags)


class ClientService:
    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.config = driver.config
        self.telemetry = telemetry.for_driver(driver)

    def handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        def unary(
            name: str,
            method: Callable[[bytes, certs.Identity, ServerCall], Awaitable[bytes]],
            admit_replicas: bool = False,
            reads: bool = False,
        ) -> grpc.RpcMethodHandler[bytes, bytes]:
            traced = not admit_replicas  # Status is polled: no span for it

            async def handle(body: bytes, context: Context) -> bytes:
                call = telemetry.NO_CALL
                if traced:
                    metadata = context.invocation_metadata()
                    call = self.telemetry.server_call(LEDGER_SERVICE, name, metadata)
                failure: BaseException | None = None
                try:
                    caller = self._caller(context, admit_replicas)
                    if reads:
                        await self._caught_up(min_height(context.invocation_metadata()))
                    return await method(body, caller, call)
                except _Refused as refused:
                    call.refused(refused.code, refused.details)
                    await context.abort(refused.code, refused.details)
                except BaseException as error:  # our bug, or the caller cancelled
                    failure = error
                    raise
                finally:
                    call.end(failure)

            return grpc.unary_unary_rpc_method_handler(handle)

        ledger = {
            "CreateAccounts": unary("CreateAccounts", self._create_accounts),
            "CreateTransfers": unary("CreateTransfers", self._create_transfers),
            "LookupAccounts": unary("LookupAccounts", self._lookup_accounts, reads=True),
            "LookupTransfers": unary("LookupTransfers", self._lookup_transfers, reads=True),
            "GetAccountTransfers": unary(
                "GetAccountTransfers", self._account_transfers, reads=True
            ),
            "GetAccountBalances": unary("GetAccountBalances", self._account_balances, reads=True),
            "WatchCommits": grpc.unary_stream_rpc_method_handler(self._watch_commits),
        }
        admin = {"Status": unary("Status", self._status, admit_replicas=True)}
        return (
            grpc.method_handlers_generic_handler(LEDGER_SERVICE, ledger),
            grpc.method_handlers_generic_handler(ADMIN_SERVICE, admin),
        )

    def _caller(self, context: Context, admit_replicas: bool) -> certs.Identity:
        identity = peer_identity(context)
        if isinstance(identity, str):
            raise _Refused(grpc.StatusCode.UNAUTHENTICATED, identity)
        allowed = identity.kind == "client" or (admit_replicas and identity.kind == "replica")
        if identity.cluster != self.config.cluster or not allowed:
            raise _Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the certificate names {identity}; this call needs a client of cluster "
                f"{self.config.cluster}",
            )
        return identity

    # ---------------------------------------------------------------- creating

    async def _create_accounts(
        self, body: bytes, caller: certs.Identity, call: ServerCall
    ) -> bytes:
        return await self._create(body, caller, OP_CREATE_ACCOUNTS, call)

    async def _create_transfers(
        self, body: bytes, caller: certs.Identity, call: ServerCall
    ) -> bytes:
        return await self._create(body, caller, OP_TRANSFERS, call)

    def _checked_request(self, body: bytes, caller: certs.Identity, operation: int) -> Request:
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        try:
            request = decode_as(body, Request)
        except WireError as error:
            raise _Refused(invalid, f"the body is not an encoded Request: {error}") from None
        if request.operation != operation:
            raise _Refused(invalid, f"operation {request.operation}, expected {operation}")
        if request.client_id != caller.id:
            raise _Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"request for client {request.client_id} from the certificate of client "
                f"{caller.id}",
            )
        bft = self.driver.core.bft
        if not bft.client_verifier.verify(request.client_id, canonical(request), request.signature):
            raise _Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the request's signature is not client {request.client_id}'s (or the "
                f"client is not in this replica's configuration)",
            )
        problem = bft.sm.check_request(request)
        if problem is not None:
            raise _Refused(invalid, f"the records cannot execute: {problem}")
        return request

    async def _create(
        self, body: bytes, caller: certs.Identity, operation: int, call: ServerCall
    ) -> bytes:
        if len(body) < 2 or body[0] not in (Finality.PROVISIONAL, Finality.FINAL):
            raise _Refused(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the body must start with the finality level to wait for: 1 (PROVISIONAL) "
                "or 2 (FINAL; ANCHORED is not reachable yet), then an encoded Request",
            )
        level = Finality(body[0])
        request = self._checked_request(body[1:], caller, operation)
        call.request(request, level)
        bft = self.driver.core.bft
        decided = bft.client_decided.get(request.client_id, -1)
        if request.request_number <= decided:
            cached = bft.reply_cache.get(request.client_id)
            if cached is not None and cached.request_number == request.request_number:
                call.event("answered from the reply cache", {"aegis.finality": cached.level.name})
                return encode(cached)  # a retry of the latest request: answer it again
            raise _Refused(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"request number {request.request_number} is not above client "
                f"{request.client_id}'s last decided number {decided}; use a higher one",
            )
        if len(bft.pending) >= bft.cfg.pending_requests_max and request.key not in bft.pending:
            raise _Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{len(bft.pending)} requests are waiting to be ordered; retry later",
            )
        try:
            future = self.driver.submit(request, level)
        except Overloaded as error:
            raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)) from None
        tracked = self.telemetry.submitted(call, request)
        wait_s = self.config.tuning.client_wait_ms_max / 1000
        try:
            reply: Reply = await asyncio.wait_for(asyncio.shield(future), wait_s)
            self.telemetry.answered(tracked, reply)
        except TimeoutError:
            raise _Refused(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"request {request.key} not {level.name} within {wait_s:g} s; retry it "
                f"unchanged (same number) at any replica",
            ) from None
        finally:
            self.driver.forget(request.key, future)
            self.telemetry.forget(tracked)
        return encode(reply)

    # ---------------------------------------------------------------- reading

    async def _caught_up(self, height: int) -> None:
        """Return once this replica's FINAL state reaches ``height``, or refuse."""
        if height == 0:
            return
        wait_s = self.config.tuning.read_wait_ms_max / 1000
        try:
            reached = await self.driver.read_at(height, wait_s)
        except Overloaded as error:
            raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)) from None
        if not reached:
            raise _Refused(
                grpc.StatusCode.UNAVAILABLE,
                f"replica {self.config.replica_id} holds FINAL state up to "
                f"h{self.driver.read_model.height}, below the h{height} asked "
                f"({MIN_HEIGHT_METADATA}) after {wait_s:g} s; another replica may be further",
            )

    async def _lookup_accounts(
        self, body: bytes, caller: certs.Identity, call: ServerCall
    ) -> bytes:
        found = self.driver.read_model.ledger.lookup_accounts(_ids(body))
        return b"".join(encode_account(account) for account in found)

    async def _lookup_transfers(
        self, body: bytes, caller: certs.Identity, call: ServerCall
    ) -> bytes:
        found = self.driver.read_model.ledger.lookup_transfers(_ids(body))
        return b"".join(encode_transfer(transfer) for transfer in found)

    async def _account_transfers(
        self, body: bytes, caller: certs.Identity, call: ServerCall
    ) -> bytes:
        found = self.driver.read_model.ledger.get_account_transfers(_filter(body))
        return b"".join(encode_transfer(transfer) for transfer in found)

    async def _account_balances(
        self, body: bytes, caller: certs.Identity, call: ServerCall
    ) -> bytes:
        found = self.driver.read_model.ledger.get_account_balances(_filter(body))
        return b"".join(encode_balance(balance) for balance in found)

    async def _watch_commits(self, body: bytes, context: Context) -> AsyncIterator[bytes]:
        try:
            self._caller(context, admit_replicas=False)
            if len(body) != 8:
                why = f"the body must be after_height, 8 bytes little-endian, got {len(body)}"
                raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, why)
            after = int.from_bytes(body, "little")
            bft = self.driver.core.bft
            if after < bft.base_height:
                raise _Refused(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"blocks up to h{bft.base_height} were truncated at a checkpoint; "
                    f"watch from after_height {bft.base_height} or later",
                )
            watch = self.driver.watch()  # no await between this and reading the backlog
        except (_Refused, Overloaded) as refused:
            code = (
                refused.code
                if isinstance(refused, _Refused)
                else grpc.StatusCode.RESOURCE_EXHAUSTED
            )
            await context.abort(code, str(refused))
        try:
            backlog = [bft.log[h] for h in range(after + 1, bft.decided_height + 1)]
            sent = after
            for decided in backlog:
                yield encode(decided)
                sent = decided.block.header.height
            while True:
                item = await watch.queue.get()
                if item is None:
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"fell more than {WATCH_BLOCKS_MAX} blocks behind; watch again from "
                        f"after_height {sent}",
                    )
                    return
                height = item.block.header.height
                if height <= sent:
                    continue  # already sent from the backlog
                if height != sent + 1:
                    await context.abort(
                        grpc.StatusCode.ABORTED,
                        f"this replica skipped to h{height} by state transfer; watch again "
                        f"from after_height {sent} at another replica",
                    )
                yield encode(item)
                sent = height
        finally:
            self.driver.unwatch(watch)

    async def _status(self, body: bytes, caller: certs.Identity, call: ServerCall) -> bytes:
        return json.dumps(status_of(self.driver), sort_keys=True).encode()


def status_of(driver: Driver) -> dict[str, object]:
    """What ``aegis cluster up`` shows: mode, regency, heights, queues, links."""
    core = driver.core
    bft = core.bft
    transport = driver.transport
    peers = {} if transport is None else transport.peers
    return {
        "replica": bft.id,
        "mode": core.mode.value,
        "regency": bft.regency,
        "leader": bft.leader,
        "height": bft.decided_height,
        "final_height": driver.read_model.height,
        # Committed by a fallback majority (PROVISIONAL until re-certified); the
        # fallback log may hold uncommitted entries above it.
        "provisional_height": core.raft.commit_height,
        "fallback_log_height": core.raft.last_height,
        # A replica whose WAL was damaged casts no vote until its promises are void.
        "fenced": None
        if driver.fence is None
        else {"until_ns": driver.fence.until_ns, "reason": driver.fence.reason},
        "state_hash": bft.last_header.state_hash.hex(),
        "pending_requests": len(bft.pending),
        "evidence": core.evidence_count,
        "ticks": bft.ticks,
        "ticks_behind_max": driver.stats.ticks_behind_max,
        "wal_records": driver.stats.wal_records,
        "wal_batches": driver.stats.wal_batches,
        "checkpoints": checkpoints_of(driver),
        "peers_connected": sorted(p for p, o in peers.items() if o.stats.connected),
        "messages_rejected": sum(o.stats.messages_rejected for o in peers.values()),
        "messages_dropped": sum(o.stats.messages_dropped for o in peers.values()),
    }


def checkpoints_of(driver: Driver) -> dict[str, object]:
    """Where this replica's checkpoints are durable.  ``deferred``: made here and left
    to the next WAL snapshot (``awaiting_snapshot`` while none holds the newest);
    ``not_persisted``: too large for the WAL, so a restart replays the blocks above
    the previous one (see ``Driver._append``)."""
    stats = driver.stats
    return {
        "stable_height": driver.core.bft.base_height,
        "deferred": stats.checkpoints_deferred,
        "awaiting_snapshot": driver.checkpoint_awaits_snapshot,
        "not_persisted": stats.checkpoints_not_persisted,
        "wal_snapshots": stats.wal_snapshots,
    }
