"""What the consensus core needs from the replicated state machine.

Guarantees: the core drives any ``StateMachine`` only through this protocol,
in decided (or speculatively proposed) order; it never reaches into the
ledger.  ``execute`` is deterministic: the same requests on the same state at
the same first timestamp (and fallback term) give the same results table and
state hash on every replica.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from consensus.messages import Request


@dataclass(frozen=True, slots=True)
class Execution:
    results: tuple[tuple[int, int, bytes], ...]  # (client, request number, one code per event)
    state_hash: bytes
    last_timestamp: int
    verdicts: bytes = b""  # the agent gate's non-ALLOW verdicts, as the block carries them


class StateMachine(Protocol):
    def last_timestamp(self) -> int: ...

    def state_hash(self) -> bytes: ...

    def check_request(self, request: Request) -> str | None:
        """Why the request can never execute (undecodable records), or None."""
        ...

    def execute(
        self, requests: Sequence[Request], first_timestamp: int, fallback_term: int = 0
    ) -> Execution:
        """Apply a decided (or proposed) block; ``first_timestamp`` > ``last_timestamp()``.

        ``fallback_term`` is the term of the fallback leader that built the block,
        0 for a block built in BFT mode.  A fallback block is provisional: its
        transfers count against the exposure limit of the current fallback epoch
        and those over it are refused with a result code; a BFT block ends the
        epoch.  The term is part of the block, so execution stays deterministic.
        """
        ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes, expected_state_hash: bytes) -> None:
        """Replace the state; raises ValueError when the bytes do not hold that state."""
        ...
