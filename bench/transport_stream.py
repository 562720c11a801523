"""Replica transport throughput: one mutual-TLS gRPC stream between two replicas.

Prints one JSON line:
  messages_per_second  wire-encoded consensus messages delivered to the receiver's queue
  frames_per_second    gRPC stream messages (frames) carrying them
  messages_per_frame   the batching the transport achieved
for ``--messages`` small messages (a FetchBlocks, 17 bytes encoded) sent as fast as
the queue takes them; ``--frame-messages-max 1`` shows the one-message-per-gRPC-call
ceiling that batching exists to avoid.  Never asserts a timing.

    python bench/transport_stream.py [--messages 200000] [--frame-messages-max 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import tempfile
import time
from pathlib import Path

import grpc.aio

import node  # noqa: F401  (before grpc: TLS 1.3 only, see node/__init__.py)
from consensus.messages import FetchBlocks
from consensus.wire import encode
from node.config import init_cluster, load_node_config
from node.transport import Inbound, Transport, grpc_options, server_credentials


async def _measure(directory: Path, messages: int, frame_messages_max: int) -> dict[str, float]:
    transports = []
    servers = []
    queues: list[asyncio.Queue[Inbound]] = []
    for replica in (0, 1):
        config = load_node_config(directory / f"replica-{replica}" / "node.toml")
        tuning = dataclasses.replace(
            config.tuning, frame_messages_max=frame_messages_max, outbound_messages_max=1 << 20
        )
        queues.append(asyncio.Queue(maxsize=tuning.inbound_frames_max))
        transport = Transport(
            cluster=config.cluster,
            replica_id=replica,
            addresses={p.id: p.address for p in config.replicas},
            tls=config.tls,
            tuning=tuning,
            inbound=queues[-1],
            rng=random.Random(replica),
        )
        server = grpc.aio.server(options=grpc_options())
        server.add_generic_rpc_handlers((transport.handler(),))
        server.add_secure_port(config.listen, server_credentials(config.tls))
        await server.start()
        transport.start()
        transports.append(transport)
        servers.append(server)
    payload = encode(FetchBlocks(sender=0, after_height=1))
    received = frames = 0
    started = time.perf_counter()
    for _ in range(messages):
        transports[0].send(1, payload)
    while received < messages:
        item = await asyncio.wait_for(queues[1].get(), 30)
        received += len(item.messages)  # type: ignore[union-attr]
        frames += 1
    elapsed = time.perf_counter() - started
    for transport in transports:
        await transport.close()
    for server in servers:
        await server.stop(0)
    return {
        "messages": messages,
        "frame_messages_max": frame_messages_max,
        "seconds": round(elapsed, 3),
        "messages_per_second": round(messages / elapsed),
        "frames_per_second": round(frames / elapsed),
        "messages_per_frame": round(messages / frames, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--frame-messages-max", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        init_cluster(Path(directory) / "c", replicas=4)
        figures = asyncio.run(
            _measure(Path(directory) / "c", args.messages, args.frame_messages_max)
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
