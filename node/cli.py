"""The ``aegis`` command line.

Sub-commands are added as the packages behind them are built; each one's
``--help`` says what it does and what it needs.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from node import demo

    if args.embedded:
        return demo.run_embedded(sys.stdout)
    if not 4 <= args.calls <= 10_000 or not 1 <= args.batch <= 8189:
        print("aegis demo: --calls must be in 4..10000 and --batch in 1..8189", file=sys.stderr)
        return 2
    options = demo.ClusterDemo(batches=args.calls, batch_transfers=args.batch)
    return demo.run_cluster(sys.stdout, sys.stderr, options)


def _cluster_init(args: argparse.Namespace) -> int:
    from node.config import ConfigError, init_cluster

    try:
        layout = init_cluster(
            args.dir, replicas=args.replicas, clients=args.clients, name=args.name, host=args.host
        )
    except ConfigError as error:
        print(f"aegis cluster init: {error}", file=sys.stderr)
        return 2
    replicas, clients = len(layout.node_configs), len(layout.client_configs)
    print(f"cluster {args.name!r} in {layout.directory}: {replicas} replicas, {clients} client(s)")
    for path in (*layout.node_configs, *layout.client_configs):
        print(f"  {path}")
    print(f"start it with: aegis cluster up --dir {layout.directory}")
    return 0


def _cluster_up(args: argparse.Namespace) -> int:
    from node import cluster
    from node.config import ConfigError

    try:
        return cluster.up(Path(args.dir), args.interval, sys.stdout)
    except (ConfigError, FileNotFoundError) as error:
        print(f"aegis cluster up: {error}", file=sys.stderr)
        return 2


def _node_start(args: argparse.Namespace) -> int:
    from node import replica
    from node.config import ConfigError, load_node_config

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        config = load_node_config(args.config)
    except ConfigError as error:
        print(f"aegis node start: {error}", file=sys.stderr)
        return 2
    return replica.run(config)


def _add_cluster_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cluster = commands.add_parser(
        "cluster",
        help="create a local cluster's keys and configs, run its replicas",
        description="Manage a cluster of replica processes on this machine.",
    )
    sub = cluster.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)
    init = sub.add_parser(
        "init",
        help="write a CA, certificates, signing keys and TOML configs for a loopback cluster",
        description="Writes DIR/ca.crt, DIR/replica-<i>/node.toml (+ TLS certificate, key, "
        "Ed25519 signing key, data/) and DIR/client-<c>/client.toml. Keys are 0600. "
        "Ports are free ones picked now. Client 0 is an operator (may set limits).",
    )
    init.add_argument("--dir", required=True, help="a new or empty directory")
    init.add_argument("--replicas", type=int, default=4, help="3f + 1 replicas (default 4)")
    init.add_argument("--clients", type=int, default=1, help="client identities (default 1)")
    init.add_argument("--name", default="local", help="the cluster's name (default local)")
    init.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    init.set_defaults(handler=_cluster_init)
    up = sub.add_parser(
        "up",
        help="start every replica of DIR as a process, show status, stop them on Ctrl-C",
        description="Starts 'aegis node start' for each DIR/replica-*/node.toml (logs in "
        "node.log beside it), prints mode, regency, height and lag of each replica every "
        "INTERVAL seconds, and on Ctrl-C (SIGINT) or SIGTERM stops the replicas by PID.",
    )
    up.add_argument("--dir", required=True, help="a directory made by 'aegis cluster init'")
    up.add_argument("--interval", type=float, default=2.0, help="seconds between status tables")
    up.set_defaults(handler=_cluster_up)

    node = commands.add_parser(
        "node",
        help="run one replica of a cluster",
        description="Run one replica process of the replicated ledger.",
    )
    node_sub = node.add_subparsers(dest="node_command", metavar="COMMAND", required=True)
    start = node_sub.add_parser(
        "start",
        help="run the replica a node.toml describes until SIGINT/SIGTERM",
        description="Recovers from the write-ahead log in the config's data_dir, then serves "
        "peers and clients over mutual TLS gRPC on its listen address until SIGINT/SIGTERM.",
    )
    start.add_argument("--config", required=True, help="the replica's node.toml")
    start.add_argument("--verbose", action="store_true", help="log every protocol trace line")
    start.set_defaults(handler=_node_start)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aegis",
        description=(
            "Aegis Ledger: a consensus-replicated double-entry payment ledger. "
            "Run 'aegis COMMAND --help' for each command."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="run a 4-replica cluster on this machine, crash its leader, check every transfer",
        description=(
            "Starts 4 replica processes on 127.0.0.1 (a fresh cluster in a temporary "
            "directory), opens 8 accounts and sends CALLS create calls of BATCH transfers "
            "one at a time, each waiting for FINAL, with a progress bar on stderr. Halfway "
            "it kills the BFT leader with SIGKILL and shows the regency change from each "
            "replica's status (mode, regency, height) while the transfers go on; then it "
            "restarts that replica. It ends with the exactly-once check: every acknowledged "
            "transfer is on every replica once, unaltered, and every balance is their sum "
            "(debits = credits). Prints a verdict; exits 0 if it passed, 1 if not (the "
            "cluster directory and logs are kept), 130 on Ctrl-C. Every process it starts "
            "is stopped before it exits. Takes about 20 s; needs no services."
        ),
        epilog="--embedded instead runs the scripted business day of the first version: "
        "one in-process ledger, no network, the same output on every run.",
    )
    demo.add_argument(
        "--embedded", action="store_true", help="the scripted day on an embedded ledger instead"
    )
    demo.add_argument(
        "--calls", type=int, default=100, help="create calls in the workload (default 100)"
    )
    demo.add_argument("--batch", type=int, default=50, help="transfers per call (default 50)")
    demo.set_defaults(handler=_demo)

    from sim import cli as sim_cli

    sim = commands.add_parser(
        "sim",
        help="deterministic BFT simulations: run a seed, fuzz many, list scenarios",
        description="Run the real replica cores under a seeded, faulty network with "
        "Byzantine replicas; every run checks agreement, validity, ledger invariants, "
        "state hashes, exactly-once and liveness.",
    )
    sim_cli.add_commands(sim.add_subparsers(dest="sim_command", metavar="COMMAND", required=True))
    _add_cluster_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "sim":
        from sim import cli as sim_cli

        return sim_cli.dispatch(args)
    status: int = args.handler(args)
    return status


def console_main() -> None:
    """Entry point of the ``aegis`` console script."""
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``aegis demo | head``): not an error of ours.
        # Point stdout at devnull so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 0
    sys.exit(status)


if __name__ == "__main__":
    console_main()
