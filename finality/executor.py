"""Execution of ordered blocks against the ledger.

Guarantees: ``LedgerExecutor`` applies each request of a block as one ledger
batch, in block order, stamping request k's events after request k-1's, so
timestamps stay unique and increasing, and every block advances the ledger's
last timestamp; results are one byte per event (the ledger's result codes and
``FinalityResult`` all fit).  It is the only object that turns consensus
output into ledger calls.

A block built in Raft fallback mode (``fallback_term > 0``) is provisional:
its transfers are screened against the exposure limit before the ledger sees
them (``finality.exposure``), and vetoed ones — with their linked chains —
never reach the ledger.  The epoch's usage is replicated state: a block with
``fallback_term == 0`` resets it, and ``state_hash``, ``snapshot`` and
``restore`` cover it.  With zero usage the hash and the snapshot are the
ledger's own, byte for byte.

Snapshot envelope (only when usage is not zero; little-endian): magic
``AEGISXSN``, version u32 (1), reserved u32 (0), exposure transfers u64,
exposure amount u128 (low u64, high u64), ledger snapshot length u64, the
ledger snapshot, then SHA-256 of everything before it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from consensus.messages import Request
from consensus.state_machine import Execution
from finality.exposure import (
    DEFAULT_EXPOSURE,
    NO_EXPOSURE,
    U64_MAX,
    ExposureLimit,
    ExposureUsage,
    admit_provisional,
)
from ledger import DecodeError, Ledger, SnapshotError, Transfer, decode_transfers

DECODED_REQUESTS_MAX = 4096

ENVELOPE_MAGIC = b"AEGISXSN"
ENVELOPE_VERSION = 1
_ENVELOPE_HEADER = struct.Struct("<8sII Q QQ Q")
_CHECKSUM_SIZE = 32
_STATE_DOMAIN = b"aegis.finality.state.v1"

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


def _state_hash(ledger_hash: bytes, used: ExposureUsage) -> bytes:
    if used.is_zero:
        return ledger_hash  # the ledger's own hash, as before the exposure limit existed
    return hashlib.sha256(
        _STATE_DOMAIN
        + ledger_hash
        + used.transfers.to_bytes(8, "little")
        + used.amount.to_bytes(16, "little")
    ).digest()


class LedgerExecutor:
    def __init__(self, ledger: Ledger, exposure: ExposureLimit = DEFAULT_EXPOSURE) -> None:
        assert isinstance(exposure, ExposureLimit)
        self.ledger = ledger
        self.exposure = exposure  # configuration: the same on every replica, not state
        self._used = NO_EXPOSURE  # state: what the current fallback epoch has admitted

    @property
    def exposure_used(self) -> ExposureUsage:
        return self._used

    def last_timestamp(self) -> int:
        return self.ledger.last_timestamp

    def state_hash(self) -> bytes:
        return _state_hash(self.ledger.state_hash(), self._used)

    def check_request(self, request: Request) -> str | None:
        try:
            _decode(request.transfers)
        except DecodeError as error:
            return str(error)
        return None

    def execute(
        self, requests: Sequence[Request], first_timestamp: int, fallback_term: int = 0
    ) -> Execution:
        assert first_timestamp > self.ledger.last_timestamp
        assert type(fallback_term) is int and fallback_term >= 0
        provisional = fallback_term > 0
        if not provisional:
            self._used = NO_EXPOSURE  # a BFT block ends the fallback epoch
        cursor = first_timestamp
        results = []
        for request in requests:
            transfers = _decode(request.transfers)  # checked before ordering
            if provisional:
                codes, cursor = self._execute_provisional(transfers, cursor)
            else:
                batch_timestamp = cursor + len(transfers) - 1
                codes = list(self.ledger.create_transfers(transfers, batch_timestamp))
                cursor = batch_timestamp + 1
            assert len(codes) == len(transfers)
            results.append((request.client_id, request.request_number, bytes(codes)))
        if cursor == first_timestamp:
            # Nothing reached the ledger (no requests, or every event vetoed); time
            # still moves, so holds may expire and the next block stamps after this one.
            self.ledger.pulse(first_timestamp)
        assert self.ledger.last_timestamp >= first_timestamp
        return Execution(
            results=tuple(results),
            state_hash=self.state_hash(),
            last_timestamp=self.ledger.last_timestamp,
        )

    def _execute_provisional(
        self, transfers: Sequence[Transfer], cursor: int
    ) -> tuple[list[int], int]:
        """Screen one request, post the admitted events as one batch; (codes, next cursor)."""
        verdicts, used = admit_provisional(transfers, self.exposure, self._used)
        admitted = [t for t, verdict in zip(transfers, verdicts, strict=True) if verdict is None]
        self._used = used
        if not admitted:
            codes = [verdict for verdict in verdicts if verdict is not None]
            return codes, cursor
        batch_timestamp = cursor + len(admitted) - 1
        posted = iter(self.ledger.create_transfers(admitted, batch_timestamp))
        codes = [int(next(posted)) if verdict is None else verdict for verdict in verdicts]
        assert next(posted, None) is None
        return codes, batch_timestamp + 1

    def snapshot(self) -> bytes:
        ledger_snapshot = self.ledger.snapshot()
        used = self._used
        if used.is_zero:
            return ledger_snapshot
        body = (
            _ENVELOPE_HEADER.pack(
                ENVELOPE_MAGIC,
                ENVELOPE_VERSION,
                0,
                used.transfers,
                used.amount & U64_MAX,
                used.amount >> 64,
                len(ledger_snapshot),
            )
            + ledger_snapshot
        )
        return body + hashlib.sha256(body).digest()

    def restore(self, data: bytes, expected_state_hash: bytes) -> None:
        """Replace the state; raises ``SnapshotError`` (a ValueError) on bad bytes."""
        if type(data) is not bytes:
            raise SnapshotError(f"snapshot must be bytes, not {type(data).__name__}")
        if data.startswith(ENVELOPE_MAGIC):
            ledger_snapshot, used = _open_envelope(data)
            ledger = Ledger.restore(ledger_snapshot)
            state_hash = _state_hash(ledger.state_hash(), used)
            if state_hash != expected_state_hash:
                raise SnapshotError(
                    f"snapshot state hash {state_hash.hex()} is not the expected "
                    f"{bytes(expected_state_hash).hex()}"
                )
        else:
            ledger = Ledger.restore(data, expected_state_hash=expected_state_hash)
            used = NO_EXPOSURE
        self.ledger = ledger
        self._used = used


def _open_envelope(data: bytes) -> tuple[bytes, ExposureUsage]:
    """(ledger snapshot, exposure usage) from an envelope; raises SnapshotError."""
    if len(data) < _ENVELOPE_HEADER.size + _CHECKSUM_SIZE:
        raise SnapshotError(f"exposure snapshot is truncated: {len(data)} bytes")
    body, checksum = data[:-_CHECKSUM_SIZE], data[-_CHECKSUM_SIZE:]
    if hashlib.sha256(body).digest() != checksum:
        raise SnapshotError("exposure snapshot checksum mismatch: the bytes are corrupt")
    (magic, version, reserved, transfers, amount_low, amount_high,
     ledger_size) = _ENVELOPE_HEADER.unpack_from(body)  # fmt: skip
    assert magic == ENVELOPE_MAGIC
    if version != ENVELOPE_VERSION or reserved != 0:
        raise SnapshotError(f"unsupported exposure snapshot version {version}.{reserved}")
    if _ENVELOPE_HEADER.size + ledger_size != len(body):
        raise SnapshotError("exposure snapshot length does not match its ledger snapshot size")
    used = ExposureUsage(transfers, amount_low | amount_high << 64)  # widths fit by layout
    if used.is_zero:
        raise SnapshotError("exposure snapshot with zero usage is not canonical")
    return body[_ENVELOPE_HEADER.size :], used
