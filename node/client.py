"""A minimal blocking Python client for a cluster's gRPC API (``node.service``).

Guarantees:

* Every call is mutual TLS with the client's certificate; replica ``i`` is dialled
  with TLS target ``replica-i``, so an answer comes from the replica named.
* Requests are signed with the client's Ed25519 key.  Request numbers start at
  the wall clock in nanoseconds and strictly increase, so a restarted client
  never reuses one; one create call is in flight per ``Client`` at a time (a lock),
  because replicas decide a client's requests in number order.
* A FINAL answer is accepted only with a commit certificate that verifies
  against the replicas' public keys and a header that commits to the results.
  Waiting for PROVISIONAL asks every replica at once and accepts the first FINAL
  answer or f + 1 PROVISIONAL ones for one block with the same codes (one of
  them comes from an honest replica; DESIGN 3.4).  For FINAL, when a replica is
  unreachable, busy or too slow the same request (same number) goes to the next
  one, so a retry can never create anything twice.  ``await_final`` waits for a
  PROVISIONAL answer's request to become FINAL the same way.
* Reads are read-your-writes: each carries (``aegis-min-height``) the highest FINAL
  height this client was answered with, and a replica answers only from FINAL state
  at least that high (it waits a moment, else UNAVAILABLE and the next replica is
  asked).  So a lookup never misses what this client's own FINAL calls created.
* Tracing: each create call (and ``await_final``) is a CLIENT span of the tracer
  provider given, else OpenTelemetry's global one (a no-op until the application
  configures an SDK); its W3C ``traceparent`` goes in the gRPC metadata of every
  attempt, so the replicas' SERVER spans join the same trace (``node.telemetry``).

The pure parts (request building and signing, answer and certificate checks, the
retry order, error mapping, the PROVISIONAL tally) are module-level functions and
small classes shared with the asyncio client, ``node.aclient.AsyncClient``; the
classes here and there only do IO.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import queue
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Final, TypeAlias

import grpc
import grpc.aio
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind

from consensus import certificate as certificates
from consensus.blocks import body_problem
from consensus.crypto import Ed25519Signer, Ed25519Verifier
from consensus.encoding import canonical
from consensus.messages import (
    OP_CREATE_ACCOUNTS,
    OP_TRANSFERS,
    BlockHeader,
    Certificate,
    DecidedBlock,
    Finality,
    Reply,
    Request,
    digest_of,
)
from consensus.wire import WireError, decode_as, encode
from ledger import (
    BATCH_EVENTS_MAX,
    Account,
    AccountBalance,
    AccountFilter,
    Transfer,
    decode_accounts,
    decode_transfers,
    encode_accounts,
    encode_transfers,
)
from ledger.codec import decode_balance
from node import certs
from node.config import ClientConfig, load_client_config
from node.service import (
    ADMIN_SERVICE,
    ID_BYTES,
    LEDGER_SERVICE,
    MIN_HEIGHT_METADATA,
    encode_filter,
)
from node.transport import GRPC_MESSAGE_BYTES_MAX

Metadata: TypeAlias = tuple[tuple[str, str], ...]

RETRYABLE: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
RETRY_ROUNDS: Final = 2  # each replica is asked at most this many times per call
BALANCE_BYTES: Final = 128


class ClientError(Exception):
    """A call failed: ``code`` is the gRPC status (or None for a bad answer)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Answer:
    """The outcome of one create call: a result code per event, in order."""

    codes: tuple[int, ...]
    level: Finality
    header: BlockHeader  # the block that holds the request
    certificate: Certificate | None  # its commit certificate when FINAL
    replica: int  # who answered (for PROVISIONAL: one of the f + 1 that agreed)
    request_number: int
    request: Request = dataclasses.field(repr=False)  # the signed request, for await_final

    @property
    def height(self) -> int:
        return self.header.height


# ------------------------------------------------------------------ shared, no IO


def create_method(operation: int) -> str:
    return "CreateAccounts" if operation == OP_CREATE_ACCOUNTS else "CreateTransfers"


