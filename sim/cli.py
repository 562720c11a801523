"""``aegis sim`` / ``python -m sim``: run, fuzz and list simulation scenarios."""

from __future__ import annotations

import argparse
import dataclasses
import json
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

    compare = commands.add_parser(
        "compare",
        help="BFT-only versus BFT+fallback on the same seeds, side by side",
        description="Run each seed twice, BFT only and with the Raft fallback, and print "
        "transfers committed (while a partition is on, before the last heal, in all), "
        "p50/p99 commit latency in ticks (submission to the first commit at any level) and whether "
        "the final ledger state is the same.",
    )
    _common(compare, scenario_default="partial-partition")
    compare.add_argument("--seeds", default="1..20", metavar="A..B", help="default 1..20")
    compare.add_argument("--json", action="store_true", help="print JSON instead of a table")
    compare.set_defaults(handler=_compare)

    scenarios = commands.add_parser("scenarios", help="list the named scenarios")
    scenarios.set_defaults(handler=_scenarios)


def _common(parser: argparse.ArgumentParser, scenario_default: str = "happy") -> None:
    names = ", ".join(SCENARIOS)
    parser.add_argument(
        "--scenario", default=scenario_default, help=f"scenario name ({names}; 'all' for fuzz)"
    )
    parser.add_argument(
        "--replicas", type=int, default=None, help="n = 3f+1 (default: the scenario's, mostly 4)"
    )
    parser.add_argument(
        "--byzantine",
        type=int,
        default=None,
        help="Byzantine replicas (default: as the scenario says; at most f)",
    )
    parser.add_argument(
        "--checkpoint-interval", type=int, default=8, help="blocks between checkpoints (default 8)"
    )
    parser.add_argument(
        "--no-fallback",
        action="store_true",
        help="BFT only: never fall back to Raft when BFT stalls (compare runs both)",
    )


def _config(args: argparse.Namespace, seed: int, scenario: str) -> SimConfig:
    return SimConfig(
        seed=seed,
        scenario=scenario,
        replicas=args.replicas,
        byzantine=args.byzantine,
        checkpoint_interval=args.checkpoint_interval,
        record_trace=bool(getattr(args, "trace", None)),
        fallback=not args.no_fallback,
    )


def _validate(args: argparse.Namespace, out: TextIO) -> str | None:
    if args.scenario != "all" and args.scenario not in SCENARIOS:
        return f"unknown scenario {args.scenario!r}; known: {', '.join(SCENARIOS)}"
    if args.replicas is not None and (args.replicas < 4 or (args.replicas - 1) % 3):
        return f"--replicas must be 3f+1 with f >= 1 (4, 7, 10, ...), got {args.replicas}"
    replicas = args.replicas or (
        SCENARIOS[args.scenario].replicas if args.scenario in SCENARIOS else 4
    )
    if args.byzantine is not None and not 0 <= args.byzantine <= (replicas - 1) // 3:
        return f"--byzantine must be between 0 and f = {(replicas - 1) // 3}"
    return None


def summary(result: SimResult, out: TextIO) -> None:
    config = result.config
    rows = [
        ("scenario", config.scenario),
        ("seed", str(config.seed)),
        ("replicas / byzantine", f"{_replicas(config)} / {_byzantine_label(config)}"),
        ("ticks", str(result.ticks)),
        ("blocks decided", str(result.blocks_decided)),
        ("transfers committed", str(result.transfers_committed)),
        ("requests acknowledged", f"{result.requests_acknowledged} of {result.requests_submitted}"),
        ("regency changes", str(result.regency_changes)),
        ("fallback epochs", str(result.fallback_epochs) if config.fallback else "off"),
        (
            "provisional / re-certified / rolled back",
            f"{result.provisional_blocks} / {result.recertified_blocks} / "
            f"{result.rolled_back_blocks} blocks",
        ),
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


def _replicas(config: SimConfig) -> int:
    return config.replicas or SCENARIOS[config.scenario].replicas


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


def _seeds(args: argparse.Namespace, command: str) -> range | None:
    """The --seeds range, or None after saying why it is not one."""
    try:
        return _parse_seeds(args.seeds)
    except ValueError as error:
        sys.stderr.write(f"aegis sim {command}: {error}\n")
        return None


def _fuzz(args: argparse.Namespace, out: TextIO) -> int:
    seeds = _seeds(args, "fuzz")
    if seeds is None:
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


def _percentile(values: Sequence[int], fraction: float) -> int | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def compare_runs(scenario: str, seeds: range, args: argparse.Namespace) -> dict[str, object]:
    """Both modes on every seed: the figures ``aegis sim compare`` prints."""
    modes: dict[str, dict[str, object]] = {}
    finals: dict[str, list[str]] = {}
    failed: list[str] = []
    for label, fallback in (("bft-only", False), ("bft+fallback", True)):
        before = total = acknowledged = partitioned = 0
        latencies: list[int] = []
        finals[label] = []
        for seed in seeds:
            config = dataclasses.replace(_config(args, seed, scenario), fallback=fallback)
            result = Simulation(config).run()
            if not result.ok:
                failed.append(f"{label} seed {seed}: {result.failures[0]}")
            before += result.committed_by_heal
            partitioned += result.committed_partitioned
            total += result.transfers_committed
            acknowledged += result.requests_acknowledged
            latencies += result.commit_latencies
            finals[label].append(result.final_state)
        modes[label] = {
            "transfers_committed_while_partitioned": partitioned,
            "transfers_committed_before_heal": before,
            "transfers_committed": total,
            "requests_acknowledged": acknowledged,
            "commit_latency_p50_ticks": _percentile(latencies, 0.50),
            "commit_latency_p99_ticks": _percentile(latencies, 0.99),
        }
    same = sum(a == b for a, b in zip(finals["bft-only"], finals["bft+fallback"], strict=True))
    return {
        "scenario": scenario,
        "seeds": f"{seeds.start}..{seeds.stop - 1}",
        "modes": modes,
        "same_final_state": f"{same} of {len(seeds)} seeds",
        "failures": failed,
    }


def _compare(args: argparse.Namespace, out: TextIO) -> int:
    seeds = _seeds(args, "compare")
    if seeds is None:
        return 2
    report = compare_runs(args.scenario, seeds, args)
    if args.json:
        out.write(json.dumps(report, indent=2) + "\n")
    else:
        modes = report["modes"]
        assert isinstance(modes, dict)
        rows = list(next(iter(modes.values())))
        out.write(f"scenario {report['scenario']}, seeds {report['seeds']}\n")
        out.write(f"{'':<34}{'BFT only':>14}{'BFT+fallback':>14}\n")
        for row in rows:
            a, b = modes["bft-only"][row], modes["bft+fallback"][row]
            out.write(f"{row.replace('_', ' '):<34}{a!s:>14}{b!s:>14}\n")
        out.write(f"same final ledger state: {report['same_final_state']}\n")
        for failure in report["failures"]:  # type: ignore[attr-defined]
            out.write(f"FAILED {failure}\n")
    return 1 if report["failures"] else 0


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
