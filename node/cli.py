"""The ``aegis`` command line.

Sub-commands are added as the packages behind them are built; each one's
``--help`` says what it does and what it needs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def _demo(args: argparse.Namespace) -> int:
    from node import demo

    return demo.run(sys.stdout)


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
        help="run a scripted day of transfers on an embedded ledger and print the results",
        description=(
            "Creates five accounts on an embedded ledger and applies a scripted business "
            "day: payments, a "
            "rejected overdraft, linked chains (one rolls back), a pending hold posted "
            "for less, one voided, and an idempotent retry. Prints each result, the "
            "closing balances, the double-entry check and the state hash. Needs no "
            "services and no network; the output is the same on every run."
        ),
    )
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
