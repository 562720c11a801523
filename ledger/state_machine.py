"""The double-entry state machine: accounts, transfers and their result codes.

Guarantees (checked by the tests, several asserted here as they run):

* TigerBeetle semantics: every event gets exactly one result code, checks run
  in TigerBeetle's order of precedence, a failed event changes nothing, a
  linked chain applies all-or-nothing, and a retried id returns the original
  outcome (``exists*``, or ``id_already_failed`` after a transient failure).
* Per ledger, sum(debits_posted) == sum(credits_posted) and
  sum(debits_pending) == sum(credits_pending) after every batch.
* Determinism: the state is a pure function of the sequence of
  (batch, timestamp) calls.  No clock, no randomness, no IO; iteration over
  hash containers never reaches anything replicated.
* ``state_hash()`` commits to the whole state (accounts, transfers, pending
  statuses, balance history, failed ids, last timestamp) and is maintained
  incrementally; ``snapshot()``/``restore()`` round-trip it exactly.

Time: each call carries a batch timestamp T (nanoseconds) and event i of n is
stamped T - n + i + 1, so timestamps are unique and strictly increasing across
accounts and transfers.  Pending transfers whose timeout has passed by the
first event of a batch are released before the batch runs, in order of
(expiry, creation); a post or void inside a batch also checks expiry against
its own timestamp.  Expiry creates no transfer, as in TigerBeetle.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import struct
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol, TypeVar

from ledger.codec import _BALANCE, _RECORD, decode_transfer
from ledger.commitment import LeafCommitment
from ledger.results import (
    TRANSIENT_TRANSFER_RESULTS,
    CreateAccountResult,
    CreateTransferResult,
)
from ledger.types import (
    ACCOUNT_FILTER_FLAGS_KNOWN,
    ACCOUNT_FLAGS_KNOWN,
    BATCH_EVENTS_MAX,
    NANOSECONDS_PER_SECOND,
    TRANSFER_FLAGS_KNOWN,
    U128_MAX,
    Account,
    AccountBalance,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    Transfer,
    TransferFlags,
)

# The top bit of a u64 timestamp is reserved (TigerBeetle uses it as an LSM
# tombstone); keeping the same range keeps records interchangeable.
TIMESTAMP_MAX: Final = (1 << 63) - 1
_MASK64: Final = (1 << 64) - 1

_A = CreateAccountResult
_T = CreateTransferResult
_OK = CreateTransferResult.OK  # a module constant: enum attribute lookups cost ~90 ns

_A_LINKED = int(AccountFlags.LINKED)
_A_DMNEC = int(AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)
_A_CMNED = int(AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS)
_A_HISTORY = int(AccountFlags.HISTORY)
_A_CLOSED = int(AccountFlags.CLOSED)

_T_LINKED = int(TransferFlags.LINKED)
_T_PENDING = int(TransferFlags.PENDING)
_T_POST = int(TransferFlags.POST_PENDING_TRANSFER)
_T_VOID = int(TransferFlags.VOID_PENDING_TRANSFER)
_T_BAL_DEBIT = int(TransferFlags.BALANCING_DEBIT)
_T_BAL_CREDIT = int(TransferFlags.BALANCING_CREDIT)
_T_CLOSE_DEBIT = int(TransferFlags.CLOSING_DEBIT)
_T_CLOSE_CREDIT = int(TransferFlags.CLOSING_CREDIT)
_T_POST_OR_VOID = _T_POST | _T_VOID
_T_CLOSING = _T_CLOSE_DEBIT | _T_CLOSE_CREDIT
_T_FLAGS_NOT_WITH_POST_OR_VOID = (
    _T_PENDING | _T_BAL_DEBIT | _T_BAL_CREDIT | _T_CLOSE_DEBIT | _T_CLOSE_CREDIT
)

STATUS_PENDING: Final = 1
STATUS_POSTED: Final = 2
STATUS_VOIDED: Final = 3
STATUS_EXPIRED: Final = 4

_STATE_DOMAIN: Final = b"aegis.ledger.state.v1"
_BALANCES = struct.Struct("<8Q")
_PENDING_LEAF = struct.Struct("<QB")
_ACCOUNT_TAIL = struct.Struct("<QQQIIIHHQ")
assert 16 + _BALANCES.size + _ACCOUNT_TAIL.size == 128


_T_Leaf = TypeVar("_T_Leaf")


class _Event(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def timestamp(self) -> int: ...


class LedgerError(ValueError):
    """The caller broke the API contract (batch too long, time going backwards).

    Raised before anything changes.  Domain outcomes are never raised: they
    are result codes.
    """


class _AccountState:
    """Mutable account plus its indexes.  Never leaves this module."""

    __slots__ = (
        "_record_head",
        "_record_tail",
        "code",
        "credits_pending",
        "credits_posted",
        "debits_pending",
        "debits_posted",
        "flags",
        "history",
        "id",
        "index",
        "ledger",
        "timestamp",
        "transfer_timestamps",
        "user_data_32",
        "user_data_64",
        "user_data_128",
    )

    def __init__(self, account: Account, timestamp: int, index: int) -> None:
        self.id = account.id
        self.debits_pending = 0
        self.debits_posted = 0
        self.credits_pending = 0
        self.credits_posted = 0
        self.user_data_128 = account.user_data_128
        self.user_data_64 = account.user_data_64
        self.user_data_32 = account.user_data_32
        self.ledger = account.ledger
        self.code = account.code
        self.flags = account.flags
        self.timestamp = timestamp
        self.index = index
        self.transfer_timestamps: list[int] = []
        # (timestamp, debits_pending, debits_posted, credits_pending, credits_posted)
        self.history: list[tuple[int, int, int, int, int]] | None = (
            [] if account.flags & _A_HISTORY else None
        )
        # The record's bytes around the balances only change with the flags:
        # cache them, since the state hash re-encodes every touched account.
        self._record_head = account.id.to_bytes(16, "little")
        self._record_tail = b""
        self.set_flags(account.flags)

    def set_flags(self, flags: int) -> None:
        assert not flags & ~ACCOUNT_FLAGS_KNOWN
        self.flags = flags
        self._record_tail = _ACCOUNT_TAIL.pack(
            self.user_data_128 & _MASK64, self.user_data_128 >> 64, self.user_data_64,
            self.user_data_32, 0, self.ledger, self.code, flags, self.timestamp,
        )  # fmt: skip

    def balances(self) -> tuple[int, int, int, int]:
        return (self.debits_pending, self.debits_posted, self.credits_pending, self.credits_posted)

    def record(self) -> bytes:
        """The canonical 128-byte encoding (as ``ledger.codec.encode_account``)."""
        dp = self.debits_pending
        dpo = self.debits_posted
        cp = self.credits_pending
        cpo = self.credits_posted
        return (
            self._record_head
            + _BALANCES.pack(
                dp & _MASK64,
                dp >> 64,
                dpo & _MASK64,
                dpo >> 64,
                cp & _MASK64,
                cp >> 64,
                cpo & _MASK64,
                cpo >> 64,
            )
            + self._record_tail
        )

    def to_account(self) -> Account:
        return Account(
            id=self.id,
            debits_pending=self.debits_pending,
            debits_posted=self.debits_posted,
            credits_pending=self.credits_pending,
            credits_posted=self.credits_posted,
            user_data_128=self.user_data_128,
            user_data_64=self.user_data_64,
            user_data_32=self.user_data_32,
            ledger=self.ledger,
            code=self.code,
            flags=self.flags,
            timestamp=self.timestamp,
        )


class _Pending:
    """A pending (two-phase) transfer as stored, and its status."""

    __slots__ = (
        "amount",
        "code",
        "credit_account_id",
        "debit_account_id",
        "expires_at",
        "flags",
        "id",
        "index",
        "ledger",
        "status",
        "timestamp",
        "user_data_32",
        "user_data_64",
        "user_data_128",
    )

    def __init__(self, t: Transfer, amount: int, timestamp: int, index: int) -> None:
        self.id = t.id
        self.debit_account_id = t.debit_account_id
        self.credit_account_id = t.credit_account_id
        self.amount = amount  # after balancing clamps
        self.user_data_128 = t.user_data_128
        self.user_data_64 = t.user_data_64
        self.user_data_32 = t.user_data_32
        self.ledger = t.ledger
        self.code = t.code
        self.flags = t.flags
        self.timestamp = timestamp
        self.expires_at = timestamp + t.timeout * NANOSECONDS_PER_SECOND if t.timeout else 0
        self.status = STATUS_PENDING
        self.index = index

    def leaf(self) -> bytes:
        return _PENDING_LEAF.pack(self.timestamp, self.status)


def _pack_transfer(
    t: Transfer, debit_id: int, credit_id: int, amount: int, timeout: int, ledger: int, code: int,
    user_data_128: int, user_data_64: int, user_data_32: int, timestamp: int,
) -> bytes:  # fmt: skip
    return _RECORD.pack(
        t.id & _MASK64, t.id >> 64,
        debit_id & _MASK64, debit_id >> 64,
        credit_id & _MASK64, credit_id >> 64,
        amount & _MASK64, amount >> 64,
        t.pending_id & _MASK64, t.pending_id >> 64,
        user_data_128 & _MASK64, user_data_128 >> 64,
        user_data_64, user_data_32, timeout, ledger, code, t.flags, timestamp,
    )  # fmt: skip


class Ledger:
    """One replica's ledger.  Drive it with ordered batches; read it with queries."""

    def __init__(self) -> None:
        self._accounts: dict[int, _AccountState] = {}
        self._account_order: list[_AccountState] = []
        self._transfer_timestamp: dict[int, int] = {}  # id -> timestamp
        self._transfer_record: dict[int, bytes] = {}  # timestamp -> canonical record
        self._pending: dict[int, _Pending] = {}  # pending transfer id -> status
        self._pending_order: list[_Pending] = []
        self._expiries: list[tuple[int, int, int]] = []  # heap of (expires_at, timestamp, id)
        self._failed: dict[int, int] = {}  # id -> timestamp of the transient failure
        self._last_timestamp = 0
        # Linked-chain undo journal; None outside a chain (the common, fast case).
        self._journal: list[tuple[object, ...]] | None = None
        # State hash machinery: dirty sets and the not-yet-folded chain entries.
        self._dirty_accounts: set[int] = set()
        self._dirty_pending: set[int] = set()
        self._chain_entries: list[bytes] = []
        self._chain_mark = 0  # len(_chain_entries) when the open linked chain began
        self._chain = hashlib.sha256(b"aegis.ledger.history.v1")
        self._accounts_commitment = LeafCommitment(b"aegis.ledger.accounts.v1", 128)
        self._pending_commitment = LeafCommitment(b"aegis.ledger.pending.v1", 9)
        # An open ``ledger.change`` capture: where it began, and the history-chain
        # bytes folded since (None when no capture is open, the default).
        self._change_base: Any = None
        self._chain_log: list[bytes] | None = None
        # ``ledger.snapshot``'s transfers section so far: the records of the first
        # ``_snapshot_transfers_count`` transfers (dict order is timestamp order).
        self._snapshot_transfers = bytearray()
        self._snapshot_transfers_count = 0

    # ------------------------------------------------------------------ time

    @property
    def last_timestamp(self) -> int:
        return self._last_timestamp

    def _begin_batch(self, count: int, timestamp: int) -> int:
        """Validate the call, release expired pending transfers; return first event ts."""
        if count > BATCH_EVENTS_MAX:
            raise LedgerError(f"batch of {count} events exceeds the limit of {BATCH_EVENTS_MAX}")
        if type(timestamp) is not int or timestamp > TIMESTAMP_MAX:
            raise LedgerError(f"batch timestamp {timestamp!r} is not an int in 1..{TIMESTAMP_MAX}")
        first = timestamp - count + 1
        if first <= self._last_timestamp or (count == 0 and timestamp <= self._last_timestamp):
            raise LedgerError(
                f"batch timestamp {timestamp} for {count} events does not advance past "
                f"the last timestamp {self._last_timestamp}"
            )
        self._expire_pending(first - 1)
        return first

    def pulse(self, timestamp: int) -> None:
        """Advance time without events: release every pending transfer expired by then."""
        self._begin_batch(0, timestamp)
        self._last_timestamp = timestamp

    def _expire_pending(self, now: int) -> None:
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, created, pending_id = heapq.heappop(expiries)
            pending = self._pending.get(pending_id)
            # Lazy deletion: posted, voided and rolled-back entries stay in the heap.  A
            # rolled-back pending transfer's id may be used again, by a later transfer
            # with its own expiry: the entry must name this very transfer (its stamp).
            if pending is None or pending.status != STATUS_PENDING or pending.timestamp != created:
                continue
            p = pending
            dr = self._accounts[p.debit_account_id]
            cr = self._accounts[p.credit_account_id]
            dr.debits_pending -= p.amount
            cr.credits_pending -= p.amount
            assert dr.debits_pending >= 0 and cr.credits_pending >= 0
            if p.flags & _T_CLOSE_DEBIT:
                dr.set_flags(dr.flags & ~_A_CLOSED)
            if p.flags & _T_CLOSE_CREDIT:
                cr.set_flags(cr.flags & ~_A_CLOSED)
            pending.status = STATUS_EXPIRED
            self._dirty_accounts.add(dr.index)
            self._dirty_accounts.add(cr.index)
            self._dirty_pending.add(pending.index)

    # ------------------------------------------------------- linked chains

    def _chain_open(self) -> None:
        assert self._journal is None
        self._journal = []
        self._chain_mark = len(self._chain_entries)

    def _chain_close(self, persist: bool) -> None:
        journal = self._journal
        assert journal is not None
        self._journal = None
        if persist:
            return
        del self._chain_entries[self._chain_mark :]
        for entry in reversed(journal):
            self._undo(entry)

    def _undo(self, entry: tuple[object, ...]) -> None:
        match entry:
            case ("account_balances", _AccountState() as a, tuple() as saved, int() as timestamp):
                (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted,
                 flags) = saved  # fmt: skip
                a.set_flags(flags)
                self._dirty_accounts.add(a.index)
                if a.history and a.history[-1][0] == timestamp:
                    a.history.pop()
                if a.transfer_timestamps and a.transfer_timestamps[-1] == timestamp:
                    a.transfer_timestamps.pop()
            case ("account_created", _AccountState() as a):
                assert self._account_order[-1] is a
                self._account_order.pop()
                del self._accounts[a.id]
            case ("transfer_created", int() as transfer_id, int() as timestamp):
                del self._transfer_timestamp[transfer_id]
                del self._transfer_record[timestamp]
            case ("pending_created", _Pending() as pending):
                assert self._pending_order[-1] is pending
                self._pending_order.pop()
                del self._pending[pending.id]
            case ("pending_status", _Pending() as pending, int() as status):
                pending.status = status
                self._dirty_pending.add(pending.index)
            case _:
                raise AssertionError(f"unknown journal entry {entry!r}")

    def _run_batch(
        self,
        events: Sequence[_Event],
        timestamp: int,
        create: Callable[[Any, int], int],
        result_type: type[CreateAccountResult] | type[CreateTransferResult],
        linked_flag: int,
        transient: frozenset[CreateTransferResult],
    ) -> list[int]:
        """TigerBeetle's execute loop: linked chains, positional timestamps, results."""
        count = len(events)
        first = self._begin_batch(count, timestamp)
        ok: int = result_type(0)
        results: list[int] = [ok] * count
        linked_event_failed: int = result_type(1)
        chain_open_result: int = result_type(2)
        timestamp_must_be_zero: int = result_type(3)
        chain_start = -1
        chain_broken = False
        create_event = create
        for index, event in enumerate(events):
            linked = event.flags & linked_flag
            if not linked and chain_start < 0 and not event.timestamp:
                # The common case: an event outside any chain.
                result = create_event(event, first + index)
                if result != ok:
                    results[index] = result
                    if result in transient:
                        self._remember_failure(event.id, first + index)
                continue
            if linked and chain_start < 0:
                chain_start = index
                assert not chain_broken
                self._chain_open()
            if linked and index == count - 1:
                result = chain_open_result
            elif chain_broken:
                result = linked_event_failed
            elif event.timestamp != 0:
                result = timestamp_must_be_zero
            else:
                result = create_event(event, first + index)
            results[index] = result
            if result != ok:
                if chain_start >= 0 and not chain_broken:
                    chain_broken = True
                    self._chain_close(persist=False)
                    for chained in range(chain_start, index):
                        results[chained] = linked_event_failed
                if result in transient:
                    self._remember_failure(event.id, first + index)
            if chain_start >= 0 and (not linked or result == chain_open_result):
                if not chain_broken:
                    self._chain_close(persist=True)
                chain_start = -1
                chain_broken = False
        assert self._journal is None
        self._last_timestamp = timestamp
        self._fold_chain_entries()
        return results

    def _remember_failure(self, transfer_id: int, timestamp: int) -> None:
        # Outside the chain journal on purpose: a failure survives its chain's rollback.
        assert transfer_id not in self._failed and transfer_id not in self._transfer_timestamp
        self._failed[transfer_id] = timestamp
        self._chain_entries.append(
            b"F" + transfer_id.to_bytes(16, "little") + timestamp.to_bytes(8, "little")
        )

    # ------------------------------------------------------------ accounts

    def create_accounts(
        self, accounts: Sequence[Account], timestamp: int
    ) -> list[CreateAccountResult]:
        """Create accounts; one result per event, in order."""
        results = self._run_batch(
            accounts, timestamp, self._create_account, CreateAccountResult, _A_LINKED, frozenset()
        )
        return [CreateAccountResult(r) for r in results]

    def _create_account(self, a: Account, timestamp: int) -> CreateAccountResult:
        if a.flags & ~ACCOUNT_FLAGS_KNOWN:
            return _A.RESERVED_FLAG
        if a.id == 0:
            return _A.ID_MUST_NOT_BE_ZERO
        if a.id == U128_MAX:
            return _A.ID_MUST_NOT_BE_INT_MAX
        existing = self._accounts.get(a.id)
        if existing is not None:
            return self._account_exists(a, existing)
        if a.flags & _A_DMNEC and a.flags & _A_CMNED:
            return _A.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if a.debits_pending != 0:
            return _A.DEBITS_PENDING_MUST_BE_ZERO
        if a.debits_posted != 0:
            return _A.DEBITS_POSTED_MUST_BE_ZERO
        if a.credits_pending != 0:
            return _A.CREDITS_PENDING_MUST_BE_ZERO
        if a.credits_posted != 0:
            return _A.CREDITS_POSTED_MUST_BE_ZERO
        if a.ledger == 0:
            return _A.LEDGER_MUST_NOT_BE_ZERO
        if a.code == 0:
            return _A.CODE_MUST_NOT_BE_ZERO
        state = _AccountState(a, timestamp, len(self._account_order))
        self._accounts[a.id] = state
        self._account_order.append(state)
        self._dirty_accounts.add(state.index)
        if self._journal is not None:
            self._journal.append(("account_created", state))
        return _A.OK

    @staticmethod
    def _account_exists(a: Account, e: _AccountState) -> CreateAccountResult:
        # `closed` may have changed since creation; TigerBeetle compares the
        # stored flags as they are now, and so do we.
        if a.flags != e.flags:
            return _A.EXISTS_WITH_DIFFERENT_FLAGS
        if a.user_data_128 != e.user_data_128:
            return _A.EXISTS_WITH_DIFFERENT_USER_DATA_128
        if a.user_data_64 != e.user_data_64:
            return _A.EXISTS_WITH_DIFFERENT_USER_DATA_64
        if a.user_data_32 != e.user_data_32:
            return _A.EXISTS_WITH_DIFFERENT_USER_DATA_32
        if a.ledger != e.ledger:
            return _A.EXISTS_WITH_DIFFERENT_LEDGER
        if a.code != e.code:
            return _A.EXISTS_WITH_DIFFERENT_CODE
        return _A.EXISTS

    # ----------------------------------------------------------- transfers

    def create_transfers(
        self, transfers: Sequence[Transfer], timestamp: int
    ) -> list[CreateTransferResult]:
        """Create transfers; one result per event, in order."""
        results = self._run_batch(
            transfers,
            timestamp,
            self._create_transfer,
            CreateTransferResult,
            _T_LINKED,
            TRANSIENT_TRANSFER_RESULTS,
        )
        return results  # type: ignore[return-value]  # members of CreateTransferResult

    def _create_transfer(self, t: Transfer, timestamp: int) -> CreateTransferResult:
        flags = t.flags
        if flags & ~TRANSFER_FLAGS_KNOWN:
            return _T.RESERVED_FLAG
        transfer_id = t.id
        if transfer_id == 0:
            return _T.ID_MUST_NOT_BE_ZERO
        if transfer_id == U128_MAX:
            return _T.ID_MUST_NOT_BE_INT_MAX
        existing = self._transfer_timestamp.get(transfer_id)
        if existing is not None:
            return self._transfer_exists(t, existing)
        if transfer_id in self._failed:
            return _T.ID_ALREADY_FAILED
        if flags & _T_POST_OR_VOID:
            return self._post_or_void(t, timestamp)

        debit_id = t.debit_account_id
        credit_id = t.credit_account_id
        pending = flags & _T_PENDING
        # One expression for the valid case; the ordered checks only run when
        # something is wrong, so precedence is exactly TigerBeetle's.
        if not (
            0 < debit_id < U128_MAX
            and 0 < credit_id < U128_MAX
            and debit_id != credit_id
            and not t.pending_id
            and (pending or not (t.timeout or flags & _T_CLOSING))
            and t.ledger
            and t.code
        ):
            return _invalid_transfer_fields(t)
        dr = self._accounts.get(debit_id)
        if dr is None:
            return _T.DEBIT_ACCOUNT_NOT_FOUND
        cr = self._accounts.get(credit_id)
        if cr is None:
            return _T.CREDIT_ACCOUNT_NOT_FOUND
        if dr.ledger != cr.ledger:
            return _T.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER
        if t.ledger != dr.ledger:
            return _T.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS
        if dr.flags & _A_CLOSED:
            return _T.DEBIT_ACCOUNT_ALREADY_CLOSED
        if cr.flags & _A_CLOSED:
            return _T.CREDIT_ACCOUNT_ALREADY_CLOSED

        amount = t.amount
        if flags & _T_BAL_DEBIT:
            headroom = dr.credits_posted - dr.debits_posted - dr.debits_pending
            amount = min(amount, headroom if headroom > 0 else 0)
        if flags & _T_BAL_CREDIT:
            headroom = cr.debits_posted - cr.credits_posted - cr.credits_pending
            amount = min(amount, headroom if headroom > 0 else 0)
        # Balances are non-negative, so when the totals fit every partial sum fits.
        if not (
            amount + dr.debits_pending + dr.debits_posted <= U128_MAX
            and amount + cr.credits_pending + cr.credits_posted <= U128_MAX
            and timestamp + t.timeout * NANOSECONDS_PER_SECOND <= TIMESTAMP_MAX
        ):
            return _overflow(t, amount, timestamp, dr, cr)
        if (
            dr.flags & _A_DMNEC
            and dr.debits_pending + dr.debits_posted + amount > dr.credits_posted
        ):
            return _T.EXCEEDS_CREDITS
        if (
            cr.flags & _A_CMNED
            and cr.credits_pending + cr.credits_posted + amount > cr.debits_posted
        ):
            return _T.EXCEEDS_DEBITS

        # Every check passed: from here on nothing may fail.
        journal = self._journal
        if journal is not None:
            journal.append(("account_balances", dr, (*dr.balances(), dr.flags), timestamp))
            journal.append(("account_balances", cr, (*cr.balances(), cr.flags), timestamp))
            journal.append(("transfer_created", transfer_id, timestamp))
        if pending:
            dr.debits_pending += amount
            cr.credits_pending += amount
            stored = _Pending(t, amount, timestamp, len(self._pending_order))
            self._pending[transfer_id] = stored
            self._pending_order.append(stored)
            self._dirty_pending.add(stored.index)
            if stored.expires_at:
                heapq.heappush(self._expiries, (stored.expires_at, timestamp, transfer_id))
            if journal is not None:
                journal.append(("pending_created", stored))
            if flags & _T_CLOSING:
                if flags & _T_CLOSE_DEBIT:
                    dr.set_flags(dr.flags | _A_CLOSED)
                if flags & _T_CLOSE_CREDIT:
                    cr.set_flags(cr.flags | _A_CLOSED)
        else:
            dr.debits_posted += amount
            cr.credits_posted += amount
        # The stored record: the request with its clamped amount and its timestamp
        # (packed inline: this is the hottest line of the ledger).
        record = _RECORD.pack(
            transfer_id & _MASK64, transfer_id >> 64, debit_id & _MASK64, debit_id >> 64,
            credit_id & _MASK64, credit_id >> 64, amount & _MASK64, amount >> 64, 0, 0,
            t.user_data_128 & _MASK64, t.user_data_128 >> 64, t.user_data_64, t.user_data_32,
            t.timeout, t.ledger, t.code, flags, timestamp,
        )  # fmt: skip
        self._insert_transfer(transfer_id, timestamp, record, dr, cr)
        return _OK

    def _insert_transfer(
        self, transfer_id: int, timestamp: int, record: bytes, dr: _AccountState, cr: _AccountState
    ) -> None:
        self._transfer_timestamp[transfer_id] = timestamp
        self._transfer_record[timestamp] = record
        dr.transfer_timestamps.append(timestamp)
        cr.transfer_timestamps.append(timestamp)
        self._chain_entries.append(b"T" + record)
        if dr.history is not None or cr.history is not None:
            self._record_history(timestamp, dr, cr)
        dirty = self._dirty_accounts
        dirty.add(dr.index)
        dirty.add(cr.index)

    def _record_history(self, timestamp: int, dr: _AccountState, cr: _AccountState) -> None:
        for account in (dr, cr):
            history = account.history
            if history is not None:
                entry = (timestamp, *account.balances())
                history.append(entry)
                self._chain_entries.append(
                    b"B" + account.id.to_bytes(16, "little") + _pack_balance(entry)
                )

    def _post_or_void(self, t: Transfer, timestamp: int) -> CreateTransferResult:
        flags = t.flags
        if flags & _T_POST and flags & _T_VOID:
            return _T.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if flags & _T_FLAGS_NOT_WITH_POST_OR_VOID:
            return _T.FLAGS_ARE_MUTUALLY_EXCLUSIVE
        if t.pending_id == 0:
            return _T.PENDING_ID_MUST_NOT_BE_ZERO
        if t.pending_id == U128_MAX:
            return _T.PENDING_ID_MUST_NOT_BE_INT_MAX
        if t.pending_id == t.id:
            return _T.PENDING_ID_MUST_BE_DIFFERENT
        if t.timeout != 0:
            return _T.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        if t.pending_id not in self._transfer_timestamp:
            return _T.PENDING_TRANSFER_NOT_FOUND
        p = self._pending.get(t.pending_id)
        if p is None:
            return _T.PENDING_TRANSFER_NOT_PENDING
        if t.debit_account_id and t.debit_account_id != p.debit_account_id:
            return _T.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID
        if t.credit_account_id and t.credit_account_id != p.credit_account_id:
            return _T.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID
        if t.ledger and t.ledger != p.ledger:
            return _T.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER
        if t.code and t.code != p.code:
            return _T.PENDING_TRANSFER_HAS_DIFFERENT_CODE
        void = flags & _T_VOID
        if void:
            amount = t.amount if t.amount else p.amount
        else:
            amount = p.amount if t.amount == U128_MAX else t.amount
        if amount > p.amount:
            return _T.EXCEEDS_PENDING_TRANSFER_AMOUNT
        if void and amount < p.amount:
            return _T.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT
        if p.status == STATUS_POSTED:
            return _T.PENDING_TRANSFER_ALREADY_POSTED
        if p.status == STATUS_VOIDED:
            return _T.PENDING_TRANSFER_ALREADY_VOIDED
        if p.status == STATUS_EXPIRED:
            return _T.PENDING_TRANSFER_EXPIRED
        assert p.status == STATUS_PENDING
        if p.expires_at and p.expires_at <= timestamp:
            return _T.PENDING_TRANSFER_EXPIRED
        dr = self._accounts[p.debit_account_id]
        cr = self._accounts[p.credit_account_id]
        # The only movement a closed account allows is voiding a pending transfer.
        if dr.flags & _A_CLOSED and not void:
            return _T.DEBIT_ACCOUNT_ALREADY_CLOSED
        if cr.flags & _A_CLOSED and not void:
            return _T.CREDIT_ACCOUNT_ALREADY_CLOSED

        journal = self._journal
        if journal is not None:
            journal.append(("account_balances", dr, (*dr.balances(), dr.flags), timestamp))
            journal.append(("account_balances", cr, (*cr.balances(), cr.flags), timestamp))
            journal.append(("transfer_created", t.id, timestamp))
            journal.append(("pending_status", p, p.status))
        dr.debits_pending -= p.amount
        cr.credits_pending -= p.amount
        assert dr.debits_pending >= 0 and cr.credits_pending >= 0
        if void:
            p.status = STATUS_VOIDED
            if p.flags & _T_CLOSE_DEBIT:
                dr.set_flags(dr.flags & ~_A_CLOSED)
            if p.flags & _T_CLOSE_CREDIT:
                cr.set_flags(cr.flags & ~_A_CLOSED)
        else:
            p.status = STATUS_POSTED
            dr.debits_posted += amount
            cr.credits_posted += amount
        self._dirty_pending.add(p.index)
        record = _pack_transfer(
            t, p.debit_account_id, p.credit_account_id, amount, 0, p.ledger, p.code,
            t.user_data_128 or p.user_data_128, t.user_data_64 or p.user_data_64,
            t.user_data_32 or p.user_data_32, timestamp,
        )  # fmt: skip
        self._insert_transfer(t.id, timestamp, record, dr, cr)
        return _T.OK

    def _transfer_exists(self, t: Transfer, existing_timestamp: int) -> CreateTransferResult:
        e = decode_transfer(self._transfer_record[existing_timestamp])
        if t.flags != e.flags:
            return _T.EXISTS_WITH_DIFFERENT_FLAGS
        if t.pending_id != e.pending_id:
            return _T.EXISTS_WITH_DIFFERENT_PENDING_ID
        if t.timeout != e.timeout:
            return _T.EXISTS_WITH_DIFFERENT_TIMEOUT
        if t.flags & _T_POST_OR_VOID:
            return self._post_or_void_exists(t, e)
        if t.debit_account_id != e.debit_account_id:
            return _T.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
        if t.credit_account_id != e.credit_account_id:
            return _T.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
        if t.flags & (_T_BAL_DEBIT | _T_BAL_CREDIT):
            # A balancing amount is a ceiling: a retry must still cover what moved.
            if t.amount < e.amount:
                return _T.EXISTS_WITH_DIFFERENT_AMOUNT
        elif t.amount != e.amount:
            return _T.EXISTS_WITH_DIFFERENT_AMOUNT
        if t.user_data_128 != e.user_data_128:
            return _T.EXISTS_WITH_DIFFERENT_USER_DATA_128
        if t.user_data_64 != e.user_data_64:
            return _T.EXISTS_WITH_DIFFERENT_USER_DATA_64
        if t.user_data_32 != e.user_data_32:
            return _T.EXISTS_WITH_DIFFERENT_USER_DATA_32
        if t.ledger != e.ledger:
            return _T.EXISTS_WITH_DIFFERENT_LEDGER
        if t.code != e.code:
            return _T.EXISTS_WITH_DIFFERENT_CODE
        return _T.EXISTS

    def _post_or_void_exists(self, t: Transfer, e: Transfer) -> CreateTransferResult:
        p = self._pending[t.pending_id]
        if t.debit_account_id and t.debit_account_id != e.debit_account_id:
            return _T.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID
        if t.credit_account_id and t.credit_account_id != e.credit_account_id:
            return _T.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID
        if t.flags & _T_VOID:
            expected = p.amount if t.amount == 0 else t.amount
        else:
            expected = p.amount if t.amount == U128_MAX else t.amount
        if expected != e.amount:
            return _T.EXISTS_WITH_DIFFERENT_AMOUNT
        if (t.user_data_128 or p.user_data_128) != e.user_data_128:
            return _T.EXISTS_WITH_DIFFERENT_USER_DATA_128
        if (t.user_data_64 or p.user_data_64) != e.user_data_64:
            return _T.EXISTS_WITH_DIFFERENT_USER_DATA_64
        if (t.user_data_32 or p.user_data_32) != e.user_data_32:
            return _T.EXISTS_WITH_DIFFERENT_USER_DATA_32
        if t.ledger and t.ledger != e.ledger:
            return _T.EXISTS_WITH_DIFFERENT_LEDGER
        if t.code and t.code != e.code:
            return _T.EXISTS_WITH_DIFFERENT_CODE
        return _T.EXISTS

    # ------------------------------------------------------------- queries

    def lookup_accounts(self, ids: Sequence[int]) -> list[Account]:
        """Accounts in input order; unknown ids are skipped, as in TigerBeetle."""
        _check_ids(ids)
        found = (self._accounts.get(i) for i in ids)
        return [a.to_account() for a in found if a is not None]

    def lookup_transfers(self, ids: Sequence[int]) -> list[Transfer]:
        """Transfers as stored, in input order; unknown and failed ids are skipped."""
        _check_ids(ids)
        found = (self._transfer_timestamp.get(i) for i in ids)
        return [decode_transfer(self._transfer_record[ts]) for ts in found if ts is not None]

    def get_account_transfers(self, query: AccountFilter) -> list[Transfer]:
        """Transfers touching an account, by timestamp; an invalid filter gives []."""
        return [decode_transfer(self._transfer_record[ts]) for ts, _ in self._scan(query)]

    def get_account_balances(self, query: AccountFilter) -> list[AccountBalance]:
        """The account's balances after each matching transfer (history accounts only)."""
        account = self._accounts.get(query.account_id)
        if account is None or account.history is None:
            return []
        history = account.history
        balances = []
        for ts, position in self._scan(query):
            entry = history[position]
            assert entry[0] == ts
            balances.append(
                AccountBalance(
                    timestamp=ts,
                    debits_pending=entry[1],
                    debits_posted=entry[2],
                    credits_pending=entry[3],
                    credits_posted=entry[4],
                )
            )
        return balances

    def _scan(self, query: AccountFilter) -> list[tuple[int, int]]:
        """(timestamp, position in the account's list) of matching transfers."""
        if not _filter_valid(query):
            return []
        account = self._accounts.get(query.account_id)
        if account is None:
            return []
        timestamps = account.transfer_timestamps
        low = bisect.bisect_left(timestamps, query.timestamp_min or 1)
        high = bisect.bisect_right(timestamps, query.timestamp_max or TIMESTAMP_MAX)
        positions = range(high - 1, low - 1, -1) if query.flags & _F_REVERSED else range(low, high)
        want_debits = query.flags & _F_DEBITS
        want_credits = query.flags & _F_CREDITS
        limit = min(query.limit, BATCH_EVENTS_MAX)
        account_id_bytes = query.account_id.to_bytes(16, "little")
        matches: list[tuple[int, int]] = []
        for position in positions:
            ts = timestamps[position]
            is_debit = self._transfer_record[ts][16:32] == account_id_bytes
            if (want_debits and is_debit) or (want_credits and not is_debit):
                matches.append((ts, position))
                if len(matches) == limit:
                    break
        return matches

    # ---------------------------------------------------------- state hash

    @property
    def account_count(self) -> int:
        return len(self._account_order)

    @property
    def transfer_count(self) -> int:
        return len(self._transfer_timestamp)

    def _fold_chain_entries(self) -> None:
        if self._chain_entries:
            folded = b"".join(self._chain_entries)
            self._chain.update(folded)
            self._chain_entries.clear()
            if self._chain_log is not None:
                self._chain_log.append(folded)

    def state_hash(self) -> bytes:
        """SHA-256 commitment to the entire state; equal states give equal hashes."""
        assert self._journal is None, "state_hash() inside a linked chain"
        self._fold_chain_entries()
        _refresh(
            self._accounts_commitment,
            self._dirty_accounts,
            self._account_order,
            _AccountState.record,
        )
        _refresh(self._pending_commitment, self._dirty_pending, self._pending_order, _Pending.leaf)
        return hashlib.sha256(
            _STATE_DOMAIN
            + self._last_timestamp.to_bytes(8, "little")
            + len(self._account_order).to_bytes(8, "little")
            + self._accounts_commitment.root()
            + len(self._pending_order).to_bytes(8, "little")
            + self._pending_commitment.root()
            + len(self._transfer_timestamp).to_bytes(8, "little")
            + len(self._failed).to_bytes(8, "little")
            + self._chain.copy().digest()
        ).digest()

    def snapshot(self) -> bytes:
        """Deterministic bytes of the whole state (see ``ledger.snapshot``)."""
        from ledger.snapshot import snapshot

        return snapshot(self)

    @staticmethod
    def restore(data: bytes, expected_state_hash: bytes | None = None) -> Ledger:
        """A ledger from ``snapshot()`` bytes; raises ``SnapshotError`` on bad input."""
        from ledger.snapshot import restore

        return restore(data, expected_state_hash)

    def check_invariants(self) -> None:
        """Assert the double-entry invariants (O(accounts)); tests call it after batches."""
        sums: dict[int, list[int]] = {}
        for a in self._account_order:
            s = sums.setdefault(a.ledger, [0, 0, 0, 0])
            s[0] += a.debits_pending
            s[1] += a.debits_posted
            s[2] += a.credits_pending
            s[3] += a.credits_posted
            assert a.debits_pending + a.debits_posted <= U128_MAX
            assert a.credits_pending + a.credits_posted <= U128_MAX
        for ledger, (dp, dpo, cp, cpo) in sums.items():
            assert dp == cp, f"ledger {ledger}: debits_pending {dp} != credits_pending {cp}"
            assert dpo == cpo, f"ledger {ledger}: debits_posted {dpo} != credits_posted {cpo}"


