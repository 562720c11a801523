"""``aegis sim`` / ``python -m sim``: run, fuzz and list simulation scenarios."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from sim.scenarios import SCENARIOS
from sim.simulation import SimConfig, SimResult, Simulation


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``run``, ``fuzz`` and ``scenarios`` under a parent parser."""
    run = commands.add_parser(
        "run",
        help="run one seeded simulation and print its summary",
        description="Run one deterministic simulation. The same seed and options always "
        "give the same trace hash; a failure prints the command that replays it.",
    )
    _common(run)
    run.add_argument("--seed", type=int, required=True, help="the PRNG seed")
    run.add_argument("--trace", type=Path, help="write the run's full trace to this file")
    run.set_defaults(handler=_run)

    fuzz = commands.add_parser(
        "fuzz",
        help="sweep a range of seeds across scenarios and list failures",
        description="Run every seed in A..B (inclusive) for each chosen scenario, with a "
        "progress bar, and list each failure with its replay command.",
    )
    _common(fuzz, scenario_default="all")
    fuzz.add_argument("--seeds", required=True, metavar="A..B", help="seed range, e.g. 1..500")
    fuzz.set_defaults(handler=_fuzz)

    scenarios = commands.add_parser("scenarios", help="list the named scenarios")
    scenarios.set_defaults(handler=_scenarios)


def _common(parser: argparse.ArgumentParser, scenario_default: str = "happy") -> None:
    names = ", ".join(SCENARIOS)
    parser.add_argument(
        "--scenario", default=scenario_default, help=f"scenario name ({names}; 'all' for fuzz)"
    )
    parser.add_argument("--replicas", type=int, default=4, help="n = 3f+1 (default 4)")
    parser.add_argument(
        "--byzantine",
        type=int,
        default=None,
        help="Byzantine replicas (default: as the scenario says; at most f)",
    )
    parser.add_argument(
        "--checkpoint-interval", type=int, default=8, help="blocks between checkpoints (default 8)"
    )


def _config(args: argparse.Namespace, seed: int, scenario: str) -> SimConfig:
    return SimConfig(
        seed=seed,
        scenario=scenario,
        replicas=args.replicas,
        byzantine=args.byzantine,
        checkpoint_interval=args.checkpoint_interval,
        record_trace=bool(getattr(args, "trace", None)),
    )


def _validate(args: argparse.Namespace, out: TextIO) -> str | None:
    if args.scenario != "all" and args.scenario not in SCENARIOS:
        return f"unknown scenario {args.scenario!r}; known: {', '.join(SCENARIOS)}"
    if args.replicas < 4 or (args.replicas - 1) % 3:
        return f"--replicas must be 3f+1 with f >= 1 (4, 7, 10, ...), got {args.replicas}"
    if args.byzantine is not None and not 0 <= args.byzantine <= (args.replicas - 1) // 3:
        return f"--byzantine must be between 0 and f = {(args.replicas - 1) // 3}"
    return None


def summary(result: SimResult, out: TextIO) -> None:
    config = result.config
    rows = [
        ("scenario", config.scenario),
        ("seed", str(config.seed)),
        ("replicas / byzantine", f"{config.replicas} / {_byzantine_label(config)}"),
        ("ticks", str(result.ticks)),
        ("blocks decided", str(result.blocks_decided)),
        ("transfers committed", str(result.transfers_committed)),
        ("requests acknowledged", f"{result.requests_acknowledged} of {result.requests_submitted}"),
        ("regency changes", str(result.regency_changes)),
        ("messages sent / dropped", f"{result.messages_sent} / {result.messages_dropped}"),
        ("evidence recorded", str(result.evidence)),
    ]
    rows += [(f"check: {name}", verdict) for name, verdict in result.checks.items()]
    rows.append(("trace hash", result.trace_hash))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        out.write(f"{name:<{width}}  {value}\n")
    for failure in result.failures:
        out.write(f"FAILED {failure}\n")


def _byzantine_label(config: SimConfig) -> str:
    if config.byzantine is not None:
        return str(config.byzantine)
    return str(len(SCENARIOS[config.scenario].byzantine))


def _run(args: argparse.Namespace, out: TextIO) -> int:
    result = Simulation(_config(args, args.seed, args.scenario)).run()
    summary(result, out)
    if args.trace:
        args.trace.write_text("\n".join(result.trace) + "\n")
        out.write(f"trace written to {args.trace}\n")
    return 0 if result.ok else 1


def _parse_seeds(text: str) -> range:
    first, _, last = text.partition("..")
    if not first.isdigit() or not last.isdigit() or int(last) < int(first):
        raise ValueError(f"--seeds takes A..B with A <= B, got {text!r}")
    return range(int(first), int(last) + 1)


def _fuzz(args: argparse.Namespace, out: TextIO) -> int:
    try:
        seeds = _parse_seeds(args.seeds)
    except ValueError as error:
        sys.stderr.write(f"aegis sim fuzz: {error}\n")
        return 2
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    total = len(seeds) * len(names)
    failures: list[SimResult] = []
    started = time.monotonic()
    done = 0
    for name in names:
        for seed in seeds:
            result = Simulation(_config(args, seed, name)).run()
            done += 1
            if not result.ok:
                failures.append(result)
            _progress(done, total, len(failures), started)
    sys.stderr.write("\n")
    out.write(
        f"{total} runs ({len(names)} scenarios x {len(seeds)} seeds) in "
        f"{time.monotonic() - started:.1f}s: {len(failures)} failed\n"
    )
    for result in failures:
        out.write(
            f"FAILED {result.config.scenario} seed {result.config.seed}: "
            f"{result.failures[0]}\n  replay: {result.config.replay_command()}\n"
        )
    return 1 if failures else 0


def _progress(done: int, total: int, failed: int, started: float) -> None:
    width = 30
    filled = width * done // total
    rate = done / max(time.monotonic() - started, 1e-9)
    sys.stderr.write(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
        f"failed {failed}  {rate:.1f} runs/s "
    )
    sys.stderr.flush()


def _scenarios(args: argparse.Namespace, out: TextIO) -> int:
    width = max(len(name) for name in SCENARIOS)
    for name, scenario in SCENARIOS.items():
        byzantine = f" [byzantine: {', '.join(scenario.byzantine)}]" if scenario.byzantine else ""
        out.write(f"{name:<{width}}  {scenario.summary}{byzantine}\n")
    return 0


def build_parser(prog: str = "python -m sim") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Deterministic BFT simulator.")
    add_commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return parser


def dispatch(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    problem = _validate(args, out) if hasattr(args, "scenario") else None
    if problem:
        sys.stderr.write(f"aegis sim: {problem}\n")
        return 2
    status: int = args.handler(args, out)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    return dispatch(build_parser().parse_args(argv))
