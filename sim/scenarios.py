"""Named scenarios: a network profile, Byzantine replicas and a fault schedule.

A fault schedule is a list of (tick, action) pairs; actions are plain tuples
so a scenario reads as data.  Every scenario heals by ``heal_tick``, after
which the liveness phase runs: no new faults, no new requests, and every
submitted request must be answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from finality import DEFAULT_EXPOSURE, ExposureLimit
from sim.network import NetworkProfile

# Actions: ("crash", replica) | ("restart", replica) | ("crash_leader",) |
# ("cut", a, b) one direction | ("isolate", replica) both directions |
# ("partial", replica) cut the replica from everyone but the current leader |
# ("star", hub) every replica reaches the hub and nobody else | ("heal",) |
# ("restart_all",) restart every crashed replica | ("drop_kind", "Accept", replica) lose
# every message of that type to that replica | ("crash_after_persist", replica) the
# replica's next step persists its records and crashes before sending anything
Action = tuple[object, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    summary: str
    network: NetworkProfile = field(default_factory=NetworkProfile)
    byzantine: tuple[str, ...] = ()  # behaviours, given to the highest replica ids
    byzantine_leads: bool = False  # give them the lowest ids instead: replica 0 leads first
    byzantine_ids: tuple[int, ...] = ()  # or name the ids outright
    schedule: tuple[tuple[int, Action], ...] = ()
    workload_ticks: int = 300
    heal_tick: int = 300
    clients: int = 3
    transfers_per_request: int = 4
    liveness_ticks_max: int = 1500
    replicas: int = 4  # unless the run names another n
    provisional_clients: bool = False  # odd-numbered clients ask for PROVISIONAL answers
    exposure: ExposureLimit = DEFAULT_EXPOSURE  # the provisional cap per fallback epoch
    # set_limits commands: (tick, client, ((kind, id, limit), ...)); client 0 is the operator
    limits: tuple[tuple[int, int, tuple[tuple[int, int, int], ...]], ...] = ()


# Amount limits an operator sets early in a run: accounts 1-3 may send at most 300 per
# transfer, and no transfer on ledger 1 may exceed 450 (client amounts are 1..500).
_LIMITS = ((1, 1, 300), (1, 2, 300), (1, 3, 300), (2, 1, 450))


def _isolate(tick: int, *replicas: int) -> tuple[tuple[int, Action], ...]:
    """Schedule entries that isolate each of ``replicas`` at ``tick``."""
    return tuple((tick, ("isolate", r)) for r in replicas)


# Every replica but the leader (0 at the start) reaches only the leader.
_STAR_CUT: tuple[tuple[int, Action], ...] = (
    (40, ("partial", 1)),
    (40, ("partial", 2)),
    (40, ("partial", 3)),
)

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(name="happy", summary="no faults: the normal case only"),
        Scenario(
            name="leader-crash",
            summary="the leader crashes mid-run; a regency change elects the next; it restarts",
            schedule=((60, ("crash_leader",)), (240, ("restart_all",))),
            heal_tick=240,
        ),
        Scenario(
            name="equivocating-leader",
            summary="a Byzantine leader proposes two different blocks to two halves",
            byzantine=("equivocate",),
            byzantine_leads=True,
        ),
        Scenario(
            name="partial-partition-one",
            summary="one replica reaches only the leader, not the others; then heal",
            schedule=((40, ("partial", 1)), (220, ("heal",))),
            heal_tick=220,
        ),
        # ---------------------------------------------------------- fallback mode
        Scenario(
            name="partial-partition",
            summary="n=4, every replica reaches the leader but not each other: BFT stalls, "
            "the fallback commits through the hub; heal and re-certify",
            schedule=(*_STAR_CUT, (400, ("heal",))),
            workload_ticks=460,
            heal_tick=400,
            provisional_clients=True,
        ),
        Scenario(
            name="minority-cut",
            summary="n=7, three replicas cut off: 4 reach each other (a Raft majority, not "
            "q = 5), so BFT stalls while fallback commits; heal",
            replicas=7,
            schedule=(
                *_isolate(40, 4, 5, 6),
                (400, ("heal",)),
            ),
            workload_ticks=460,
            heal_tick=400,
            provisional_clients=True,
        ),
        Scenario(
            name="flapping-partition",
            summary="a star partition comes and goes three times, around a different hub "
            "each time: fallback, re-certify, fallback again",
            schedule=(
                (40, ("star", 0)),
                (330, ("heal",)),
                (440, ("star", 1)),
                (730, ("heal",)),
                (840, ("star", 2)),
                (1130, ("heal",)),
            ),
            workload_ticks=1180,
            heal_tick=1130,
            provisional_clients=True,
        ),
        Scenario(
            name="fallback-leader-crash",
            summary="star partition, fallback commits through the hub, then the hub (the "
            "fallback leader) crashes; after heal the others re-certify what it committed",
            schedule=(*_STAR_CUT, (330, ("crash", 0)), (420, ("heal",)), (560, ("restart", 0))),
            workload_ticks=460,
            heal_tick=560,
            provisional_clients=True,
        ),
        Scenario(
            name="conflicting-suffixes",
            summary="star partition, then the hub is isolated holding entries no majority "
            "has; heal: logs disagree and re-certification settles one suffix",
            schedule=(*_STAR_CUT, (300, ("isolate", 0)), (420, ("heal",))),
            workload_ticks=460,
            heal_tick=420,
            provisional_clients=True,
        ),
        Scenario(
            name="byzantine-fallback-leader",
            summary="the hub of a star partition is Byzantine and leads the fallback: it "
            "shows each follower another block and claims it committed; S1 holds and "
            "the rolled-back value stays under the exposure limit",
            byzantine=("raft-equivocate",),
            byzantine_leads=True,
            schedule=(*_STAR_CUT, (400, ("heal",))),
            workload_ticks=460,
            heal_tick=400,
            provisional_clients=True,
            exposure=ExposureLimit(max_transfers=8, max_amount=1_500),
        ),
        Scenario(
            name="crash-restart-catch-up",
            summary="a replica is down across several checkpoints, restarts and catches up",
            schedule=((30, ("crash", 3)), (260, ("restart", 3))),
            heal_tick=260,
            workload_ticks=320,
        ),
        Scenario(
            name="isolated-decider",
            summary="only replica 3 hears ACCEPTs (and no one hears its catch-up), it cannot "
            "reach the next leader; the regency change must re-propose what 3 decided",
            schedule=(
                (30, ("drop_kind", "Accept", 0)),
                (30, ("drop_kind", "Accept", 1)),
                (30, ("drop_kind", "Accept", 2)),
                (30, ("drop_kind", "Blocks", 0)),
                (30, ("drop_kind", "Blocks", 1)),
                (30, ("drop_kind", "Blocks", 2)),
                (30, ("cut", 3, 1)),
                (170, ("heal",)),
            ),
            heal_tick=170,
        ),
        Scenario(
            name="crash-mid-step",
            summary="replicas die between persisting records and sending messages, then restart",
            schedule=(
                (40, ("crash_after_persist", 0)),
                (90, ("crash_after_persist", 2)),
                (150, ("restart_all",)),
            ),
            heal_tick=150,
        ),
        Scenario(
            name="restart-under-byzantine",
            summary="honest replicas crash mid-step and restart while a Byzantine one forges "
            "and the network loses messages",
            byzantine=("forge",),
            network=NetworkProfile(delay_ticks_max=3, loss=0.05),
            schedule=(
                (30, ("crash_after_persist", 1)),
                (60, ("restart", 1)),
                (90, ("crash_after_persist", 2)),
                (120, ("restart", 2)),
                (150, ("crash_after_persist", 0)),
                (180, ("restart", 0)),
            ),
            heal_tick=180,
        ),
        Scenario(
            name="lossy-network",
            summary="10% loss, 5% duplication and reordering on every link",
            network=NetworkProfile(
                delay_ticks_max=4, loss=0.10, duplication=0.05, reorder_ticks_max=3
            ),
        ),
        Scenario(
            name="byzantine-stopdata",
            summary="the next leader is Byzantine: it lies in SYNC and STOP-DATA after a crash",
            byzantine=("lying-stopdata",),
            byzantine_ids=(1,),
            # ACCEPTs are lost for a while, so write proofs are in flight when the
            # leader crashes and the Byzantine successor has something to lie about.
            schedule=(
                (44, ("drop_kind", "Accept", 1)),
                (44, ("drop_kind", "Accept", 2)),
                (44, ("drop_kind", "Accept", 3)),
                (50, ("crash_leader",)),
                (120, ("heal",)),
                (200, ("restart_all",)),
            ),
            heal_tick=200,
        ),
        Scenario(
            name="forged-messages",
            summary="a Byzantine replica forges senders, flips signature bits, pushes STOPs",
            byzantine=("forge",),
        ),
        Scenario(
            name="replayed-messages",
            summary="a Byzantine replica replays stale messages of others",
            byzantine=("replay",),
            network=NetworkProfile(delay_ticks_max=3, loss=0.02),
        ),
        Scenario(
            name="bad-header-leader",
            summary="a Byzantine leader proposes wrong parent hashes or far-future timestamps",
            byzantine=("bad-header",),
            byzantine_leads=True,
        ),
        Scenario(
            name="restart-in-fallback",
            summary="n=7: two fallback episodes; in the second a follower crashes and "
            "restarts, then the cluster splits 3/4 before healing (its log must survive)",
            replicas=7,
            schedule=(
                *_isolate(40, 4, 5, 6),
                (300, ("heal",)),
                *_isolate(420, 4, 5, 6),
                (750, ("crash", 1)),
                (752, ("restart", 1)),
                (755, ("heal",)),
                *((755, ("cut", a, b)) for a in (0, 2, 3) for b in (1, 4, 5, 6)),
                *((755, ("cut", b, a)) for a in (0, 2, 3) for b in (1, 4, 5, 6)),
                (1200, ("heal",)),
            ),
            workload_ticks=1250,
            heal_tick=1200,
            provisional_clients=True,
            liveness_ticks_max=3000,
        ),
        Scenario(
            name="byzantine-acks",
            summary="star partition; a Byzantine follower acknowledges fallback heights it "
            "never received (the leader must not trust them)",
            byzantine=("huge-ack",),
            schedule=(*_STAR_CUT, (400, ("heal",))),
            workload_ticks=460,
            heal_tick=400,
            provisional_clients=True,
        ),
        Scenario(
            name="poisoned-terms",
            summary="star partition; the Byzantine hub leads the fallback, gives two "
            "followers blocks under a term nobody elected, then falls silent",
            byzantine=("poison-term",),
            byzantine_leads=True,
            schedule=(*_STAR_CUT, (400, ("heal",))),
            workload_ticks=460,
            heal_tick=400,
            provisional_clients=True,
        ),
        Scenario(
            name="amount-limits",
            summary="the operator sets per-account and per-ledger amount limits; a "
            "customer's attempt to change them is refused; transfers over them are denied",
            limits=((20, 0, _LIMITS), (60, 1, ((2, 1, 10**9),))),
        ),
        Scenario(
            name="wrong-verdicts",
            summary="a Byzantine leader runs no agents, so its verdicts differ from everyone "
            "else's: its blocks are refused and a regency change replaces it",
            byzantine=("wrong-verdicts",),
            byzantine_leads=True,
            limits=((20, 0, _LIMITS),),
        ),
        Scenario(
            name="silent-replica",
            summary="a Byzantine replica never sends anything; the rest must still decide",
            byzantine=("silent",),
        ),
    ]
}
