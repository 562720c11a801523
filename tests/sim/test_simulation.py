"""The simulator: named scenarios, determinism, a seed sweep, and checkers that can fail."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from sim.scenarios import SCENARIOS
from sim.simulation import SimConfig, Simulation

SLOW = os.environ.get("AEGIS_SLOW") == "1"
FIXED_SEEDS = (1, 2, 3)


@pytest.mark.parametrize("seed", FIXED_SEEDS)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_named_scenario_passes(scenario: str, seed: int) -> None:
    result = Simulation(SimConfig(seed=seed, scenario=scenario)).run()
    assert result.ok, "\n".join(result.failures)
    assert result.blocks_decided > 5
    assert result.requests_acknowledged == result.requests_submitted > 0
    assert set(result.checks.values()) == {"ok"}


def test_faulty_scenarios_really_exercise_their_fault() -> None:
    def run(name: str) -> object:
        return Simulation(SimConfig(seed=1, scenario=name)).run()

    assert run("leader-crash").regency_changes >= 1  # type: ignore[attr-defined]
    assert run("isolated-decider").regency_changes >= 1  # type: ignore[attr-defined]
    assert run("forged-messages").evidence > 0  # type: ignore[attr-defined]
    assert run("equivocating-leader").evidence > 0  # type: ignore[attr-defined]
    assert run("lossy-network").messages_dropped > 0  # type: ignore[attr-defined]
    lying = Simulation(SimConfig(seed=1, scenario="byzantine-stopdata", record_trace=True)).run()
    assert any("lying SYNC" in line for line in lying.trace)
    catching_up = Simulation(
        SimConfig(seed=1, scenario="crash-restart-catch-up", record_trace=True)
    ).run()
    assert any(line.startswith("r3 caught up") for line in catching_up.trace)


def test_seven_replicas_with_two_byzantine() -> None:
    for scenario in ("forged-messages", "byzantine-stopdata", "leader-crash"):
        result = Simulation(SimConfig(seed=4, scenario=scenario, replicas=7, byzantine=2)).run()
        assert result.ok, "\n".join(result.failures)


def test_a_restart_calls_off_a_crash_that_has_not_fired() -> None:
    """A crash_after_persist armed in a fault window must not fire after the window's
    restart: the replica would stay down past the heal, one fault too many."""
    sim = Simulation(SimConfig(seed=1, scenario="happy"))
    sim._fault(("crash_after_persist", 0))
    sim._fault(("restart", 0))
    assert 0 not in sim.crash_after_persist
    sim._fault(("crash_after_persist", 1))
    sim._fault(("restart_all",))
    assert not sim.crash_after_persist
    assert sim.run().failures == []
    assert sim.alive == {0, 1, 2, 3}


def test_same_seed_same_trace_hash() -> None:
    first = Simulation(SimConfig(seed=11, scenario="lossy-network")).run()
    again = Simulation(SimConfig(seed=11, scenario="lossy-network")).run()
    other = Simulation(SimConfig(seed=12, scenario="lossy-network")).run()
    assert first.trace_hash == again.trace_hash
    assert first.trace_hash != other.trace_hash


def _sweep_one(job: tuple[str, int]) -> str | None:
    scenario, seed = job
    result = Simulation(SimConfig(seed=seed, scenario=scenario)).run()
    return None if result.ok else f"{scenario} seed {seed}: {result.failures}"


def test_seed_sweep() -> None:
    """At least 500 seeded runs across every scenario (more with AEGIS_SLOW=1), on all
    cores; tests/sim/test_fallback.py sweeps the fallback scenarios 500 seeds each."""
    per_scenario = (2000 if SLOW else 500) // len(SCENARIOS) + 1
    started = time.monotonic()
    jobs = [
        (scenario, seed)
        for index, scenario in enumerate(SCENARIOS)
        for seed in range(100 + index * 1000, 100 + index * 1000 + per_scenario)
    ]
    with multiprocessing.get_context("fork").Pool(os.cpu_count() or 1) as pool:
        failures = [f for f in pool.imap_unordered(_sweep_one, jobs, chunksize=4) if f]
    assert len(jobs) >= 500
    assert not failures, "\n".join(sorted(failures)[:5])
    print(f"sweep: {len(jobs)} runs in {time.monotonic() - started:.0f}s")


# ------------------------------------------------------------ the checkers can fail


def _find(word: str, config_fields: dict[str, object], scenario: str, seeds: range) -> str | None:
    """The first failure naming ``word`` within the given seeds, or None."""
    for seed in seeds:
        result = Simulation(SimConfig(seed=seed, scenario=scenario, **config_fields)).run()
        if result.failures and word in result.failures[0]:
            return result.failures[0]
    return None


def test_agreement_checker_catches_a_quorum_of_f_plus_1() -> None:
    # With q = f + 1 an equivocating leader gets two blocks decided at one height.
    failure = _find(
        "agreement",
        {"unsafe_quorum": 2, "check_certificates": False},
        "equivocating-leader",
        range(1, 21),
    )
    assert failure is not None


def test_certificate_checker_catches_a_quorum_of_f_plus_1() -> None:
    assert _find("certificate", {"unsafe_quorum": 2}, "happy", range(1, 3)) is not None


def test_agreement_checker_catches_a_leader_that_skips_the_sync_reproposal() -> None:
    failing = None
    for seed in range(1, 11):
        config = SimConfig(seed=seed, scenario="isolated-decider", unsafe_skip_sync_reproposal=True)
        result = Simulation(config).run()
        if result.failures and "agreement" in result.failures[0]:
            failing = result
            break
    assert failing is not None
    # A failing run ends with the command that replays it.
    assert failing.failures[-1].startswith("replay: aegis sim run --seed")
    assert f"--seed {failing.config.seed} " in failing.failures[-1]


def test_unknown_scenario_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown scenario 'nope'"):
        Simulation(SimConfig(seed=1, scenario="nope"))
    with pytest.raises(ValueError, match="exceed f = 1"):
        Simulation(SimConfig(seed=1, scenario="happy", byzantine=2))
