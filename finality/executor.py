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

Every transfer first passes the agent gate (``finality.gate``) against the
state and the artifacts of the parent height; a DENY withholds it (and its
linked chain) with ``DENIED_BY_POLICY``.  The block's non-ALLOW verdicts are
part of the execution, so a leader whose verdicts differ is caught.  A
``set_limits`` request from an operator client changes the artifacts from the
next block on; from anyone else each record gets ``NOT_AN_OPERATOR``.  A
``create_accounts`` request is one ledger batch of accounts, stamped like a
transfer batch; agents do not screen it and it counts against no exposure.

With ``track_changes`` (the node's core executor) it also keeps what each block
changed (``ledger.change``): a rollback of speculation to a state it passed through
undoes blocks instead of restoring the whole ledger, and a read model applies a
decided block's change instead of executing the block again.  Results and state are
the same as without it (``LedgerExecutor`` says why).

Snapshot envelope (only when usage is not zero or limits are set;
little-endian): magic ``AEGISXSN``, version u32 (2), reserved u32 (0),
exposure transfers u64, exposure amount u128 (low u64, high u64), ledger
snapshot length u64, artifacts length u64, the ledger snapshot, the artifacts
(``Artifacts.encode``), then SHA-256 of everything before it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from consensus.messages import OP_CREATE_ACCOUNTS, OP_SET_LIMITS, OP_TRANSFERS, Request
from consensus.state_machine import Execution
from finality.exposure import (
    DEFAULT_EXPOSURE,
    NO_EXPOSURE,
    U64_MAX,
    ExposureLimit,
    ExposureUsage,
    FinalityResult,
    admit_provisional,
    withhold_chains,
)
from finality.gate import (
    ALLOW,
    NO_ARTIFACTS,
    Action,
    AgentGate,
    Artifacts,
    LimitError,
    Verdict,
    decode_limits,
    encode_verdicts,
)
from ledger import (
    Account,
    DecodeError,
    Ledger,
    SnapshotError,
    Transfer,
    decode_accounts,
    decode_transfers,
)
from ledger import change as ledger_change

DECODED_REQUESTS_MAX = 4096
# Each decoded Transfer is an object every full garbage collection walks: 4,096
# requests of 2,000 transfers made them nearly all of a replica's tracked objects and
# its collections 200-450 ms long (bench/README.md).  About eight full blocks' worth
# covers a request from arrival to execution.
DECODED_TRANSFERS_MAX = 65_536
PATH_STEPS_MAX = 40  # blocks of undo kept (tracking): more than two checkpoint intervals
CHANGES_KEPT_MAX = 16  # block changes waiting for a read model (tracking)
VERIFIED_SNAPSHOTS_MAX = 4  # snapshot bytes known to hold their state (tracking)

ENVELOPE_MAGIC = b"AEGISXSN"
ENVELOPE_VERSION = 2
_ENVELOPE_HEADER = struct.Struct("<8sII Q QQ Q Q")
_CHECKSUM_SIZE = 32
_STATE_DOMAIN = b"aegis.finality.state.v1"

# A request is checked on arrival, again when a block holding it is validated,
# then executed: decode its records once.  Decoding is a pure function of the
# bytes and Transfer values are immutable, so one bounded table serves every
# executor in the process (one per node; four replicas in the simulator).
_decoded: dict[bytes, list[Transfer]] = {}
_decoded_transfers = [0]  # how many Transfer values _decoded holds


def _decode(records: bytes) -> list[Transfer]:
    decoded = _decoded.get(records)
    if decoded is None:
        decoded = decode_transfers(records)  # raises DecodeError on bad records
        if (
            len(_decoded) >= DECODED_REQUESTS_MAX
            or _decoded_transfers[0] + len(decoded) > DECODED_TRANSFERS_MAX
        ):
            _decoded.clear()  # a cold table only costs decoding again
            _decoded_transfers[0] = 0
        _decoded[records] = decoded
        _decoded_transfers[0] += len(decoded)
    return decoded


def _state_hash(ledger_hash: bytes, used: ExposureUsage, artifacts: Artifacts) -> bytes:
    if used.is_zero and artifacts.empty:
        return ledger_hash  # the ledger's own hash, as before exposure and limits existed
    return hashlib.sha256(
        _STATE_DOMAIN
        + ledger_hash
        + used.transfers.to_bytes(8, "little")
        + used.amount.to_bytes(16, "little")
        + artifacts.digest
    ).digest()


@dataclass(frozen=True, slots=True)
class BlockChange:
    """What executing one block did to an executor's state (``apply_change``)."""

    parent_state_hash: bytes
    state_hash: bytes
    ledger: ledger_change.LedgerChange
    used: ExposureUsage
    artifacts: Artifacts


@dataclass(frozen=True, slots=True)
class _Step:
    """One block executed on the real ledger: how to undo it, and what it returned."""

    key: tuple[tuple[Request, ...], int, int]  # (requests, first timestamp, fallback term)
    change: ledger_change.LedgerChange
    used_before: ExposureUsage
    artifacts_before: Artifacts
    execution: Execution


class LedgerExecutor:
    """Executes blocks (see the module's guarantees).

    ``track_changes`` (the node's core executor; off in the simulator and in read
    models) keeps, at a cost proportional to what each block changed:

    * the last ``PATH_STEPS_MAX`` blocks executed on this state, with how to undo
      each.  ``restore`` of a snapshot this executor made or verified, to a state on
      that path, then only moves a pointer back along it; ``execute`` of the block the
      path holds next moves it forward and returns the recorded result (execution is a
      pure function of state, requests, first timestamp and fallback term, and the
      state hash commits to the state); anything else first undoes the real state
      down to the pointer (``_materialize``), checked against the state hash.  So the
      BFT core's rollback (restore the checkpoint, replay the decided blocks) costs
      one undo of the speculative block instead of a whole-ledger restore and a
      replay.  Configuration (gate, operators, exposure) must not change meanwhile.
    * the last ``CHANGES_KEPT_MAX`` block changes, for ``take_change``: a read model
      applies them (``apply_change``) instead of executing the block again."""

    def __init__(
        self,
        ledger: Ledger,
        exposure: ExposureLimit = DEFAULT_EXPOSURE,
        operators: frozenset[int] = frozenset(),
        gate: AgentGate | None = None,
        track_changes: bool = False,
    ) -> None:
        assert isinstance(exposure, ExposureLimit)
        self._ledger = ledger
        # Configuration, the same on every replica, not state:
        self.exposure = exposure
        self.operators = operators  # client ids whose set_limits commands take effect
        self.gate = gate or AgentGate()
        # State:
        self._used = NO_EXPOSURE  # what the current fallback epoch has admitted
        self._artifacts = NO_ARTIFACTS  # the limits the agents decide with
        # Change tracking (see the class docstring); the real state is _hashes[-1].
        self.track_changes = track_changes
        self._virtual: int | None = None  # the state is _hashes[_virtual], not yet undone to
        self._hashes: list[bytes] = [self.state_hash()] if track_changes else []
        self._steps: list[_Step] = []  # _steps[i] leads from _hashes[i] to _hashes[i + 1]
        self._ledger_change: ledger_change.LedgerChange | None = None  # end() of the last
        self._changes: dict[tuple[bytes, bytes], BlockChange] = {}
        self._verified: list[tuple[bytes, bytes]] = []  # (snapshot bytes, state hash)
        self.steps_replayed = 0  # executions answered from the path (tracking)
        self.steps_undone = 0
        self.full_restores = 0

    @property
    def ledger(self) -> Ledger:
        self._materialize()
        return self._ledger

    @property
    def artifacts(self) -> Artifacts:
        self._materialize()
        return self._artifacts

    @property
    def exposure_used(self) -> ExposureUsage:
        self._materialize()
        return self._used

    def last_timestamp(self) -> int:
        self._materialize()
        return self._ledger.last_timestamp

    def state_hash(self) -> bytes:
        if self._virtual is not None:
            return self._hashes[self._virtual]
        return _state_hash(self._ledger.state_hash(), self._used, self._artifacts)

    def check_request(self, request: Request) -> str | None:
        try:
            if request.operation == OP_SET_LIMITS:
                decode_limits(request.transfers)
            elif request.operation == OP_CREATE_ACCOUNTS:
                decode_accounts(request.transfers)
            else:
                _decode(request.transfers)
        except (DecodeError, LimitError) as error:
            return str(error)
        return None

    def execute(
        self, requests: Sequence[Request], first_timestamp: int, fallback_term: int = 0
    ) -> Execution:
        if not self.track_changes:
            return self._execute(requests, first_timestamp, fallback_term)
        key = (tuple(requests), first_timestamp, fallback_term)
        position = self._virtual
        if position is not None:
            step = self._steps[position]
            if step.key == key:  # the block the path holds next: its recorded result
                position += 1
                self._virtual = position if position < len(self._steps) else None
                self.steps_replayed += 1
                return step.execution
            self._materialize()
        parent_hash = self.state_hash()
        used, artifacts = self._used, self._artifacts
        ledger_change.begin(self._ledger)
        execution = self._execute(requests, first_timestamp, fallback_term)
        change = self._ledger_change
        assert change is not None
        self._ledger_change = None
        self._steps.append(_Step(key, change, used, artifacts, execution))
        self._hashes.append(execution.state_hash)
        if len(self._steps) > PATH_STEPS_MAX:
            del self._steps[0]
            del self._hashes[0]
        self._changes[(parent_hash, execution.state_hash)] = BlockChange(
            parent_state_hash=parent_hash,
            state_hash=execution.state_hash,
            ledger=change,
            used=self._used,
            artifacts=self._artifacts,
        )
        if len(self._changes) > CHANGES_KEPT_MAX:
            oldest = next(iter(self._changes))
            self._changes.pop(oldest).ledger.forget_chain()
        return execution

    def take_change(self, parent_state_hash: bytes, state_hash: bytes) -> BlockChange | None:
        """The change of a block executed here from ``parent_state_hash`` to ``state_hash``
        (tracking), once; None when not kept."""
        return self._changes.pop((parent_state_hash, state_hash), None)

    def apply_change(self, change: BlockChange) -> None:
        """Go from ``change``'s parent state to its state without executing the block."""
        assert not self.track_changes, "a tracking executor keeps its own path"
        assert self.state_hash() == change.parent_state_hash, "not the change's parent state"
        ledger_change.apply(self._ledger, change.ledger)
        self._used = change.used
        self._artifacts = change.artifacts
        assert self.state_hash() == change.state_hash, "the change did not give its state"

    def _materialize(self) -> None:
        """Undo the real state down to the path's pointer, if it points below the end."""
        position = self._virtual
        if position is None:
            return
        self._virtual = None
        while len(self._steps) > position:
            step = self._steps.pop()
            self._hashes.pop()
            ledger_change.undo(self._ledger, step.change)
            self._used = step.used_before
            self._artifacts = step.artifacts_before
            self.steps_undone += 1
        assert self.state_hash() == self._hashes[-1], "undo did not give the state back"

    def _execute(
        self, requests: Sequence[Request], first_timestamp: int, fallback_term: int
    ) -> Execution:
        assert first_timestamp > self._ledger.last_timestamp
        assert type(fallback_term) is int and fallback_term >= 0
        provisional = fallback_term > 0
        if not provisional:
            self._used = NO_EXPOSURE  # a BFT block ends the fallback epoch
        # The agents see the parent height: the ledger and artifacts before this block.
        parent_artifacts = self._artifacts
        screened: list[list[Verdict]] = []
        for request in requests:
            if request.operation == OP_TRANSFERS:
                transfers = _decode(request.transfers)  # checked before ordering
                screened.append(self.gate.screen(transfers, self._ledger, parent_artifacts))
            else:
                screened.append([])
        cursor = first_timestamp
        results = []
        changes: list[tuple[int, int, int]] = []
        for request, verdicts in zip(requests, screened, strict=True):
            if request.operation == OP_SET_LIMITS:
                codes = self._set_limits(request, changes)
            elif request.operation == OP_CREATE_ACCOUNTS:
                codes, cursor = self._create_accounts(decode_accounts(request.transfers), cursor)
            else:
                codes, cursor = self._apply(
                    _decode(request.transfers), verdicts, cursor, provisional
                )
            results.append((request.client_id, request.request_number, bytes(codes)))
        if cursor == first_timestamp:
            # Nothing reached the ledger (no requests, or every event vetoed); time
            # still moves, so holds may expire and the next block stamps after this one.
            self._ledger.pulse(first_timestamp)
        assert self._ledger.last_timestamp >= first_timestamp
        if changes:
            self._artifacts = parent_artifacts.with_limits(changes)  # from the next block on
        if self.track_changes:
            self._ledger_change = ledger_change.end(self._ledger)
        return Execution(
            results=tuple(results),
            state_hash=self.state_hash(),
            last_timestamp=self._ledger.last_timestamp,
            verdicts=encode_verdicts(
                (index, event, verdict)
                for index, verdicts in enumerate(screened)
                if verdicts.count(ALLOW) != len(verdicts)  # else nothing to encode
                for event, verdict in enumerate(verdicts)
            ),
        )

    def _set_limits(self, request: Request, changes: list[tuple[int, int, int]]) -> list[int]:
        records = decode_limits(request.transfers)  # checked before ordering
        if request.client_id not in self.operators:
            return [int(FinalityResult.NOT_AN_OPERATOR)] * len(records)
        changes.extend(records)
        return [0] * len(records)

    def _create_accounts(self, accounts: Sequence[Account], cursor: int) -> tuple[list[int], int]:
        """Create one request's accounts (checked before ordering); (codes, next cursor)."""
        assert accounts, "a request holds at least one record"
        batch_timestamp = cursor + len(accounts) - 1
        codes = [int(code) for code in self._ledger.create_accounts(accounts, batch_timestamp)]
        assert len(codes) == len(accounts)
        return codes, batch_timestamp + 1

    def _apply(
        self,
        transfers: Sequence[Transfer],
        verdicts: Sequence[Verdict],
        cursor: int,
        provisional: bool,
    ) -> tuple[list[int], int]:
        """Gate, screen (in fallback) and post one request; (codes, next cursor)."""
        if not provisional and transfers and verdicts.count(ALLOW) == len(verdicts):
            # The common case, on every replica for every transfer: no agent objected
            # and no exposure limit applies, so all of them go to the ledger.
            batch_timestamp = cursor + len(transfers) - 1
            results = self._ledger.create_transfers(transfers, batch_timestamp)
            return [int(result) for result in results], batch_timestamp + 1
        denied: list[int | None] = [
            int(FinalityResult.DENIED_BY_POLICY) if v.action == Action.DENY else None
            for v in verdicts
        ]
        vetoes = withhold_chains(transfers, denied) if any(denied) else denied
        passing = [t for t, veto in zip(transfers, vetoes, strict=True) if veto is None]
        if provisional and passing:
            screened, self._used = admit_provisional(passing, self.exposure, self._used)
            it = iter(screened)
            vetoes = [next(it) if veto is None else veto for veto in vetoes]
        admitted = [t for t, veto in zip(transfers, vetoes, strict=True) if veto is None]
        if not admitted:
            return [veto for veto in vetoes if veto is not None], cursor
        batch_timestamp = cursor + len(admitted) - 1
        posted = iter(self._ledger.create_transfers(admitted, batch_timestamp))
        codes = [int(next(posted)) if veto is None else veto for veto in vetoes]
        assert next(posted, None) is None
        return codes, batch_timestamp + 1

    def snapshot(self) -> bytes:
        self._materialize()
        data = self._snapshot()
        if self.track_changes:
            self._remember_verified(data, self.state_hash())
        return data

    def _remember_verified(self, data: bytes, state_hash: bytes) -> None:
        self._verified = [*self._verified, (data, state_hash)][-VERIFIED_SNAPSHOTS_MAX:]

    def _snapshot(self) -> bytes:
        ledger_snapshot = self._ledger.snapshot()
        used, artifacts = self._used, self._artifacts.encode()
        if used.is_zero and not artifacts:
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
                len(artifacts),
            )
            + ledger_snapshot
            + artifacts
        )
        return body + hashlib.sha256(body).digest()

    def restore(self, data: bytes, expected_state_hash: bytes) -> None:
        """Replace the state; raises ``SnapshotError`` (a ValueError) on bad bytes.

        Tracking: when ``data`` is a snapshot this executor made or restored (the very
        object, so its bytes are known to hold ``expected_state_hash``) and that state
        is on the path, only the path's pointer moves (see the class docstring)."""
        if self.track_changes and any(
            known is data and known_hash == expected_state_hash
            for known, known_hash in self._verified
        ):
            for position in range(len(self._hashes) - 1, -1, -1):
                if self._hashes[position] == expected_state_hash:
                    self._virtual = position if position < len(self._steps) else None
                    return
        self._restore(data, expected_state_hash)
        self.full_restores += 1
        if self.track_changes:
            self._virtual = None
            self._steps = []
            self._hashes = [expected_state_hash]
            self._remember_verified(data, expected_state_hash)

    def _restore(self, data: bytes, expected_state_hash: bytes) -> None:
        if type(data) is not bytes:
            raise SnapshotError(f"snapshot must be bytes, not {type(data).__name__}")
        if data.startswith(ENVELOPE_MAGIC):
            ledger_snapshot, used, artifacts = _open_envelope(data)
            ledger = Ledger.restore(ledger_snapshot)
            state_hash = _state_hash(ledger.state_hash(), used, artifacts)
            if state_hash != expected_state_hash:
                raise SnapshotError(
                    f"snapshot state hash {state_hash.hex()} is not the expected "
                    f"{bytes(expected_state_hash).hex()}"
                )
        else:
            ledger = Ledger.restore(data, expected_state_hash=expected_state_hash)
            used, artifacts = NO_EXPOSURE, NO_ARTIFACTS
        self._ledger = ledger
        self._used = used
        self._artifacts = artifacts


