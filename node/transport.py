"""Replica-to-replica transport: mutual-TLS gRPC streams carrying batched frames.

Guarantees:

* Every connection is mutual TLS against the cluster CA.  A replica dials peer
  ``j`` with TLS target name ``replica-j``, which only ``j``'s certificate
  carries, so the handshake proves whom it reached.  A stream is accepted only
  from a certificate naming a replica of this cluster other than this one, and
  only if the replica id the dialer claims (``aegis-replica`` metadata) is the
  one its certificate names; otherwise the call ends with PERMISSION_DENIED or
  UNAUTHENTICATED naming the problem.
* Each replica keeps one long-lived outbound stream per peer (gRPC
  client-streaming ``/aegis.v1.Peer/Frames``); a frame carries every message
  queued for that peer since the last frame, up to ``frame_messages_max``
  messages and, softly, ``frame_bytes_max`` bytes.  A frame is a sequence of
  u32 big-endian length + ``consensus.wire`` encoding of one message; nothing
  else is invented for consensus messages.
* Bounded: per-peer outbound queues drop (and count) messages beyond
  ``outbound_messages_max`` (the protocol retransmits: links are lossy anyway);
  the inbound queue to the driver holds ``inbound_frames_max`` frames and then
  pushes back on the senders through gRPC flow control.
* Remote input never crashes the replica: a malformed frame ends that stream
  with INVALID_ARGUMENT; an undecodable message, or one whose ``sender`` is not
  the authenticated peer, is dropped, counted and logged.  Dropped streams are
  re-dialled with exponential backoff (``BACKOFF_MIN_S`` .. ``BACKOFF_MAX_S``,
  with jitter).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import struct
import time
import typing
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias

import grpc
import grpc.aio

from consensus.messages import FallbackMessage, PeerMessage, Request
from consensus.wire import WIRE_BYTES_MAX, WireError, decode_one_of
from node import certs
from node.config import TlsFiles, Tuning

PEER_SERVICE: Final = "aegis.v1.Peer"
FRAMES_METHOD: Final = f"/{PEER_SERVICE}/Frames"
CLAIM_METADATA: Final = "aegis-replica"
GRPC_MESSAGE_BYTES_MAX: Final = WIRE_BYTES_MAX + 16 * 1024 * 1024  # one frame, with headroom
BACKOFF_MIN_S: Final = 0.05
BACKOFF_MAX_S: Final = 2.0
CONNECT_TIMEOUT_S: Final = 5.0
_LENGTH = struct.Struct(">I")

PeerInput: TypeAlias = PeerMessage | FallbackMessage | Request
PEER_INPUT_TYPES: Final[tuple[type, ...]] = (
    *typing.get_args(PeerMessage),
    *typing.get_args(FallbackMessage),
    Request,
)
log = logging.getLogger("aegis.transport")


class FrameError(ValueError):
    """Bytes that are not a frame of length-prefixed messages."""


def encode_frame(payloads: Sequence[bytes]) -> bytes:
    assert payloads, "a frame carries at least one message"
    parts: list[bytes] = []
    for payload in payloads:
        assert 0 < len(payload) <= WIRE_BYTES_MAX
        parts += (_LENGTH.pack(len(payload)), payload)
    return b"".join(parts)


def split_frame(frame: bytes, messages_max: int) -> list[bytes]:
    """The messages of a frame; ``FrameError`` naming the offset of the first problem."""
    if not frame:
        raise FrameError("empty frame")
    payloads: list[bytes] = []
    offset = 0
    while offset < len(frame):
        if len(payloads) == messages_max:
            raise FrameError(f"more than {messages_max} messages in one frame")
        if len(frame) - offset < _LENGTH.size:
            raise FrameError(f"truncated length at offset {offset}")
        (length,) = _LENGTH.unpack_from(frame, offset)
        offset += _LENGTH.size
        if not 0 < length <= WIRE_BYTES_MAX:
            raise FrameError(f"message length {length} at offset {offset - 4} is out of bounds")
        if length > len(frame) - offset:
            raise FrameError(f"message at offset {offset} needs {length} bytes, has fewer")
        payloads.append(frame[offset : offset + length])
        offset += length
    return payloads


def grpc_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES_MAX),
        ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES_MAX),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # A second process started on a replica's port must fail, not share the port.
        ("grpc.so_reuseport", 0),
        # gRPC's own reconnect backoff starts at 1 s; a replica that comes up a moment
        # after its peers should be reached sooner (our loop adds its own backoff).
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", int(BACKOFF_MAX_S * 1000)),
    ]


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """Mutual TLS: a client certificate signed by the cluster CA is required."""
    return grpc.ssl_server_credentials(
        [(tls.key, tls.cert)], root_certificates=tls.ca_cert, require_client_auth=True
    )


def secure_channel(tls: TlsFiles, address: str, replica_id: int) -> grpc.aio.Channel:
    """An mTLS channel to replica ``replica_id``, which must prove it is that replica."""
    credentials = grpc.ssl_channel_credentials(tls.ca_cert, tls.key, tls.cert)
    options: list[tuple[str, int | str]] = [*grpc_options()]
    options.append(("grpc.ssl_target_name_override", certs.server_name(replica_id)))
    return grpc.aio.secure_channel(address, credentials, options=options)


def peer_identity(context: grpc.aio.ServicerContext[bytes, bytes]) -> certs.Identity | str:
    """The verified identity of the caller, or why there is none."""
    properties = context.auth_context()
    pem = list(properties.get("x509_pem_cert", ()))
    if not pem:
        return "no client certificate"
    return _identity_of_pem(pem[0])


@functools.lru_cache(maxsize=1024)
def _identity_of_pem(pem: bytes) -> certs.Identity | str:
    """``certs.identity_of``, remembered per certificate: it is a pure function of the
    bytes (TLS has already verified the chain), and parsing the certificate on every
    client call took about 5 % of the leader's sampled time with 10-transfer requests
    (bench/README.md, session 15)."""
    try:
        return certs.identity_of(pem)
    except certs.CertificateError as error:
        return str(error)


@dataclass(frozen=True, slots=True)
class Received:
    sender: int  # the authenticated replica
    messages: tuple[PeerInput, ...]


Inbound: TypeAlias = Received | Request  # what the driver steps: peer frames, client requests


@dataclass(slots=True)
class PeerStats:
    connected: bool = False
    frames_sent: int = 0
    messages_sent: int = 0
    messages_dropped: int = 0  # outbound queue full, or lost with a broken stream
    frames_received: int = 0
    messages_received: int = 0
    messages_rejected: int = 0  # undecodable, or not from the authenticated sender
    connects: int = 0
    last_error: str = ""


@dataclass(slots=True)
class _Outbound:
    queue: asyncio.Queue[bytes]
    stats: PeerStats = field(default_factory=PeerStats)


class Transport:
    """One replica's links to its peers.  Add ``handler()`` to the replica's gRPC server,
    then ``start()``; ``send`` takes wire-encoded messages; received ones go to ``inbound``."""

    def __init__(
        self,
        *,
        cluster: str,
        replica_id: int,
        addresses: dict[int, str],  # every replica, this one included
        tls: TlsFiles,
        tuning: Tuning,
        inbound: asyncio.Queue[Inbound],
        rng: random.Random,
    ) -> None:
        assert replica_id in addresses
        self.cluster = cluster
        self.id = replica_id
        self.addresses = addresses
        self.tls = tls
        self.tuning = tuning
        self.inbound = inbound
        self.rng = rng
        self.peers = {
            peer: _Outbound(asyncio.Queue(maxsize=tuning.outbound_messages_max))
            for peer in addresses
            if peer != replica_id
        }
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    # ---------------------------------------------------------------- sending

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            PEER_SERVICE, {"Frames": grpc.stream_unary_rpc_method_handler(self._serve_frames)}
        )

    def start(self) -> None:
        assert not self._tasks
        for peer in self.peers:
            self._tasks.append(asyncio.create_task(self._dial(peer), name=f"peer-{peer}"))

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def send(self, to: int | None, payload: bytes) -> None:
        """Queue one encoded message for ``to`` (None: every peer); never blocks."""
        targets = self.peers if to is None else (to,)
        for peer in targets:
            outbound = self.peers.get(peer)
            if outbound is None:
                continue  # the core never addresses itself or a stranger; stay calm if it did
            try:
                outbound.queue.put_nowait(payload)
            except asyncio.QueueFull:
                outbound.stats.messages_dropped += 1

    def queue_depths(self) -> dict[int, int]:
        """Messages queued for each peer (read by telemetry, from any thread)."""
        return {peer: outbound.queue.qsize() for peer, outbound in self.peers.items()}

    async def _frames(self, outbound: _Outbound) -> AsyncIterator[bytes]:
        queue = outbound.queue
        while True:
            payloads = [await queue.get()]
            size = len(payloads[0])
            while (
                not queue.empty()
                and len(payloads) < self.tuning.frame_messages_max
                and size < self.tuning.frame_bytes_max
            ):
                payloads.append(queue.get_nowait())
                size += len(payloads[-1])
            outbound.stats.frames_sent += 1
            outbound.stats.messages_sent += len(payloads)
            yield encode_frame(payloads)

    async def _dial(self, peer: int) -> None:
        outbound = self.peers[peer]
        backoff = BACKOFF_MIN_S
        while not self._closing:
            channel = secure_channel(self.tls, self.addresses[peer], peer)
            started = time.monotonic()
            try:
                await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT_S)
                outbound.stats.connected = True
                outbound.stats.connects += 1
                stream: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(
                    FRAMES_METHOD
                )
                await stream(self._frames(outbound), metadata=((CLAIM_METADATA, str(self.id)),))
                outbound.stats.last_error = "stream closed by the peer"
            except TimeoutError:
                self._failed(peer, f"cannot connect within {CONNECT_TIMEOUT_S} s")
            except grpc.aio.AioRpcError as error:
                self._failed(peer, f"{error.code().name}: {error.details()}")
            finally:
                outbound.stats.connected = False
                await channel.close()
            if time.monotonic() - started > BACKOFF_MAX_S:
                backoff = BACKOFF_MIN_S  # it was up for a while: this is a fresh failure
            await asyncio.sleep(backoff * (0.5 + self.rng.random()))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def _failed(self, peer: int, why: str) -> None:
        stats = self.peers[peer].stats
        if why != stats.last_error and not self._closing:  # log changes, not every retry
            log.warning("replica %d -> %d: %s", self.id, peer, why)
        stats.last_error = why

    # ---------------------------------------------------------------- receiving

    async def _authenticate(self, context: grpc.aio.ServicerContext[bytes, bytes]) -> int:
        identity = peer_identity(context)
        if isinstance(identity, str):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"peer stream: {identity}")
            raise AssertionError("abort returns only by raising")
        if identity.kind != "replica" or identity.cluster != self.cluster:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"peer stream: the certificate names {identity}, not a replica of "
                f"cluster {self.cluster}",
            )
        if identity.id == self.id or identity.id not in self.addresses:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"peer stream: {identity} is not a peer of replica {self.id}",
            )
        claims = [v for k, v in context.invocation_metadata() or () if k == CLAIM_METADATA]
        if claims != [str(identity.id)]:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"peer stream: the certificate names replica {identity.id} but the stream "
                f"claims {', '.join(map(str, claims)) or 'no replica id'}",
            )
        return identity.id

    async def _serve_frames(
        self, frames: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> bytes:
        sender = await self._authenticate(context)
        stats = self.peers[sender].stats
        async for frame in frames:
            try:
                payloads = split_frame(frame, self.tuning.frame_messages_max)
            except FrameError as error:
                log.warning("replica %d: bad frame from %d: %s", self.id, sender, error)
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad frame: {error}")
            messages = []
            for index, payload in enumerate(payloads):
                problem = None
                try:
                    message = decode_one_of(payload, PEER_INPUT_TYPES)
                except WireError as error:
                    problem = f"message {index}: {error}"
                else:
                    assert isinstance(message, PEER_INPUT_TYPES)
                    claimed = getattr(message, "sender", sender)  # a relayed Request has none
                    if claimed != sender:
                        problem = f"message {index} claims sender {claimed}"
                if problem is not None:
                    stats.messages_rejected += 1
                    log.warning("replica %d: dropped from %d: %s", self.id, sender, problem)
                    continue
                messages.append(typing.cast(PeerInput, message))
            stats.frames_received += 1
            stats.messages_received += len(messages)
            if messages:
                await self.inbound.put(Received(sender, tuple(messages)))
        return b""