def _invalid_transfer_fields(t: Transfer) -> CreateTransferResult:
    """The first failing field check, in TigerBeetle's order (slow path only)."""
    if t.debit_account_id == 0:
        return _T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
    if t.debit_account_id == U128_MAX:
        return _T.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
    if t.credit_account_id == 0:
        return _T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
    if t.credit_account_id == U128_MAX:
        return _T.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX
    if t.credit_account_id == t.debit_account_id:
        return _T.ACCOUNTS_MUST_BE_DIFFERENT
    if t.pending_id != 0:
        return _T.PENDING_ID_MUST_BE_ZERO
    if not t.flags & _T_PENDING:
        if t.timeout != 0:
            return _T.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER
        if t.flags & _T_CLOSING:
            return _T.CLOSING_TRANSFER_MUST_BE_PENDING
    if t.ledger == 0:
        return _T.LEDGER_MUST_NOT_BE_ZERO
    assert t.code == 0, "the fast check and the ordered checks disagree"
    return _T.CODE_MUST_NOT_BE_ZERO


def _overflow(
    t: Transfer, amount: int, timestamp: int, dr: _AccountState, cr: _AccountState
) -> CreateTransferResult:
    """Which sum overflows, in TigerBeetle's order (slow path only)."""
    if t.flags & _T_PENDING:
        if amount + dr.debits_pending > U128_MAX:
            return _T.OVERFLOWS_DEBITS_PENDING
        if amount + cr.credits_pending > U128_MAX:
            return _T.OVERFLOWS_CREDITS_PENDING
    if amount + dr.debits_posted > U128_MAX:
        return _T.OVERFLOWS_DEBITS_POSTED
    if amount + cr.credits_posted > U128_MAX:
        return _T.OVERFLOWS_CREDITS_POSTED
    if amount + dr.debits_pending + dr.debits_posted > U128_MAX:
        return _T.OVERFLOWS_DEBITS
    if amount + cr.credits_pending + cr.credits_posted > U128_MAX:
        return _T.OVERFLOWS_CREDITS
    assert timestamp + t.timeout * NANOSECONDS_PER_SECOND > TIMESTAMP_MAX
    return _T.OVERFLOWS_TIMEOUT


