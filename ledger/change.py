"""What one run of batches changed in a ledger: to undo it, or to apply it to a copy.

Guarantees:

* ``begin(ledger)`` ... batches ... ``end(ledger)`` captures a ``LedgerChange``: the
  state before (what ``undo`` needs) and the changes (what ``apply`` needs), at a
  cost proportional to what changed, not to the state.  Capture changes no state and
  no result: a ledger with a capture open behaves exactly as one without.
* ``undo(ledger, change)`` on the ledger that made ``change``, while it is still the
  last change made, brings back the state before it: the same ``state_hash()``, the
  same query answers, the same future behaviour (expiries included).
* ``apply(other, change)`` on a different ledger in the state before ``change`` puts
  it in the state after: the same ``state_hash()`` and query answers as the ledger
  that made it.  It shares only immutable values (records, tuples) with that ledger.

Both are checked against the state hash by their callers (``finality.executor``),
and the parts the hash does not cover (per-account indexes, the expiry heap) by
tests against a ledger that executed the batches itself.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from dataclasses import dataclass
from itertools import islice
from typing import Any

from ledger.codec import RECORD_SIZE
from ledger.state_machine import (
    _ACCOUNT_TAIL,
    _BALANCES,
    STATUS_PENDING,
    Ledger,
    _AccountState,
    _Pending,
)
from ledger.types import Account

_BALANCES_AT = 16
_TAIL_AT = 16 + _BALANCES.size


@dataclass(frozen=True, slots=True)
class _Base:
    last_timestamp: int
    accounts: int
    pending: int
    transfers: int
    failed: int
    chain: Any  # hashlib object: the history chain before the change


@dataclass(slots=True)
class LedgerChange:
    """What changed, in flat lists of numbers and bytes.  A block's change is kept a
    while (``finality.executor`` keeps 40 for undo): one small object per account or
    transfer would hand the garbage collector hundreds of thousands more to walk."""

    base: _Base
    last_timestamp: int
    # Accounts touched, by index: their balances after (4 per account: debits_pending,
    # debits_posted, credits_pending, credits_posted), flags after, how many transfer
    # timestamps (and, for history accounts, balance entries) were appended to each,
    # those appended, and each one's canonical record before (b"" when created).
    account_indexes: list[int]
    account_balances: list[int]
    account_flags: list[int]
    account_appended: list[int]
    account_timestamps: list[int]
    account_history: list[tuple[int, int, int, int, int]]
    account_records_before: list[bytes]
    accounts_created: list[Account]  # as they stand after, in index order (from base.accounts)
    transfer_ids: list[int]  # the transfers created, by timestamp
    transfer_timestamps: list[int]
    transfer_records: list[bytes]
    failed_ids: list[int]  # transient failures remembered, by timestamp
    failed_timestamps: list[int]
    pending_created: list[_Pending]  # copies, as they stand after the change
    pending_indexes: list[int]  # existing pending transfers whose status changed
    pending_status: list[int]
    pending_status_before: list[int]
    chain: bytes  # the history-chain bytes folded; b"" once forgotten (``forget_chain``)
    chain_kept: bool = True

    def forget_chain(self) -> None:
        """Drop the bytes only ``apply`` needs (memory); ``undo`` still works."""
        self.chain = b""
        self.chain_kept = False


def begin(ledger: Ledger) -> None:
    """Open a capture; the ledger must be between batches."""
    assert ledger._change_base is None, "a change capture is already open"
    assert ledger._journal is None
    ledger.state_hash()  # fold and refresh: the commitments now hold the state before
    assert not ledger._dirty_accounts and not ledger._dirty_pending
    ledger._change_base = _Base(
        last_timestamp=ledger._last_timestamp,
        accounts=len(ledger._account_order),
        pending=len(ledger._pending_order),
        transfers=len(ledger._transfer_timestamp),
        failed=len(ledger._failed),
        chain=ledger._chain.copy(),
    )
    ledger._chain_log = []


def end(ledger: Ledger) -> LedgerChange:
    """Close the capture opened by ``begin``; what changed since."""
    base: _Base = ledger._change_base
    assert base is not None, "no change capture is open"
    assert ledger._journal is None
    ledger._fold_chain_entries()
    chain = b"".join(ledger._chain_log or ())
    ledger._change_base = None
    ledger._chain_log = None
    since = base.last_timestamp
    leaves = ledger._accounts_commitment._leaves
    order = ledger._account_order
    indexes = sorted(i for i in ledger._dirty_accounts if i < len(order))
    balances: list[int] = []
    flags: list[int] = []
    appended: list[int] = []
    timestamps: list[int] = []
    history: list[tuple[int, int, int, int, int]] = []
    records_before: list[bytes] = []
    for index in indexes:
        a = order[index]
        account_timestamps = a.transfer_timestamps
        cut = bisect_right(account_timestamps, since)
        balances += (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
        flags.append(a.flags)
        appended.append(len(account_timestamps) - cut)
        timestamps += account_timestamps[cut:]
        if a.history is not None:
            history += a.history[cut:]
        records_before.append(leaves[index] if index < base.accounts else b"")
    # Transfers and failures are only ever added in timestamp order, and a linked chain
    # removes only its own: those of the change are the newest, in dict order.
    created = len(ledger._transfer_timestamp) - base.transfers
    failed = len(ledger._failed) - base.failed
    assert created >= 0 and failed >= 0
    pending_leaves = ledger._pending_commitment._leaves
    pending_order = ledger._pending_order
    pending_indexes = sorted(i for i in ledger._dirty_pending if i < base.pending)
    change = LedgerChange(
        base=base,
        last_timestamp=ledger._last_timestamp,
        account_indexes=indexes,
        account_balances=balances,
        account_flags=flags,
        account_appended=appended,
        account_timestamps=timestamps,
        account_history=history,
        account_records_before=records_before,
        accounts_created=[a.to_account() for a in order[base.accounts :]],
        transfer_ids=_newest(ledger._transfer_timestamp.keys(), created),
        transfer_timestamps=_newest(ledger._transfer_timestamp.values(), created),
        transfer_records=_newest(ledger._transfer_record.values(), created),
        failed_ids=_newest(ledger._failed.keys(), failed),
        failed_timestamps=_newest(ledger._failed.values(), failed),
        pending_created=[_copy_pending(p) for p in pending_order[base.pending :]],
        pending_indexes=pending_indexes,
        pending_status=[pending_order[i].status for i in pending_indexes],
        # A pending leaf is (timestamp u64, status u8): the status before is its last byte.
        pending_status_before=[pending_leaves[i][8] for i in pending_indexes],
        chain=chain,
    )
    assert not change.transfer_timestamps or change.transfer_timestamps[0] > since
    assert len(change.accounts_created) == sum(1 for i in indexes if i >= base.accounts)
    return change


def _newest(view: Any, count: int) -> list[Any]:
    """The last ``count`` items of a dict view, in dict order."""
    newest = list(islice(reversed(view), count))
    newest.reverse()
    return newest


def undo(ledger: Ledger, change: LedgerChange) -> None:
    """Bring ``ledger`` back to the state before ``change`` (its last change)."""
    base = change.base
    assert ledger._change_base is None and ledger._journal is None
    assert ledger._last_timestamp == change.last_timestamp, "not the ledger's last change"
    assert len(ledger._account_order) >= base.accounts
    assert len(ledger._pending_order) >= base.pending
    for transfer_id, timestamp in zip(change.transfer_ids, change.transfer_timestamps, strict=True):
        del ledger._transfer_timestamp[transfer_id]
        del ledger._transfer_record[timestamp]
    if ledger._snapshot_transfers_count > base.transfers:  # the snapshot section had them
        del ledger._snapshot_transfers[base.transfers * RECORD_SIZE :]
        ledger._snapshot_transfers_count = base.transfers
    for failed_id in change.failed_ids:
        del ledger._failed[failed_id]
    for state in ledger._account_order[base.accounts :]:
        del ledger._accounts[state.id]
    del ledger._account_order[base.accounts :]
    for index, appended, record_before in zip(
        change.account_indexes, change.account_appended, change.account_records_before,
        strict=True,
    ):  # fmt: skip
        if index >= base.accounts:
            continue  # created by the change: gone with the rest
        a = ledger._account_order[index]
        _set_from_record(a, record_before)
        kept = len(a.transfer_timestamps) - appended
        assert kept >= 0 and (not appended or a.transfer_timestamps[kept] > base.last_timestamp)
        del a.transfer_timestamps[kept:]
        if a.history is not None:
            del a.history[kept:]
    for p in ledger._pending_order[base.pending :]:
        del ledger._pending[p.id]
    del ledger._pending_order[base.pending :]
    for index, status_before in zip(
        change.pending_indexes, change.pending_status_before, strict=True
    ):
        p = ledger._pending_order[index]
        p.status = status_before
        if status_before == STATUS_PENDING and p.expires_at:
            # Expired in the change, so popped from the heap: it may expire again.
            heapq.heappush(ledger._expiries, (p.expires_at, p.timestamp, p.id))
    assert not ledger._chain_entries
    ledger._chain = base.chain.copy()
    ledger._last_timestamp = base.last_timestamp
    ledger._accounts_commitment.truncate(base.accounts)
    ledger._pending_commitment.truncate(base.pending)
    # Dirty since the last state_hash(), maybe by earlier undos: keep those marks.
    ledger._dirty_accounts = {i for i in ledger._dirty_accounts if i < base.accounts}
    ledger._dirty_accounts.update(i for i in change.account_indexes if i < base.accounts)
    ledger._dirty_pending = {i for i in ledger._dirty_pending if i < base.pending}
    ledger._dirty_pending.update(change.pending_indexes)


def apply(ledger: Ledger, change: LedgerChange) -> None:
    """Make ``ledger`` (in the state before ``change``) what the change made."""
    base = change.base
    assert change.chain_kept, "the change's chain bytes were forgotten"
    assert ledger._change_base is None and ledger._journal is None
    assert ledger._last_timestamp == base.last_timestamp
    assert len(ledger._account_order) == base.accounts
    assert len(ledger._pending_order) == base.pending
    order = ledger._account_order
    for created in change.accounts_created:
        a = _AccountState(created, created.timestamp, len(order))
        ledger._accounts[a.id] = a
        order.append(a)
    balances = change.account_balances
    timestamps = change.account_timestamps
    history = change.account_history
    at = history_at = 0
    for position, (index, flags, appended) in enumerate(
        zip(change.account_indexes, change.account_flags, change.account_appended, strict=True)
    ):
        a = order[index]
        first = 4 * position
        a.debits_pending = balances[first]
        a.debits_posted = balances[first + 1]
        a.credits_pending = balances[first + 2]
        a.credits_posted = balances[first + 3]
        if a.flags != flags:
            a.set_flags(flags)
        a.transfer_timestamps += timestamps[at : at + appended]
        at += appended
        if a.history is not None:
            a.history += history[history_at : history_at + appended]
            history_at += appended
    assert at == len(timestamps) and history_at == len(history)
    ledger._dirty_accounts.update(change.account_indexes)
    ledger._transfer_timestamp.update(
        zip(change.transfer_ids, change.transfer_timestamps, strict=True)
    )
    ledger._transfer_record.update(
        zip(change.transfer_timestamps, change.transfer_records, strict=True)
    )
    ledger._failed.update(zip(change.failed_ids, change.failed_timestamps, strict=True))
    pending_order = ledger._pending_order
    for index, status in zip(change.pending_indexes, change.pending_status, strict=True):
        pending_order[index].status = status
        ledger._dirty_pending.add(index)
    for created_pending in change.pending_created:
        p = _copy_pending(created_pending)
        assert p.index == len(pending_order)
        ledger._pending[p.id] = p
        pending_order.append(p)
        ledger._dirty_pending.add(p.index)
        if p.status == STATUS_PENDING and p.expires_at:
            heapq.heappush(ledger._expiries, (p.expires_at, p.timestamp, p.id))
    # Entries of transfers no longer pending stay until they come up: drop those on top.
    expiries = ledger._expiries
    while expiries:
        top = ledger._pending.get(expiries[0][2])
        if top is not None and top.status == STATUS_PENDING and top.timestamp == expiries[0][1]:
            break
        heapq.heappop(expiries)
    ledger._chain.update(change.chain)
    ledger._last_timestamp = change.last_timestamp


def _set_from_record(a: _AccountState, record: bytes) -> None:
    """An account's balances and flags as its canonical record says."""
    assert record[:16] == a._record_head
    words = _BALANCES.unpack_from(record, _BALANCES_AT)
    a.debits_pending = words[0] | words[1] << 64
    a.debits_posted = words[2] | words[3] << 64
    a.credits_pending = words[4] | words[5] << 64
    a.credits_posted = words[6] | words[7] << 64
    flags = _ACCOUNT_TAIL.unpack_from(record, _TAIL_AT)[7]
    if flags != a.flags:
        a.set_flags(flags)
    assert a.record() == record


def _copy_pending(p: _Pending) -> _Pending:
    copy = _Pending.__new__(_Pending)
    for name in _Pending.__slots__:
        setattr(copy, name, getattr(p, name))
    return copy
