"""The replica transport over real loopback sockets: batching, mTLS identities, bad input."""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest

from consensus.messages import FetchBlocks
from consensus.wire import encode
from node.config import NodeConfig, TlsFiles, init_cluster, load_node_config
from node.transport import (
    CLAIM_METADATA,
    FRAMES_METHOD,
    FrameError,
    Inbound,
    Received,
    Transport,
    encode_frame,
    grpc_options,
    secure_channel,
    server_credentials,
    split_frame,
)


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("transport")
    init_cluster(base / "a", replicas=4)
    init_cluster(base / "b", replicas=4)  # same name, other CA: a stranger
    return base / "a", base / "b"


def _config(directory: Path, replica: int) -> NodeConfig:
    return load_node_config(directory / f"replica-{replica}" / "node.toml")


def _tls(directory: Path, owner: str) -> TlsFiles:
    return TlsFiles(
        ca_cert=(directory / "ca.crt").read_bytes(),
        cert=(directory / owner / "tls.crt").read_bytes(),
        key=(directory / owner / "tls.key").read_bytes(),
    )


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.inbound: asyncio.Queue[Inbound] = asyncio.Queue(maxsize=64)
        self.transport = Transport(
            cluster=config.cluster,
            replica_id=config.replica_id,
            addresses={p.id: p.address for p in config.replicas},
            tls=config.tls,
            tuning=config.tuning,
            inbound=self.inbound,
            rng=random.Random(config.replica_id),
        )
        self.server = grpc.aio.server(options=grpc_options())

    async def start(self, dial: bool = True) -> None:
        self.server.add_generic_rpc_handlers((self.transport.handler(),))
        self.server.add_secure_port(self.config.listen, server_credentials(self.config.tls))
        await self.server.start()
        if dial:
            self.transport.start()

    async def stop(self) -> None:
        await self.transport.close()
        await self.server.stop(0)

    async def received(self, count: int, timeout_s: float = 10) -> list[Received]:
        frames: list[Received] = []
        while sum(len(f.messages) for f in frames) < count:
            item = await asyncio.wait_for(self.inbound.get(), timeout_s)
            assert isinstance(item, Received)
            frames.append(item)
        return frames


def _run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 60))


def _fetch(sender: int, height: int) -> bytes:
    return encode(FetchBlocks(sender=sender, after_height=height))


def test_two_transports_exchange_batched_frames(clusters: tuple[Path, Path]) -> None:
    async def test() -> None:
        zero, one = Node(_config(clusters[0], 0)), Node(_config(clusters[0], 1))
        await zero.start()
        await one.start()
        try:
            for height in range(5000):
                zero.transport.send(1, _fetch(0, height))
            for height in range(100):
                one.transport.send(None, _fetch(1, height))  # None: every peer
            at_one = await one.received(5000)
            at_zero = await zero.received(100)
        finally:
            await zero.stop()
            await one.stop()
        messages = [m for frame in at_one for m in frame.messages]
        assert {frame.sender for frame in at_one} == {0}
        assert [m.after_height for m in messages] == list(range(5000))  # type: ignore[union-attr]
        assert len(at_one) < 100, "5000 messages must travel in a few frames"
        assert sum(len(f.messages) for f in at_zero) == 100
        stats = zero.transport.peers[1].stats
        assert stats.messages_sent == 5000 and stats.frames_sent == len(at_one)

    _run(test)


def test_a_full_outbound_queue_drops_and_counts(clusters: tuple[Path, Path]) -> None:
    async def test() -> None:
        zero = Node(_config(clusters[0], 0))  # not started: nothing drains the queues
        bound = zero.config.tuning.outbound_messages_max
        for height in range(bound + 10):
            zero.transport.send(2, _fetch(0, height))
        assert zero.transport.peers[2].queue.qsize() == bound
        assert zero.transport.peers[2].stats.messages_dropped == 10

    _run(test)


async def _stream(
    tls: TlsFiles, address: str, claim: str, frames: list[bytes], target: int = 0
) -> None:
    async def source() -> AsyncIterator[bytes]:
        for frame in frames:
            yield frame

    channel = secure_channel(tls, address, target)
    try:
        call: grpc.aio.StreamUnaryMultiCallable[bytes, bytes] = channel.stream_unary(FRAMES_METHOD)
        await call(source(), metadata=((CLAIM_METADATA, claim),), timeout=10)
    finally:
        await channel.close()


def test_bad_messages_are_dropped_and_a_bad_frame_ends_only_its_stream(
    clusters: tuple[Path, Path],
) -> None:
    async def test() -> None:
        zero = Node(_config(clusters[0], 0))
        await zero.start(dial=False)
        address = zero.config.listen
        tls = _tls(clusters[0], "replica-1")
        try:
            mixed = encode_frame([_fetch(2, 7), b"\x01\xff garbage", _fetch(1, 8)])
            await _stream(tls, address, "1", [mixed])
            (frame,) = await zero.received(1)
            assert frame.sender == 1 and [m.after_height for m in frame.messages] == [8]  # type: ignore[union-attr]
            assert zero.transport.peers[1].stats.messages_rejected == 2
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _stream(tls, address, "1", [b"\x00\x00"])
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "bad frame: truncated length at offset 0" in str(caught.value.details())
            await _stream(tls, address, "1", [encode_frame([_fetch(1, 9)])])  # still serving
            (frame,) = await zero.received(1)
            assert frame.messages[0].after_height == 9  # type: ignore[union-attr]
        finally:
            await zero.stop()

    _run(test)


