"""Execution of ordered blocks against the ledger.

Guarantees: ``LedgerExecutor`` applies each request of a block as one ledger
batch, in block order, stamping request k's events after request k-1's, so
timestamps stay unique and increasing; results are one byte per event (the
ledger's result codes all fit).  It is the only object that turns consensus
output into ledger calls.  The agent gate and finality levels join here with
the finality issue.
"""

from __future__ import annotations

from collections.abc import Sequence

from consensus.messages import Request
from consensus.state_machine import Execution
from ledger import DecodeError, Ledger, Transfer, decode_transfers

DECODED_REQUESTS_MAX = 4096

# A request is checked on arrival, again when a block holding it is validated,
# then executed: decode its records once.  Decoding is a pure function of the
# bytes and Transfer values are immutable, so one bounded table serves every
# executor in the process (one per node; four replicas in the simulator).
_decoded: dict[bytes, list[Transfer]] = {}


def _decode(records: bytes) -> list[Transfer]:
    decoded = _decoded.get(records)
    if decoded is None:
        decoded = decode_transfers(records)  # raises DecodeError on bad records
        if len(_decoded) >= DECODED_REQUESTS_MAX:
            _decoded.clear()
        _decoded[records] = decoded
    return decoded


class LedgerExecutor:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def last_timestamp(self) -> int:
        return self.ledger.last_timestamp

    def state_hash(self) -> bytes:
        return self.ledger.state_hash()

    def check_request(self, request: Request) -> str | None:
        try:
            _decode(request.transfers)
        except DecodeError as error:
            return str(error)
        return None

    def execute(self, requests: Sequence[Request], first_timestamp: int) -> Execution:
        assert first_timestamp > self.ledger.last_timestamp
        cursor = first_timestamp
        results = []
        for request in requests:
            transfers = _decode(request.transfers)  # checked before ordering
            batch_timestamp = cursor + len(transfers) - 1
            codes = self.ledger.create_transfers(transfers, batch_timestamp)
            results.append((request.client_id, request.request_number, bytes(codes)))
            cursor = batch_timestamp + 1
        if not requests:
            self.ledger.pulse(first_timestamp)  # time still moves: holds may expire
        return Execution(
            results=tuple(results),
            state_hash=self.ledger.state_hash(),
            last_timestamp=self.ledger.last_timestamp,
        )

    def snapshot(self) -> bytes:
        return self.ledger.snapshot()

    def restore(self, data: bytes, expected_state_hash: bytes) -> None:
        self.ledger = Ledger.restore(data, expected_state_hash=expected_state_hash)
