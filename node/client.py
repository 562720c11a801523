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
* Tracing: each create call (and ``await_final``) is a CLIENT span of the tracer
  provider given, else OpenTelemetry's global one (a no-op until the application
  configures an SDK); its W3C ``traceparent`` goes in the gRPC metadata of every
  attempt, so the replicas' SERVER spans join the same trace (``node.telemetry``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Final, TypeAlias

import grpc
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
from node.service import ADMIN_SERVICE, ID_BYTES, LEDGER_SERVICE, encode_filter
from node.transport import GRPC_MESSAGE_BYTES_MAX

Metadata: TypeAlias = tuple[tuple[str, str], ...]

RETRYABLE: Final = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


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
        self.signer = Ed25519Signer(config.signing_key)
        self.verifier = Ed25519Verifier({p.id: p.public_key for p in config.replicas})
        credentials = grpc.ssl_channel_credentials(
            config.tls.ca_cert, config.tls.key, config.tls.cert
        )
        self.channels = [
            grpc.secure_channel(
                peer.address,
                credentials,
                options=[
                    ("grpc.ssl_target_name_override", certs.server_name(peer.id)),
                    ("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES_MAX),
                    ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES_MAX),
                ],
            )
            for peer in config.replicas
        ]
        self._lock = threading.Lock()
        self._last_number = 0
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
        if level not in (Finality.PROVISIONAL, Finality.FINAL):
            raise ClientError(f"cannot wait for {level.name}: not reachable yet")
        with self._lock:
            self._last_number = max(self._last_number + 1, time.time_ns())
            unsigned = Request(
                client_id=self.config.client_id,
                request_number=self._last_number,
                transfers=records,
                operation=operation,
            )
            request = dataclasses.replace(unsigned, signature=self.signer.sign(canonical(unsigned)))
            method = "CreateAccounts" if operation == OP_CREATE_ACCOUNTS else "CreateTransfers"
            body = bytes((level,)) + encode(request)
            with self._span(method, request, level) as span:
                metadata = _trace_metadata()
                if level == Finality.PROVISIONAL:
                    answer = self._provisional(request, method, body, metadata)
                else:
                    replica, data = self._call_any(LEDGER_SERVICE, method, body, metadata)
                    answer = self._checked(request, level, replica, data)
                _annotate(span, answer)
                return answer

    def _span(self, method: str, request: Request, level: Finality) -> AbstractContextManager[Span]:
        """The CLIENT span of one create call, current while it runs (so it is injected)."""
        return self.tracer.start_as_current_span(
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
        request = answer.request
        method = "CreateAccounts" if request.operation == OP_CREATE_ACCOUNTS else "CreateTransfers"
        body = bytes((Finality.FINAL,)) + encode(request)
        with self._span(method, request, Finality.FINAL) as span:
            replica, data = self._call_any(LEDGER_SERVICE, method, body, _trace_metadata())
            final = self._checked(request, Finality.FINAL, replica, data)
            _annotate(span, final)
            return final

    def _provisional(
        self, request: Request, method: str, body: bytes, metadata: Metadata
    ) -> Answer:
        """Ask every replica; a FINAL answer, or f + 1 matching PROVISIONAL ones."""
        count = len(self.channels)
        needed = (count - 1) // 3 + 1
        outcomes: queue.Queue[tuple[int, grpc.Future[bytes]]] = queue.Queue()
        calls = []
        for replica, channel in enumerate(self.channels):
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                f"/{LEDGER_SERVICE}/{method}"
            )
            future = call.future(body, timeout=self.timeout_s, metadata=metadata)
            future.add_done_callback(functools.partial(lambda r, f: outcomes.put((r, f)), replica))
            calls.append(future)
        votes: dict[tuple[bytes, tuple[int, ...]], int] = {}
        failures = []
        try:
            for _ in range(count):
                replica, done = outcomes.get()
                try:
                    answer = self._checked(request, Finality.PROVISIONAL, replica, done.result())
                except (grpc.RpcError, ClientError) as error:
                    failures.append(f"replica {replica}: {error}")
                    continue
                if answer.level == Finality.FINAL:
                    return answer  # the certificate alone proves it
                key = (answer.header.digest, answer.codes)
                votes[key] = votes.get(key, 0) + 1
                if votes[key] == needed:
                    return answer
        finally:
            for future in calls:
                future.cancel()
        raise ClientError(
            f"no FINAL answer and no {needed} matching PROVISIONAL ones: {'; '.join(failures)}",
            grpc.StatusCode.UNAVAILABLE,
        )

    def _checked(self, request: Request, level: Finality, replica: int, data: bytes) -> Answer:
        try:
            reply = decode_as(data, Reply)
        except WireError as error:
            raise ClientError(f"replica {replica} answered garbage: {error}") from None
        if digest_of(reply.results) != reply.header.results_hash:
            raise ClientError(f"replica {replica}: the results do not match the block header")
        if reply.level < level:
            raise ClientError(f"replica {replica} answered {reply.level.name}, not {level.name}")
        if reply.level == Finality.FINAL:
            certificate = reply.certificate
            if (
                certificate is None
                or certificate.digest != reply.header.digest
                or not certificates.verify(certificate, self.verifier, len(self.config.replicas))
            ):
                raise ClientError(f"replica {replica}: the commit certificate does not verify")
        for client, number, codes in reply.results:
            if (client, number) == request.key:
                if len(codes) != request.events:
                    raise ClientError(f"replica {replica}: {len(codes)} codes for "
                                      f"{request.events} events")  # fmt: skip
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

    # ---------------------------------------------------------------- reading

    def lookup_accounts(self, ids: Sequence[int], replica: int | None = None) -> list[Account]:
        return decode_accounts(self._lookup("LookupAccounts", ids, replica))

    def lookup_transfers(self, ids: Sequence[int], replica: int | None = None) -> list[Transfer]:
        return decode_transfers(self._lookup("LookupTransfers", ids, replica))

    def _lookup(self, method: str, ids: Sequence[int], replica: int | None) -> bytes:
        if not 1 <= len(ids) <= BATCH_EVENTS_MAX:
            raise ValueError(f"look up 1..{BATCH_EVENTS_MAX} ids at a time")
        body = b"".join(i.to_bytes(ID_BYTES, "little") for i in ids)
        if replica is None:
            return self._call_any(LEDGER_SERVICE, method, body)[1]
        return self._call(replica, LEDGER_SERVICE, method, body)

    def get_account_transfers(
        self, query: AccountFilter, replica: int | None = None
    ) -> list[Transfer]:
        return decode_transfers(self._filtered("GetAccountTransfers", query, replica))

    def get_account_balances(
        self, query: AccountFilter, replica: int | None = None
    ) -> list[AccountBalance]:
        data = self._filtered("GetAccountBalances", query, replica)
        return [decode_balance(data[i : i + 128], i // 128) for i in range(0, len(data), 128)]

    def _filtered(self, method: str, query: AccountFilter, replica: int | None) -> bytes:
        body = encode_filter(query)
        if replica is None:
            return self._call_any(LEDGER_SERVICE, method, body)[1]
        return self._call(replica, LEDGER_SERVICE, method, body)

    def watch_commits(self, after_height: int, replica: int) -> Iterator[DecidedBlock]:
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
                decided = self._checked_block(replica, data, previous)
                previous = decided.block.header
                yield decided
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else None
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            raise ClientError(f"replica {replica}: WatchCommits: {details}", code) from None
        finally:
            stream.cancel()

    def _checked_block(
        self, replica: int, data: bytes, previous: BlockHeader | None
    ) -> DecidedBlock:
        try:
            decided = decode_as(data, DecidedBlock)
        except WireError as error:
            raise ClientError(f"replica {replica} streamed garbage: {error}") from None
        block, certificate = decided.block, decided.certificate
        header = block.header
        if certificate.digest != block.digest or not certificates.verify(
            certificate, self.verifier, len(self.config.replicas)
        ):
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

    def status(self, replica: int) -> dict[str, object]:
        data = self._call(replica, ADMIN_SERVICE, "Status", b"")
        status = json.loads(data)
        assert isinstance(status, dict)
        return status

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
            code = error.code() if isinstance(error, grpc.Call) else None
            details = error.details() if isinstance(error, grpc.Call) else str(error)
            raise ClientError(f"replica {replica}: {method}: {details}", code) from None
        assert isinstance(answer, bytes)
        return answer

    def _call_any(
        self, service: str, method: str, body: bytes, metadata: Metadata = ()
    ) -> tuple[int, bytes]:
        """Ask replicas in turn until one answers; retry only what is safe to retry."""
        count = len(self.channels)
        failures = []
        for attempt in range(2 * count):
            replica = (self._preferred + attempt) % count
            try:
                answer = self._call(replica, service, method, body, metadata)
            except ClientError as error:
                if error.code not in RETRYABLE:
                    raise
                failures.append(str(error))
                continue
            self._preferred = replica
            return replica, answer
        raise ClientError("no replica answered: " + "; ".join(failures[-count:]),
                          grpc.StatusCode.UNAVAILABLE)  # fmt: skip


def _trace_metadata() -> Metadata:
    """The current trace context as gRPC metadata (W3C ``traceparent``; empty if none)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())


def _annotate(span: Span, answer: Answer) -> None:
    span.set_attributes({
        "aegis.replica.id": answer.replica,
        "aegis.finality": answer.level.name,
        "aegis.block.height": answer.height,
        "aegis.block.digest": answer.header.digest.hex(),
    })  # fmt: skip