_F_DEBITS = int(AccountFilterFlags.DEBITS)
_F_CREDITS = int(AccountFilterFlags.CREDITS)
_F_REVERSED = int(AccountFilterFlags.REVERSED)


def _filter_valid(query: AccountFilter) -> bool:
    return (
        query.account_id not in (0, U128_MAX)
        and query.timestamp_min <= TIMESTAMP_MAX
        and query.timestamp_max <= TIMESTAMP_MAX
        and (query.timestamp_max == 0 or query.timestamp_min <= query.timestamp_max)
        and query.limit != 0
        and bool(query.flags & (_F_DEBITS | _F_CREDITS))
        and not query.flags & ~ACCOUNT_FILTER_FLAGS_KNOWN
    )


def _check_ids(ids: Sequence[int]) -> None:
    if len(ids) > BATCH_EVENTS_MAX:
        raise LedgerError(f"lookup of {len(ids)} ids exceeds the limit of {BATCH_EVENTS_MAX}")


def _pack_balance(entry: tuple[int, int, int, int, int]) -> bytes:
    ts, dp, dpo, cp, cpo = entry
    return _BALANCE.pack(
        dp & _MASK64, dp >> 64, dpo & _MASK64, dpo >> 64,
        cp & _MASK64, cp >> 64, cpo & _MASK64, cpo >> 64, ts,
    )  # fmt: skip


def _refresh(
    commitment: LeafCommitment,
    dirty: set[int],
    order: Sequence[_T_Leaf],
    leaf: Callable[[_T_Leaf], bytes],
) -> None:
    """Re-encode dirty leaves; indexes beyond ``order`` belonged to rolled-back chains."""
    assert len(commitment) <= len(order)
    size = len(order)
    committed = len(commitment)
    # Overwrites may come in any order; only appends must ascend (and are rare).
    indexes = [i for i in dirty if i < committed]
    indexes += sorted(i for i in dirty if committed <= i < size)
    commitment.set_many(indexes, [leaf(order[i]) for i in indexes])
    dirty.clear()
