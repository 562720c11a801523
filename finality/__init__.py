"""The finalization path: agent gate, execution of ordered blocks, exposure limit.

Every decided block goes through one pipeline: the agent gate
(``finality.gate``: deterministic agents decide each transfer against the
parent height; the built-in policy enforces per-account and per-ledger amount
limits set by a replicated command) -> ledger apply (``finality.executor``) ->
results, whose finality level (PROVISIONAL, FINAL; ANCHORED reserved for the
audit chain) is ``consensus.messages.Finality``.  While the cluster runs in
Raft fallback mode the exposure limit (``finality.exposure``) bounds the
provisional value per epoch.
"""

from finality.exposure import (
    DEFAULT_EXPOSURE,
    ExposureLimit,
    ExposureUsage,
    FinalityResult,
    admit_provisional,
)

__all__ = [
    "DEFAULT_EXPOSURE",
    "ExposureLimit",
    "ExposureUsage",
    "FinalityResult",
    "admit_provisional",
]