@pytest.mark.parametrize(
    ("owner", "claim", "code", "details"),
    [
        ("replica-1", "2", "PERMISSION_DENIED", "names replica 1 but the stream claims 2"),
        ("replica-1", "", "PERMISSION_DENIED", "names replica 1 but the stream claims "),
        ("client-0", "1", "PERMISSION_DENIED", "names client 0 of cluster local, not a replica"),
        ("replica-0", "0", "PERMISSION_DENIED", "replica 0 of cluster local is not a peer"),
    ],
)
def test_a_stream_must_come_from_the_replica_it_claims(
    clusters: tuple[Path, Path], owner: str, claim: str, code: str, details: str
) -> None:
    async def test() -> None:
        zero = Node(_config(clusters[0], 0))
        await zero.start(dial=False)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                frame = encode_frame([_fetch(1, 1)])
                await _stream(_tls(clusters[0], owner), zero.config.listen, claim, [frame])
        finally:
            await zero.stop()
        assert caught.value.code().name == code
        assert details in str(caught.value.details())
        assert zero.inbound.empty()

    _run(test)


def test_a_dialer_checks_the_server_is_the_replica_it_meant(clusters: tuple[Path, Path]) -> None:
    """Replica 0's server is dialled as if it were replica 2: the TLS name does not match."""

    async def test() -> None:
        zero = Node(_config(clusters[0], 0))
        await zero.start(dial=False)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                frame = encode_frame([_fetch(1, 1)])
                tls = _tls(clusters[0], "replica-1")
                await _stream(tls, zero.config.listen, "1", [frame], target=2)
        finally:
            await zero.stop()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert zero.inbound.empty()

    _run(test)


def _probe(address: str, ca: Path, owner: Path | None, tls_max: ssl.TLSVersion | None) -> str:
    """A raw TLS client: the protocol version and whether the server then talks HTTP/2."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    if tls_max is not None:
        context.maximum_version = tls_max
    if owner is not None:
        context.load_cert_chain(owner / "tls.crt", owner / "tls.key")
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="replica-0") as tls:
                version = tls.version()
                try:
                    settings = tls.recv(9)  # the server's HTTP/2 SETTINGS frame header
                except (ssl.SSLError, OSError) as error:
                    return f"{version} refused after handshake: {type(error).__name__}"
                if not settings:
                    return f"{version} refused after handshake: closed"
                talks = settings[3:4] == bytes((4,))  # frame type 4: SETTINGS
                return f"{version} {'talks' if talks else 'silent'}"
        except (ssl.SSLError, OSError) as error:
            return f"handshake failed: {type(error).__name__}"


def test_tls13_with_a_cluster_certificate_only(clusters: tuple[Path, Path]) -> None:
    a, b = clusters

    async def test() -> None:
        zero = Node(_config(a, 0))
        await zero.start(dial=False)
        address = zero.config.listen
        try:
            own = await asyncio.to_thread(_probe, address, a / "ca.crt", a / "replica-1", None)
            old = await asyncio.to_thread(
                _probe, address, a / "ca.crt", a / "replica-1", ssl.TLSVersion.TLSv1_2
            )
            stranger = await asyncio.to_thread(_probe, address, a / "ca.crt", b / "replica-1", None)
            anonymous = await asyncio.to_thread(_probe, address, a / "ca.crt", None, None)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _stream(_tls(b, "replica-1"), address, "1", [encode_frame([_fetch(1, 1)])])
        finally:
            await zero.stop()
        assert own == "TLSv1.3 talks"
        assert old.startswith("handshake failed")  # TLS 1.2 is refused
        # TLS 1.3 clients learn of a refused certificate only on their first read.
        assert stranger.startswith("TLSv1.3 refused") or stranger.startswith("handshake failed")
        assert anonymous.startswith("TLSv1.3 refused") or anonymous.startswith("handshake failed")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert zero.inbound.empty()

    _run(test)


def test_split_frame_bounds_and_errors() -> None:
    payloads = [b"a", b"bc" * 100, b"d"]
    assert split_frame(encode_frame(payloads), 3) == payloads
    with pytest.raises(FrameError, match="more than 2 messages"):
        split_frame(encode_frame(payloads), 2)
    with pytest.raises(FrameError, match="empty frame"):
        split_frame(b"", 3)
    with pytest.raises(FrameError, match="length 0 at offset 0 is out of bounds"):
        split_frame(b"\x00\x00\x00\x00", 3)
    with pytest.raises(FrameError, match="needs 5 bytes, has fewer"):
        split_frame(b"\x00\x00\x00\x05abc", 3)
