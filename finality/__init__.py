"""The finalization path: execution of ordered blocks and the exposure limit.

Owns the agent gate (not built yet), execution of ordered blocks against the
ledger (``finality.executor``), finality levels and the exposure limit that
bounds provisional value while the cluster runs in Raft fallback mode
(``finality.exposure``).
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
