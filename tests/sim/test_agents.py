"""The agent gate in a running cluster: limits set by a replicated command, denials
re-derived by an independent model, and a leader whose verdicts differ."""

from __future__ import annotations

from collections import Counter

from finality import FinalityResult
from sim.simulation import SimConfig, Simulation


def _codes(sim: Simulation) -> Counter[int]:
    return Counter(code for c in sim.clients for codes in c.acked.values() for code in codes)


def test_limits_from_the_operator_deny_transfers_and_customers_cannot_set_them() -> None:
    sim = Simulation(SimConfig(seed=1, scenario="amount-limits"))
    result = sim.run()
    assert result.ok, result.failures
    codes = _codes(sim)
    assert codes[FinalityResult.DENIED_BY_POLICY] > 0
    assert codes[FinalityResult.NOT_AN_OPERATOR] == 1  # client 1's attempt
    assert codes[0] > codes[FinalityResult.DENIED_BY_POLICY]
    executor = sim.core(0).sm
    assert executor.artifacts.ledger_limits == ((1, 450),)  # type: ignore[attr-defined]


def test_a_leader_with_other_verdicts_is_refused_and_replaced() -> None:
    result = Simulation(SimConfig(seed=1, scenario="wrong-verdicts", record_trace=True)).run()
    assert result.ok, result.failures
    assert any("agent verdicts differ" in line for line in result.trace)
    assert result.regency_changes >= 1


def test_the_verdict_checker_catches_a_gate_without_agents() -> None:
    result = Simulation(SimConfig(seed=1, scenario="amount-limits", unsafe_no_agents=True)).run()
    assert result.failures and "agent verdicts" in result.failures[0]
    assert "not denied" in result.failures[0]
