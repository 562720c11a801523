"""Check a simulator run against ``BftCore.tla`` with TLC (trace validation).

``sim/spec_trace.py`` turns a run into the spec's actions; ``check`` writes them
into a TLA+ module next to copies of ``BftCore.tla`` and ``TraceBftCore.tla`` in a
temporary directory, with the spec's constants taken from the run (replicas,
Byzantine ones, quorum, the heights, regencies and blocks the trace uses), and runs
TLC on ``TraceSpec``.  The verdict:

* ``accepted``: some behaviour of the spec takes exactly these steps (TLC reports the
  invariant ``Matched`` violated: the whole trace was consumed);
* ``rejected``: TLC ended with the trace unconsumed; ``failed_at`` is an event where a
  behaviour got stuck (1-based; from a second run with deadlocks reported), ``event``
  says what it was;
* ``error``: TLC failed in any other way (its output is kept).

    python -m proofs trace --scenario leader-crash --seed 3
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile
from pathlib import Path

from proofs.tlc import PROOFS, run_tlc
from sim.spec_trace import Trace


@dataclasses.dataclass(frozen=True, slots=True)
class TraceVerdict:
    verdict: str  # "accepted" | "rejected" | "error"
    events: int
    failed_at: int | None  # rejected: the 1-based index of the event that matched nothing
    event: str  # that event, as written into the module
    seconds: float
    output: str  # TLC's output, for a report

    def describe(self) -> str:
        if self.verdict == "accepted":
            return f"accepted: all {self.events} events are steps of BftCore ({self.seconds}s)"
        if self.verdict == "rejected":
            return (
                f"rejected: event {self.failed_at} of {self.events} is no step of BftCore "
                f"from the state the events before it leave: {self.event}"
            )
        return f"TLC failed: {self.output[-2000:]}"


def module(trace: Trace, name: str = "TraceRun") -> str:
    """The root module: the trace and the constants it needs."""
    events = ",\n    ".join(event.tla() for event in trace.events)
    return (
        f"---- MODULE {name} ----\n"
        "EXTENDS TraceBftCore\n"
        f"TraceLog == <<\n    {events}\n>>\n"
        f"TraceValues == 1 .. {max(trace.blocks, 1)}\n"
        f"TraceByz == {{{', '.join(map(str, trace.byzantine))}}}\n"
        "====\n"
    )


def config(trace: Trace, quorum: int) -> str:
    faults = (trace.replicas - 1) // 3
    return "\n".join(
        [
            "CONSTANTS",
            f"    N = {trace.replicas}",
            f"    F = {faults}",
            f"    Quorum = {quorum}",
            f"    MaxHeight = {trace.max_height}",
            f"    MaxRegency = {trace.max_regency}",
            "    Byz <- TraceByz",
            "    Values <- TraceValues",
            "    Trace <- TraceLog",
            "    Bad = Bad",
            "    NoBlock = NoBlock",
            "    MUTATE_SYNC_FREE_CHOICE = FALSE",
            "    MUTATE_NO_VALIDATION = FALSE",
            "INIT TraceInit",
            "NEXT TraceNext",
            "INVARIANT Matched",
            "",
        ]
    )


def check(trace: Trace, quorum: int | None = None) -> TraceVerdict:
    """TLC on ``trace``; ``quorum``: the spec's (2f + 1 unless a test says otherwise)."""
    if trace.unsupported:
        raise ValueError(f"the spec cannot replay this run: {trace.unsupported}")
    if not trace.events:
        raise ValueError("an empty trace: nothing to check")
    faults = (trace.replicas - 1) // 3
    total = len(trace.events)
    with tempfile.TemporaryDirectory(prefix="aegis-trace-") as directory:
        where = Path(directory)
        for spec in ("BftCore.tla", "TraceBftCore.tla"):
            shutil.copy(PROOFS / spec, where / spec)
        (where / "TraceRun.tla").write_text(module(trace))
        (where / "TraceRun.cfg").write_text(config(trace, quorum or 2 * faults + 1))
        # Deadlocks off: a behaviour that takes a wrong branch (a step the spec allows
        # two ways) may die while another goes on; only the end counts.
        outcome = run_tlc(where / "TraceRun.tla", where / "TraceRun.cfg")
        if outcome.verdict == "violated:Matched":
            return TraceVerdict("accepted", total, None, "", outcome.seconds, outcome.output)
        if outcome.verdict != "ok":
            return TraceVerdict("error", total, None, "", outcome.seconds, outcome.output)
        # No behaviour consumed the trace.  Again with deadlocks reported, for where one
        # got stuck (the first event some behaviour could not take).
        stuck = run_tlc(where / "TraceRun.tla", where / "TraceRun.cfg", deadlock=True)
    steps = re.findall(r"^/\\ step = (\d+)$", stuck.output, flags=re.MULTILINE)
    failed = int(steps[-1]) if stuck.verdict == "deadlock" and steps else None
    event = trace.events[failed - 1].tla() if failed and failed <= total else ""
    return TraceVerdict(
        "rejected", total, failed, event, outcome.seconds + stuck.seconds, outcome.output
    )
