"""Finality levels on the wire: what an answer must carry at each level."""

from __future__ import annotations

import pytest

from consensus.messages import Certificate, Finality, MessageError, Reply
from sim.script import ScriptedCluster
from sim.simulation import SimConfig, Simulation


def _header_and_certificate() -> tuple[object, Certificate]:
    cluster = ScriptedCluster()
    cluster.run("request client=0 transfers=1")
    cluster.run("deliver type=Request")
    cluster.run("stabilize")
    decided = cluster.sim.core(0).log[1]
    return decided.block.header, decided.certificate


def test_final_carries_a_certificate_provisional_none_and_anchored_is_unreachable() -> None:
    header, certificate = _header_and_certificate()
    base = {"replica_id": 0, "client_id": 0, "request_number": 1, "header": header, "results": ()}
    Reply(**base, certificate=certificate, level=Finality.FINAL)  # type: ignore[arg-type]
    Reply(**base, certificate=None, level=Finality.PROVISIONAL)  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="carries a certificate"):
        Reply(**base, certificate=None, level=Finality.FINAL)  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="carries a certificate"):
        Reply(**base, certificate=certificate, level=Finality.PROVISIONAL)  # type: ignore[arg-type]
    # The audit chain does not anchor anything yet: no answer may claim it.
    with pytest.raises(MessageError, match="ANCHORED"):
        Reply(**base, certificate=certificate, level=Finality.ANCHORED)  # type: ignore[arg-type]
    assert Finality.PROVISIONAL < Finality.FINAL < Finality.ANCHORED


def test_clients_choose_the_level_they_wait_for() -> None:
    sim = Simulation(SimConfig(seed=1, scenario="partial-partition"))
    assert sim.run().ok
    provisional = [c for c in sim.clients if c.wants_provisional]
    final_only = [c for c in sim.clients if not c.wants_provisional]
    assert provisional and final_only
    assert any(level == Finality.PROVISIONAL for c in provisional for level in c.levels.values())
    assert all(level == Finality.FINAL for c in final_only for level in c.levels.values())
