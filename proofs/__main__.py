"""``python -m proofs``: model-check the TLA+ specs with TLC (see proofs/README.md)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from proofs.tlc import CATALOGUE, Model, Outcome, ToolError, check


def _describe(model: Model) -> str:
    expect = "no error" if model.expect is None else f"{model.expect} violated"
    if model.witnesses:
        expect = "every target reached"
    where = "CI" if model.ci else "--big"
    return f"{model.name:30} {model.spec:8} {where:5} expect {expect}: {model.about}"


def _line(model: Model, outcome: Outcome) -> str:
    mark = "ok  " if outcome.meets(model) else "FAIL"
    states = f"{outcome.distinct_states:,}" if outcome.distinct_states is not None else "?"
    what = "states checked in random behaviours" if model.simulate else "distinct states"
    # A reachability model's violations are its witnesses, not a counterexample.
    trace = f", trace of {outcome.trace_states} states" if outcome.trace_states else ""
    if model.witnesses:
        trace = ""
    return (
        f"{mark} {model.name:30} {outcome.verdict:22} {states:>11} {what}, "
        f"{outcome.seconds:6.1f}s{trace}"
    )


def _progress(line: str) -> None:
    print(f"    {line}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m proofs",
        description="Model-check the TLA+ specs in proofs/ with TLC. Each model must "
        "end as catalogued: no error, or (the mutated models) the named invariant "
        "violated with a counterexample. Any other outcome fails the run.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser("check", help="run TLC on the CI models (or --big, --model)")
    run.add_argument("--big", action="store_true", help="also the big models (slow)")
    run.add_argument("--model", action="append", help="only this model (repeatable)")
    run.add_argument("--json", action="store_true", help="print a JSON summary at the end")
    run.add_argument("--verbose", action="store_true", help="print TLC's output of failures")
    commands.add_parser("list", help="list the models, what each checks and expects")
    trace = commands.add_parser(
        "trace",
        help="run the simulator and check the run against BftCore.tla (trace validation)",
        description="Run one simulation and have TLC replay its honest replicas' steps "
        "through TraceBftCore.tla: every step must be one BftCore allows. Exit 0: "
        "accepted; 1: rejected (the event that matched nothing is printed); 2: the run "
        "is outside the spec (fallback mode) or TLC failed.",
    )
    trace.add_argument("--scenario", default="happy", help="a simulator scenario (happy)")
    trace.add_argument("--seed", type=int, default=1, help="the run's seed (1)")
    trace.add_argument(
        "--request-rate",
        type=float,
        default=0.03,
        help="chance per tick that an idle client submits (0.03: 10-30 heights, TLC "
        "takes seconds; the simulator's default 0.5 makes traces TLC takes minutes on)",
    )
    trace.add_argument(
        "--bft-only", action="store_true", help="no fallback mode (partitions stay in BFT)"
    )
    trace.add_argument("--save", metavar="FILE", help="also write the TLA+ module of the trace")
    return parser


def _trace(args: argparse.Namespace) -> int:
    from proofs.trace import check, module  # imports the simulator: only when asked
    from sim.simulation import SimConfig
    from sim.spec_trace import record

    config = SimConfig(
        seed=args.seed,
        scenario=args.scenario,
        request_rate=args.request_rate,
        fallback=not args.bft_only,
    )
    result, trace = record(config)
    print(
        f"{config.scenario} seed {config.seed} at request rate {config.request_rate}"
        f"{' (BFT only)' if args.bft_only else ''}: "
        f"{'checkers ok' if result.ok else 'a checker failed'}, "
        f"{len(trace.events)} events, heights to {trace.max_height}, "
        f"regencies to {trace.max_regency}, Byzantine {list(trace.byzantine) or 'none'}"
    )
    if args.save:
        with open(args.save, "w") as file:
            file.write(module(trace))
    if trace.unsupported:
        print(f"not checked: {trace.unsupported}")
        return 2
    try:
        verdict = check(trace)
    except ToolError as problem:
        print(f"cannot run TLC: {problem}")
        return 2
    print(verdict.describe())
    return {"accepted": 0, "rejected": 1}.get(verdict.verdict, 2)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "trace":
        return _trace(args)
    if args.command == "list":
        for model in CATALOGUE:
            print(_describe(model))
        return 0
    chosen = [
        m
        for m in CATALOGUE
        if (args.model and m.name in args.model) or (not args.model and (m.ci or args.big))
    ]
    unknown = set(args.model or ()) - {m.name for m in CATALOGUE}
    if unknown:
        print(f"unknown model(s): {', '.join(sorted(unknown))}; see 'python -m proofs list'")
        return 2
    failed = 0
    summary = []
    for index, model in enumerate(chosen, 1):
        print(f"[{index}/{len(chosen)}] TLC {model.name} ({model.about}) ...", flush=True)
        try:
            outcome = check(model, progress=_progress)
        except ToolError as problem:
            print(f"cannot run TLC: {problem}")
            return 2
        print(_line(model, outcome), flush=True)
        if not outcome.meets(model):
            failed += 1
            if args.verbose:
                print(outcome.output)
        summary.append(
            {
                "model": model.name,
                "expect": model.expect or "ok",
                "verdict": outcome.verdict,
                "distinct_states": outcome.distinct_states,
                "depth": outcome.depth,
                "seconds": outcome.seconds,
                "passed": outcome.meets(model),
            }
        )
    if args.json:
        print(json.dumps(summary, indent=2))
    print(f"{len(chosen) - failed} of {len(chosen)} models as expected")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