def create_body(request: Request, level: Finality) -> bytes:
    """The body of a create call: the level to wait for, then the signed request."""
    return bytes((level,)) + encode(request)


def checked_level(level: Finality) -> Finality:
    if level not in (Finality.PROVISIONAL, Finality.FINAL):
        raise ClientError(f"cannot wait for {level.name}: not reachable yet")
    return level


def lookup_body(ids: Sequence[int]) -> bytes:
    if not 1 <= len(ids) <= BATCH_EVENTS_MAX:
        raise ValueError(f"look up 1..{BATCH_EVENTS_MAX} ids at a time")
    return b"".join(i.to_bytes(ID_BYTES, "little") for i in ids)


def decode_balances(data: bytes) -> list[AccountBalance]:
    return [
        decode_balance(data[i : i + BALANCE_BYTES], i // BALANCE_BYTES)
        for i in range(0, len(data), BALANCE_BYTES)
    ]


def decode_status(data: bytes) -> dict[str, object]:
    status = json.loads(data)
    assert isinstance(status, dict)
    return status


def retry_order(preferred: int, count: int) -> Iterator[int]:
    """Which replica each attempt asks: the last one that answered first, then the
    next ones in turn, so a call follows a leader change or a crashed replica."""
    assert 0 <= preferred < count
    return ((preferred + attempt) % count for attempt in range(RETRY_ROUNDS * count))


def note_failure(error: ClientError, failures: list[str]) -> None:
    """Remember a retryable failure; re-raise one that a retry cannot cure."""
    if error.code not in RETRYABLE:
        raise error
    failures.append(str(error))


def no_replica_answered(failures: Sequence[str], count: int) -> ClientError:
    return ClientError("no replica answered: " + "; ".join(failures[-count:]),
                       grpc.StatusCode.UNAVAILABLE)  # fmt: skip


def call_error(error: grpc.RpcError, replica: int, method: str) -> ClientError:
    """A failed gRPC call (blocking or asyncio) as a ``ClientError`` naming the replica."""
    code = error.code() if isinstance(error, grpc.Call | grpc.aio.AioRpcError) else None
    details = error.details() if isinstance(error, grpc.Call | grpc.aio.AioRpcError) else None
    return ClientError(f"replica {replica}: {method}: {details or error}", code)


def trace_metadata() -> Metadata:
    """The current trace context as gRPC metadata (W3C ``traceparent``; empty if none)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())


def create_span(
    tracer: trace.Tracer, request: Request, level: Finality
) -> AbstractContextManager[Span]:
    """The CLIENT span of one create call, current while it runs (so it is injected)."""
    method = create_method(request.operation)
    return tracer.start_as_current_span(
        f"{LEDGER_SERVICE}/{method}",
        kind=SpanKind.CLIENT,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": LEDGER_SERVICE,
            "rpc.method": method,
            "aegis.client.id": request.client_id,
            "aegis.request.number": request.request_number,
            "aegis.request.transfers": request.events,
            "aegis.finality.wanted": level.name,
        },
    )


def annotate(span: Span, answer: Answer) -> None:
    span.set_attributes({
        "aegis.replica.id": answer.replica,
        "aegis.finality": answer.level.name,
        "aegis.block.height": answer.height,
        "aegis.block.digest": answer.header.digest.hex(),
    })  # fmt: skip


class Signing:
    """Builds a client's signed requests; numbers start at the wall clock in ns and
    strictly increase, so a restarted client never reuses one."""

    def __init__(self, config: ClientConfig) -> None:
        self.client_id = config.client_id
        self.signer = Ed25519Signer(config.signing_key)
        self.last_number = 0

    def request(self, operation: int, records: bytes, now_ns: int) -> Request:
        self.last_number = max(self.last_number + 1, now_ns)
        unsigned = Request(
            client_id=self.client_id,
            request_number=self.last_number,
            transfers=records,
            operation=operation,
        )
        return dataclasses.replace(unsigned, signature=self.signer.sign(canonical(unsigned)))


class Checker:
    """Checks replicas' answers: commit certificates against the replicas' public keys,
    results against headers, streamed blocks against their parents.  Remembers the
    highest FINAL height it accepted, which this client's reads then ask for."""

    def __init__(self, config: ClientConfig) -> None:
        self.verifier = Ed25519Verifier({p.id: p.public_key for p in config.replicas})
        self.replica_count = len(config.replicas)
        self.final_height = 0
        self._height_lock = threading.Lock()  # await_final may run beside a create call

    def read_metadata(self) -> Metadata:
        """For a read: answer from FINAL state at least as high as any answer this client
        accepted (read-your-writes, whichever replica answers)."""
        height = self.final_height
        return ((MIN_HEIGHT_METADATA, str(height)),) if height else ()

    def read_at_least(self, height: int) -> None:
        """From now on, read from FINAL state at least ``height`` high: a height another
        process was answered with (``aegis client ... --min-height``), for
        read-your-writes across processes."""
        with self._height_lock:
            self.final_height = max(self.final_height, height)

    @property
    def provisional_needed(self) -> int:
        """f + 1: at least one of that many matching answers is from an honest replica."""
        return (self.replica_count - 1) // 3 + 1

    def _verifies(self, certificate: Certificate | None, digest: bytes) -> bool:
        return (
            certificate is not None
            and certificate.digest == digest
            and certificates.verify(certificate, self.verifier, self.replica_count)
        )

    def reply(self, request: Request, level: Finality, replica: int, data: bytes) -> Answer:
        try:
            reply = decode_as(data, Reply)
        except WireError as error:
            raise ClientError(f"replica {replica} answered garbage: {error}") from None
        if digest_of(reply.results) != reply.header.results_hash:
            raise ClientError(f"replica {replica}: the results do not match the block header")
        if reply.level < level:
            raise ClientError(f"replica {replica} answered {reply.level.name}, not {level.name}")
        if reply.level == Finality.FINAL and not self._verifies(
            reply.certificate, reply.header.digest
        ):
            raise ClientError(f"replica {replica}: the commit certificate does not verify")
        for client, number, codes in reply.results:
            if (client, number) == request.key:
                if len(codes) != request.events:
                    raise ClientError(f"replica {replica}: {len(codes)} codes for "
                                      f"{request.events} events")  # fmt: skip
                if reply.level == Finality.FINAL:
                    with self._height_lock:
                        self.final_height = max(self.final_height, reply.header.height)
                return Answer(
                    codes=tuple(codes),
                    level=reply.level,
                    header=reply.header,
                    certificate=reply.certificate,
                    replica=replica,
                    request_number=request.request_number,
                    request=request,
                )
        raise ClientError(f"replica {replica}: the answer holds no result for {request.key}")

    def block(self, replica: int, data: bytes, previous: BlockHeader | None) -> DecidedBlock:
        try:
            decided = decode_as(data, DecidedBlock)
        except WireError as error:
            raise ClientError(f"replica {replica} streamed garbage: {error}") from None
        block = decided.block
        header = block.header
        if not self._verifies(decided.certificate, block.digest):
            raise ClientError(f"replica {replica}: h{header.height} has no valid certificate")
        problem = body_problem(block, lambda request: True)  # other clients' keys: unknown
        if problem is not None:
            raise ClientError(f"replica {replica}: h{header.height}: {problem}")
        if previous is not None and (
            header.height != previous.height + 1 or header.parent_hash != previous.digest
        ):
            raise ClientError(f"replica {replica}: h{header.height} does not follow "
                              f"h{previous.height}")  # fmt: skip
        return decided


class ProvisionalTally:
    """Answers to a PROVISIONAL create call sent to every replica: done at the first
    FINAL answer (its certificate alone proves it) or at f + 1 PROVISIONAL answers for
    one block with the same codes."""

    def __init__(self, checker: Checker, request: Request) -> None:
        self.checker = checker
        self.request = request
        self.votes: dict[tuple[bytes, tuple[int, ...]], int] = {}
        self.failures: list[str] = []

    def add(self, replica: int, outcome: bytes | BaseException) -> Answer | None:
        """The accepted answer once there is one, else None."""
        if isinstance(outcome, grpc.RpcError):
            outcome = call_error(outcome, replica, create_method(self.request.operation))
        if isinstance(outcome, BaseException):
            self.failures.append(str(outcome))
            return None
        try:
            answer = self.checker.reply(self.request, Finality.PROVISIONAL, replica, outcome)
        except ClientError as error:
            self.failures.append(str(error))
            return None
        if answer.level == Finality.FINAL:
            return answer
        key = (answer.header.digest, answer.codes)
        self.votes[key] = self.votes.get(key, 0) + 1
        return answer if self.votes[key] == self.checker.provisional_needed else None

    def failed(self) -> ClientError:
        return ClientError(
            f"no FINAL answer and no {self.checker.provisional_needed} matching PROVISIONAL "
            f"ones: {'; '.join(self.failures)}",
            grpc.StatusCode.UNAVAILABLE,
        )


def channel_options(replica: int) -> list[tuple[str, int | str]]:
    return [
        ("grpc.ssl_target_name_override", certs.server_name(replica)),
        ("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES_MAX),
        ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES_MAX),
    ]


def channel_credentials(config: ClientConfig) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(config.tls.ca_cert, config.tls.key, config.tls.cert)


# ------------------------------------------------------------------ the blocking client


class Client:
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
            grpc.secure_channel(peer.address, credentials, options=channel_options(peer.id))
            for peer in config.replicas
        ]
        self._lock = threading.Lock()
        self._preferred = 0

    @classmethod
    def from_file(cls, path: str, timeout_s: float = 30.0) -> Client:
        return cls(load_client_config(path), timeout_s)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---------------------------------------------------------------- creating

    def create_accounts(
        self, accounts: Sequence[Account], level: Finality = Finality.FINAL
    ) -> Answer:
        return self._create(OP_CREATE_ACCOUNTS, encode_accounts(accounts), level)

    def create_transfers(
        self, transfers: Sequence[Transfer], level: Finality = Finality.FINAL
    ) -> Answer:
        return self._create(OP_TRANSFERS, encode_transfers(transfers), level)

    def _create(self, operation: int, records: bytes, level: Finality) -> Answer:
        checked_level(level)
        with self._lock:
            request = self.signing.request(operation, records, time.time_ns())
            with create_span(self.tracer, request, level) as span:
                if level == Finality.PROVISIONAL:
                    answer = self._provisional(request, trace_metadata())
                else:
                    answer = self._final(request)
                annotate(span, answer)
                return answer

    def await_final(self, answer: Answer) -> Answer:
        """The FINAL answer for the request behind ``answer`` (a PROVISIONAL one): the
        same signed request, same number, sent again waiting for FINAL, so nothing can
        be created twice.  A replica that has not decided it yet waits for it (at most
        its ``client_wait_ms_max``; then the next replica is asked); one that has decided
        it answers from its reply cache, which keeps each client's latest request only:
        call this before this client's next create call is decided (or from the start,
        in a thread, beside that call), else the replica refuses with
        FAILED_PRECONDITION.  Safe to call from another thread than the create calls."""
        if answer.level >= Finality.FINAL:
            return answer
        with create_span(self.tracer, answer.request, Finality.FINAL) as span:
            final = self._final(answer.request)
            annotate(span, final)
            return final

    def _final(self, request: Request) -> Answer:
        """Send ``request`` to replicas in turn (same number each time) until one gives
        a FINAL answer with a valid certificate."""
        body = create_body(request, Finality.FINAL)
        method = create_method(request.operation)
        replica, data = self._call_any(LEDGER_SERVICE, method, body, trace_metadata())
        return self.checker.reply(request, Finality.FINAL, replica, data)

    def _provisional(self, request: Request, metadata: Metadata) -> Answer:
        """Ask every replica; a FINAL answer, or f + 1 matching PROVISIONAL ones."""
        body = create_body(request, Finality.PROVISIONAL)
        method = create_method(request.operation)
        outcomes: queue.Queue[tuple[int, grpc.Future[bytes]]] = queue.Queue()
        calls = []
        for replica, channel in enumerate(self.channels):
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                f"/{LEDGER_SERVICE}/{method}"
            )
            future = call.future(body, timeout=self.timeout_s, metadata=metadata)
            future.add_done_callback(functools.partial(lambda r, f: outcomes.put((r, f)), replica))
            calls.append(future)
        tally = ProvisionalTally(self.checker, request)
        try:
            for _ in range(len(self.channels)):
                replica, done = outcomes.get()
                error = done.exception()
                answer = tally.add(replica, done.result() if error is None else error)
                if answer is not None:
                    return answer
        finally:
            for future in calls:
                future.cancel()
        raise tally.failed()

    # ---------------------------------------------------------------- reading

    def lookup_accounts(self, ids: Sequence[int], replica: int | None = None) -> list[Account]:
        return decode_accounts(self._read("LookupAccounts", lookup_body(ids), replica))

    def lookup_transfers(self, ids: Sequence[int], replica: int | None = None) -> list[Transfer]:
        return decode_transfers(self._read("LookupTransfers", lookup_body(ids), replica))

    def get_account_transfers(
        self, query: AccountFilter, replica: int | None = None
    ) -> list[Transfer]:
        return decode_transfers(self._read("GetAccountTransfers", encode_filter(query), replica))

    def get_account_balances(
        self, query: AccountFilter, replica: int | None = None
    ) -> list[AccountBalance]:
        return decode_balances(self._read("GetAccountBalances", encode_filter(query), replica))

    def _read(self, method: str, body: bytes, replica: int | None) -> bytes:
        metadata = self.checker.read_metadata()
        if replica is None:
            return self._call_any(LEDGER_SERVICE, method, body, metadata)[1]
        return self._call(replica, LEDGER_SERVICE, method, body, metadata)

    def watch_commits(self, after_height: int, replica: int) -> Generator[DecidedBlock, None, None]:
        """FINAL blocks above ``after_height`` from ``replica``, each checked: its commit
        certificate, its body against its header, its parent against the one before.
        Runs until the stream ends (``ClientError``) or the caller stops iterating."""
        call: grpc.UnaryStreamMultiCallable[bytes, bytes] = self.channels[replica].unary_stream(
            f"/{LEDGER_SERVICE}/WatchCommits"
        )
        stream = call(after_height.to_bytes(8, "little"))
        previous: BlockHeader | None = None
        try:
            for data in stream:
                decided = self.checker.block(replica, data, previous)
                previous = decided.block.header
                yield decided
        except grpc.RpcError as error:
            raise call_error(error, replica, "WatchCommits") from None
        finally:
            stream.cancel()

    def status(self, replica: int) -> dict[str, object]:
        return decode_status(self._call(replica, ADMIN_SERVICE, "Status", b""))

    # ---------------------------------------------------------------- plumbing

    def _call(
        self, replica: int, service: str, method: str, body: bytes, metadata: Metadata = ()
    ) -> bytes:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self.channels[replica].unary_unary(
            f"/{service}/{method}"
        )
        try:
            answer = call(body, timeout=self.timeout_s, metadata=metadata)
        except grpc.RpcError as error:
            raise call_error(error, replica, method) from None
        assert isinstance(answer, bytes)
        return answer

    def _call_any(
        self, service: str, method: str, body: bytes, metadata: Metadata = ()
    ) -> tuple[int, bytes]:
        """Ask replicas in turn until one answers; retry only what is safe to retry."""
        failures: list[str] = []
        for replica in retry_order(self._preferred, len(self.channels)):
            try:
                answer = self._call(replica, service, method, body, metadata)
            except ClientError as error:
                note_failure(error, failures)
                continue
            self._preferred = replica
            return replica, answer
        raise no_replica_answered(failures, len(self.channels))
