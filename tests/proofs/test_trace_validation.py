"""Simulator runs are behaviours of BftCore.tla (trace validation, issue 5 section 4).

``sim/spec_trace.py`` reads each honest replica's steps of a run as the spec's actions;
``proofs/trace.py`` has TLC replay them through ``proofs/TraceBftCore.tla``.  The runs
below cover the normal case, a leader crash and restart, an equivocating and a
bad-header leader, Byzantine STOP-DATA, lossy links, catch-up by blocks and by
checkpoint, and BFT-only partitions with several regency changes.  The checks can
fail: a trace of the code with a quorum of f + 1, one whose leader skips the SYNC
re-proposal rule, and a tampered trace are all rejected at the offending event.

Workloads are light (``request_rate`` 0.03: 10-30 heights) so each TLC run takes
seconds; ``aegis sim`` and ``python -m proofs trace`` run any other.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections import Counter

import pytest

from proofs.trace import check
from sim.scenarios import SCENARIOS
from sim.simulation import SimConfig
from sim.spec_trace import Trace, record

RATE = 0.03
SLOW = os.environ.get("AEGIS_SLOW") == "1"

ACCEPTED = [
    ("happy", 1, {}),
    ("leader-crash", 1, {}),
    ("equivocating-leader", 1, {}),
    ("bad-header-leader", 1, {}),
    ("byzantine-stopdata", 1, {}),  # and a checkpoint installed from a peer
    ("restart-under-byzantine", 2, {}),
    ("lossy-network", 1, {}),
    ("crash-restart-catch-up", 1, {}),
    ("partial-partition", 2, {"fallback": False}),  # regencies up to 4
    ("isolated-decider", 1, {"fallback": False}),
]


def _trace(scenario: str, seed: int, **fields: object) -> Trace:
    _, trace = record(SimConfig(seed=seed, scenario=scenario, request_rate=RATE, **fields))
    assert not trace.unsupported, trace.unsupported
    assert trace.events, "nothing recorded"
    return trace


@pytest.mark.parametrize(
    ("scenario", "seed", "fields"),
    ACCEPTED,
    ids=[f"{s}-{seed}{'-bft-only' if f else ''}" for s, seed, f in ACCEPTED],
)
def test_a_simulator_run_is_a_behaviour_of_the_spec(
    scenario: str, seed: int, fields: dict[str, object]
) -> None:
    result, trace = record(SimConfig(seed=seed, scenario=scenario, request_rate=RATE, **fields))
    assert result.ok, result.failures
    assert not trace.unsupported, trace.unsupported
    verdict = check(trace)
    assert verdict.verdict == "accepted", verdict.describe()


def test_the_recorder_reads_the_normal_case_as_the_spec_names_it() -> None:
    trace = _trace("happy", 1)
    kinds = Counter((e.kind, e.height) for e in trace.events)
    for height in range(1, trace.max_height + 1):
        # The leader's PROPOSE carries its own WRITE; three followers WRITE.
        assert kinds[("propose", height)] == 1
        assert kinds[("write", height)] == 3
        assert kinds[("accept", height)] == 4
        assert kinds[("decide", height)] == 4
    assert {e.replica for e in trace.events if e.kind == "propose"} == {0}


def test_a_regency_change_is_traced_with_its_stop_data() -> None:
    trace = _trace("leader-crash", 1)
    stops = [e for e in trace.events if e.kind == "stop"]
    assert stops and all(e.regency == 1 for e in stops)
    assert any(e.decided_height >= 0 for e in stops), "STOP-DATA contents recorded"
    assert [e.kind for e in trace.events if e.kind in ("sync", "follow")]


def test_the_code_with_a_quorum_of_f_plus_1_is_rejected() -> None:
    # An equivocating leader's WRITE plus one honest WRITE make a "write proof" of 2.
    trace = _trace("equivocating-leader", 1, unsafe_quorum=2, check_certificates=False)
    verdict = check(trace)
    assert verdict.verdict == "rejected", verdict.describe()
    assert verdict.failed_at is not None
    assert trace.events[verdict.failed_at - 1].kind == "accept"


def test_a_leader_that_skips_the_sync_reproposal_is_rejected_at_its_sync() -> None:
    trace = _trace("isolated-decider", 1, fallback=False, unsafe_skip_sync_reproposal=True)
    verdict = check(trace)
    assert verdict.verdict == "rejected", verdict.describe()
    assert verdict.failed_at is not None
    assert trace.events[verdict.failed_at - 1].kind == "sync"


def test_a_tampered_trace_is_rejected_where_it_was_changed() -> None:
    trace = _trace("happy", 1)
    index = next(i for i, e in enumerate(trace.events) if e.kind == "decide" and e.height == 3)
    forged = dataclasses.replace(trace.events[index], block=trace.events[index].block + 1)
    trace.events[index] = forged  # a replica "decides" the block of the next height
    verdict = check(trace)
    assert verdict.verdict == "rejected", verdict.describe()
    assert verdict.failed_at == index + 1


def test_runs_the_spec_does_not_cover_are_refused_not_judged() -> None:
    _, trace = record(SimConfig(seed=1, scenario="partial-partition", request_rate=RATE))
    assert "fallback" in trace.unsupported
    with pytest.raises(ValueError, match="cannot replay"):
        check(trace)


def _sweep_one(job: tuple[str, int]) -> str | None:
    scenario, seed = job
    _, trace = record(SimConfig(seed=seed, scenario=scenario, request_rate=RATE, fallback=False))
    verdict = check(trace)
    if verdict.verdict == "accepted":
        return None
    return f"{scenario} seed {seed}: {verdict.describe()}"


@pytest.mark.skipif(not SLOW, reason="the long sweep: scripts/check --slow")
def test_every_scenario_with_fallback_off_is_a_behaviour_of_the_spec() -> None:
    """Every scenario at seeds 1-4 with fallback off (so the whole run is BFT), on all
    cores: 100 runs, 171 s on 2 cores (2026-12-01)."""
    jobs = [(scenario, seed) for scenario in SCENARIOS for seed in range(1, 5)]
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        failures = [f for f in pool.imap_unordered(_sweep_one, jobs) if f]
    assert not failures, "\n".join(sorted(failures)[:5])
