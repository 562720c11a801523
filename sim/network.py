"""A faulty network under a seeded PRNG.

Guarantees: every delivery decision (delay, loss, duplication, partition)
comes from the simulation's one ``random.Random``, so a seed fixes the whole
schedule.  Links are directed: ``block(a, b)`` cuts a -> b only, which gives
asymmetric and partial partitions.  Delays are whole ticks >= 1, so messages
sent in one tick are delivered in a later one, in (due tick, send order).
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Payload = TypeVar("Payload")


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkProfile:
    delay_ticks_min: int = 1
    delay_ticks_max: int = 3
    loss: float = 0.0  # probability a message is dropped
    duplication: float = 0.0  # probability a message is delivered twice
    reorder_ticks_max: int = 0  # extra random delay that reorders messages

    def __post_init__(self) -> None:
        assert 1 <= self.delay_ticks_min <= self.delay_ticks_max
        assert 0.0 <= self.loss < 1.0 and 0.0 <= self.duplication < 1.0


@dataclass(order=True, slots=True)
class _InFlight(Generic[Payload]):
    due: int
    seq: int
    source: str = field(compare=False)
    target: str = field(compare=False)
    payload: Payload = field(compare=False)


class Network(Generic[Payload]):
    def __init__(self, rng: random.Random, profile: NetworkProfile) -> None:
        self.rng = rng
        self.profile = profile
        self.blocked: set[tuple[str, str]] = set()
        self.dropped_kinds: set[tuple[str, str]] = set()  # (message type name, target)
        self._queue: list[_InFlight[Payload]] = []
        self._seq = 0
        self.sent = 0
        self.dropped = 0
        self.duplicated = 0

    def block(self, source: str, target: str) -> None:
        self.blocked.add((source, target))

    def drop_kind(self, kind: str, target: str) -> None:
        """Lose every message of one type to one target (a targeted omission fault)."""
        self.dropped_kinds.add((kind, target))

    def heal(self) -> None:
        self.blocked.clear()
        self.dropped_kinds.clear()

    def send(self, now: int, source: str, target: str, payload: Payload) -> None:
        self.sent += 1
        if (
            (source, target) in self.blocked
            or (type(payload).__name__, target) in self.dropped_kinds
            or self.rng.random() < self.profile.loss
        ):
            self.dropped += 1
            return
        copies = 2 if self.rng.random() < self.profile.duplication else 1
        self.duplicated += copies - 1
        for _ in range(copies):
            delay = self.rng.randint(self.profile.delay_ticks_min, self.profile.delay_ticks_max)
            if self.profile.reorder_ticks_max:
                delay += self.rng.randint(0, self.profile.reorder_ticks_max)
            self._seq += 1
            heapq.heappush(self._queue, _InFlight(now + delay, self._seq, source, target, payload))

    def due(self, now: int) -> list[tuple[str, str, Payload]]:
        """Messages whose time has come; a partition at delivery time also cuts them."""
        ready = []
        while self._queue and self._queue[0].due <= now:
            item = heapq.heappop(self._queue)
            if (item.source, item.target) in self.blocked:
                self.dropped += 1
                continue
            ready.append((item.source, item.target, item.payload))
        return ready

    def in_flight(self) -> int:
        return len(self._queue)
