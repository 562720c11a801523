"""Quorum arithmetic for n = 3f + 1 replicas.

Guarantees: any two sets of ``quorum(n)`` replicas intersect in at least
f + 1 replicas, hence in at least one honest one when at most f are
Byzantine.  ``n`` other than 3f+1 (f >= 1) is refused: the protocol's proofs
assume it.
"""

from __future__ import annotations


def faults_tolerated(n: int) -> int:
    if n < 4 or (n - 1) % 3 != 0:
        raise ValueError(f"BFT needs n = 3f + 1 replicas with f >= 1, got n = {n}")
    return (n - 1) // 3


def quorum(n: int) -> int:
    return 2 * faults_tolerated(n) + 1


def weak_quorum(n: int) -> int:
    """f + 1: enough replicas that at least one is honest."""
    return faults_tolerated(n) + 1


def leader_of(regency: int, n: int) -> int:
    return regency % n