def _open_envelope(data: bytes) -> tuple[bytes, ExposureUsage, Artifacts]:
    """(ledger snapshot, exposure usage, artifacts) from an envelope; raises SnapshotError."""
    if len(data) < _ENVELOPE_HEADER.size + _CHECKSUM_SIZE:
        raise SnapshotError(f"executor snapshot is truncated: {len(data)} bytes")
    body, checksum = data[:-_CHECKSUM_SIZE], data[-_CHECKSUM_SIZE:]
    if hashlib.sha256(body).digest() != checksum:
        raise SnapshotError("executor snapshot checksum mismatch: the bytes are corrupt")
    (magic, version, reserved, transfers, amount_low, amount_high,
     ledger_size, artifacts_size) = _ENVELOPE_HEADER.unpack_from(body)  # fmt: skip
    assert magic == ENVELOPE_MAGIC
    if version != ENVELOPE_VERSION or reserved != 0:
        raise SnapshotError(f"unsupported executor snapshot version {version}.{reserved}")
    if _ENVELOPE_HEADER.size + ledger_size + artifacts_size != len(body):
        raise SnapshotError("executor snapshot length does not match its parts")
    used = ExposureUsage(transfers, amount_low | amount_high << 64)  # widths fit by layout
    ledger_end = _ENVELOPE_HEADER.size + ledger_size
    try:
        artifacts = Artifacts.decode(body[ledger_end:])
    except LimitError as error:
        raise SnapshotError(f"executor snapshot artifacts: {error}") from None
    if used.is_zero and artifacts.empty:
        raise SnapshotError("executor snapshot with nothing beyond the ledger is not canonical")
    return body[_ENVELOPE_HEADER.size : ledger_end], used, artifacts
