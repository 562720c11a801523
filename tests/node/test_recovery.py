"""Recovery from a WAL snapshot: the compacted records rebuild the very cores the whole
log rebuilds (checked on the persisted records of simulated runs, at every point where
the driver would snapshot), and the snapshot's state encoding round-trips."""

from __future__ import annotations

import random
import typing
from collections import Counter
from collections.abc import Sequence

import pytest

from consensus.effects import CheckpointRecord, PersistRecord
from consensus.mode import ModeController
from node.driver import (
    compact_records,
    decode_replay_state,
    encode_replay_state,
    replay_state_problem,
)
from node.wal import PERSIST_RECORD_TYPES
from sim.simulation import SimConfig, Simulation


def fingerprint(node: ModeController) -> dict[str, object]:
    """Everything a replay rebuilds in the cores (BFT votes at or below the decided
    height excepted: nothing reads them, see ``compact_records``)."""
    bft, raft = node.bft, node.raft
    return {
        "state_hash": bft.sm.state_hash(),
        "state": bft.sm.snapshot(),
        "regency": (bft.regency, bft.stop_sent, bft.install_proof, bft.in_sync),
        "base": (bft.base_height, bft.base_header, bft.base_snapshot, bft.base_checkpoint),
        "decided": (bft.decided_height, bft.last_header, bft.last_certificate, bft.log),
        "votes": {k: v for k, v in bft.votes.items() if k[2] > bft.decided_height},
        "best_proof": bft.best_proof,
        "clients": bft.client_decided,
        "raft": (raft.term, raft.voted_for, raft.base, raft.log, raft.last_election),
        "raft_commit": raft.commit_height,
        "mode": (node.mode, node.epoch, node.resume_fallback),
    }


def rebuild(sim: Simulation, replica: int, records: Sequence[PersistRecord]) -> ModeController:
    """The replica's cores restarted from ``records``, wired exactly as the simulator
    wires them (``_start`` is the simulator's own restart)."""
    sim.disks[replica] = list(records)
    sim._start(replica)
    return sim.controller(replica)


def _driver_snapshots(disk: Sequence[PersistRecord]) -> list[tuple[int, list[PersistRecord]]]:
    """(cut, replay list) wherever the driver snapshots: after each checkpoint record, its
    replay list compacted, as ``Driver._snapshot`` does it, incrementally."""
    replay: list[PersistRecord] = []
    points = []
    for index, record in enumerate(disk):
        replay.append(record)
        if isinstance(record, CheckpointRecord):
            replay = compact_records(replay)
            points.append((index + 1, list(replay)))
    return points


SCENARIOS = [
    ("flapping-partition", 7),  # three fallback episodes: terms, entries, modes, regencies
    ("restart-in-fallback", 2),  # n = 7, a follower restarts in fallback
    ("crash-restart-catch-up", 1),  # a checkpoint installed by state transfer
    ("crash-mid-step", 4),
    ("isolated-decider", 3),  # write proofs at the open height across a regency change
    ("byzantine-stopdata", 5),
]


@pytest.mark.parametrize(("scenario", "seed"), SCENARIOS, ids=[s for s, _ in SCENARIOS])
def test_snapshot_and_tail_rebuild_the_cores_the_whole_log_rebuilds(
    scenario: str, seed: int
) -> None:
    """For every point where the driver snapshots (and a few arbitrary ones), and tails
    of several lengths after it (none, some, the rest of the run): the cores rebuilt
    from the snapshot's records + the tail equal those rebuilt from the log up to the
    tail's end.  An empty tail matters most: later decisions void most records."""
    sim = Simulation(SimConfig(seed=seed, scenario=scenario, checkpoint_interval=4))
    assert sim.run().ok
    disks = {replica: list(disk) for replica, disk in sim.disks.items()}
    rng = random.Random(seed)
    compared = 0
    for replica, disk in disks.items():
        expected: dict[int, dict[str, object]] = {}  # by the tail's end
        points = _driver_snapshots(disk)
        # And a few arbitrary cuts, compacted in one go: the rule must not depend on
        # being applied right after a checkpoint.
        cuts = sorted(rng.sample(range(1, len(disk) + 1), min(4, len(disk))))
        points += [(cut, compact_records(disk[:cut])) for cut in cuts]
        for cut, snapshot in points:
            assert compact_records(snapshot) == snapshot  # idempotent
            for end in sorted({cut, rng.randint(cut, len(disk)), len(disk)}):
                if end not in expected:
                    expected[end] = fingerprint(rebuild(sim, replica, disk[:end]))
                rebuilt = fingerprint(rebuild(sim, replica, snapshot + disk[cut:end]))
                assert rebuilt == expected[end], (scenario, replica, cut, end)
                compared += 1
    assert compared >= len(disks) * 6
    print(f"{scenario}: {compared} rebuilds compared")


def test_the_keep_rule_drops_every_kind_of_record_somewhere() -> None:
    """The equivalence above is only worth something if the rule really drops records of
    every type: in three fallback episodes it does."""
    dropped: Counter[str] = Counter()
    for scenario, seed in SCENARIOS[:1]:
        sim = Simulation(SimConfig(seed=seed, scenario=scenario, checkpoint_interval=4))
        assert sim.run().ok
        for disk in sim.disks.values():
            kept = Counter(type(r).__name__ for r in compact_records(disk))
            for name, count in Counter(type(r).__name__ for r in disk).items():
                dropped[name] += count - kept[name]
    names = {t.__name__ for t in typing.get_args(PersistRecord)}
    assert {name for name, count in dropped.items() if count > 0} == names, dropped


def test_the_compacted_log_is_bounded_by_the_live_state() -> None:
    sim = Simulation(SimConfig(seed=11, scenario="happy", checkpoint_interval=4))
    assert sim.run().ok
    disk = sim.disks[0]
    sizes = [len(replay) for _, replay in _driver_snapshots(disk)]
    assert len(sizes) >= 10 and len(disk) > 20 * max(sizes)
    # One checkpoint, the decided blocks above it, the open instance's records.
    assert max(sizes) <= 4 * 4, sizes


def test_the_replay_state_round_trips_and_refuses_damage() -> None:
    sim = Simulation(SimConfig(seed=5, scenario="fallback-leader-crash"))
    assert sim.run().ok
    records = list(sim.disks[1])
    assert {type(r) for r in records} >= {CheckpointRecord} and len(records) > 50
    state = encode_replay_state(records)
    assert decode_replay_state(state) == records and replay_state_problem(state) is None
    assert decode_replay_state(encode_replay_state([])) == []
    assert all(isinstance(r, PERSIST_RECORD_TYPES) for r in decode_replay_state(state))
    for bad, why in [
        (state[:5], "shorter than the header"),
        (b"XXXXXXXX" + state[8:], "bad magic"),
        (state[:-1], "out of bounds"),
        (state + b"\x00", "after the last record"),
        (state[:8] + (10**6).to_bytes(4, "big") + state[12:], "ends before record"),
    ]:
        problem = replay_state_problem(bad)
        assert problem is not None and why in problem, (why, problem)
