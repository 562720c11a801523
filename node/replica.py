"""One replica process: WAL recovery, the driver, the transport and the client API on
one mutual-TLS gRPC port, and a clean stop on SIGINT/SIGTERM.

Guarantees: nothing listens before recovery finished; recovery starts from the
newest valid WAL snapshot and logs every damage it found (as warnings); a log
whose acknowledged records are damaged is repaired to its longest valid prefix
and the replica starts fenced (``[tuning] wal_repair``, on by default; off, the
start is refused and the message says what to do); the health service says
SERVING only while the driver runs; on a stop signal the server stops taking
calls (a grace period lets answers in flight finish), the driver stops between
rounds, links close and the WAL is closed, so every acknowledged record is on
disk.  A failure of the driver (an assertion in the core: our bug) ends the
process with a non-zero status after the same clean-up.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
from typing import Final

import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from node.config import NodeConfig
from node.driver import Driver, decode_replay_state, replay_state_problem
from node.service import ADMIN_SERVICE, LEDGER_SERVICE, ClientService
from node.transport import PEER_SERVICE, Transport, grpc_options, server_credentials
from node.wal import WalCorruption, WalError, WriteAheadLog

STOP_GRACE_S: Final = 2.0
log = logging.getLogger("aegis.node")


class StartError(RuntimeError):
    """The replica cannot start: the message says why and what to do."""


def open_wal(config: NodeConfig) -> tuple[WriteAheadLog, Driver]:
    """Recover the replica's WAL (newest valid snapshot + later records) into a driver."""
    try:
        wal, recovered, report = WriteAheadLog.open(
            config.data_dir,
            repair=config.tuning.wal_repair,
            snapshot_problem=replay_state_problem,
        )
    except WalCorruption as error:
        raise StartError(
            f"write-ahead log in {config.data_dir}: {error}.  Nothing was changed.  To "
            "recover, set wal_repair = true under [tuning] in the replica's config: the "
            "log is cut back to its longest valid prefix (the rest is kept aside as "
            "*.damaged-* files) and the replica casts no vote until it has caught up "
            "from its peers"
        ) from None
    except WalError as error:
        raise StartError(f"write-ahead log in {config.data_dir}: {error}") from None
    damaged = bool(
        report.torn_tail or report.repaired or report.snapshots_rejected or report.amnesia
    )
    for line in report.lines():
        log.log(logging.WARNING if damaged else logging.INFO, "replica %d: %s",
                config.replica_id, line)  # fmt: skip
    records = list(recovered.records)
    if recovered.snapshot is not None:
        records = decode_replay_state(recovered.snapshot.state) + records  # checked on open
    return wal, Driver(config, wal, records, amnesia=recovered.amnesia)


async def serve(config: NodeConfig, stop: asyncio.Event) -> None:
    """Run the replica until ``stop`` is set (or the driver fails)."""
    wal, driver = open_wal(config)
    try:
        await _serve(config, driver, stop)
    finally:
        wal.close()


async def _serve(config: NodeConfig, driver: Driver, stop: asyncio.Event) -> None:
    transport = Transport(
        cluster=config.cluster,
        replica_id=config.replica_id,
        addresses={p.id: p.address for p in config.replicas},
        tls=config.tls,
        tuning=config.tuning,
        inbound=driver.inbound,
        rng=random.Random(),
    )
    driver.transport = transport
    server = grpc.aio.server(options=grpc_options())
    server.add_generic_rpc_handlers((transport.handler(), *ClientService(driver).handlers()))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        server.add_secure_port(config.listen, server_credentials(config.tls))
    except RuntimeError as error:
        raise StartError(f"cannot listen on {config.listen}: {error}") from None
    await server.start()
    transport.start()
    running = asyncio.create_task(driver.run(), name="driver")
    serving = health_pb2.HealthCheckResponse.SERVING
    for service in ("", LEDGER_SERVICE, ADMIN_SERVICE, PEER_SERVICE):
        await health_servicer.set(service, serving)
    log.info("replica %d of %s listening on %s", config.replica_id, config.cluster, config.listen)
    stopping = asyncio.create_task(stop.wait(), name="stop")
    try:
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await health_servicer.enter_graceful_shutdown()
        await server.stop(STOP_GRACE_S)
        driver.stop()
        stopping.cancel()
        # Never cancelled: a round ends soon after the flag, and cancelling one inside its
        # WAL append would let the WAL close under a write still running in its thread.
        await asyncio.wait({running})
        await transport.close()
    failure = running.exception() if running.done() and not running.cancelled() else None
    if failure is not None:
        raise failure
    log.info("replica %d stopped", config.replica_id)


def run(config: NodeConfig) -> int:
    """``aegis node start``: serve until SIGINT or SIGTERM; the exit status."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, stop.set)
        await serve(config, stop)

    try:
        asyncio.run(main())
    except StartError as error:
        log.error("%s", error)
        return 1
    return 0
