"""Snapshots of a ledger: deterministic bytes out, a verified ledger back in.

Guarantees: ``snapshot(ledger)`` is a pure function of the ledger's state, so
replicas in the same state write identical bytes.  ``restore(data)`` either
returns a ledger whose ``state_hash()`` equals the one the snapshot declares
(and ``expected_state_hash`` when the caller has one, e.g. from a signed
checkpoint), or raises ``SnapshotError`` naming what is wrong.  Beyond the
checksum, restore re-derives every balance from the transfers and pending
statuses, so a snapshot that is well-formed but inconsistent is refused too.

Layout (little-endian): header (magic, version, last timestamp, state hash,
five counts); accounts in creation order; transfers in timestamp order;
pending statuses in creation order; failed ids in timestamp order; balance
history of each history account, in account order; SHA-256 of all before it.
"""

from __future__ import annotations

import hashlib
import heapq
import struct

from ledger.codec import RECORD_SIZE, DecodeError, decode_account, decode_balance, decode_transfer
from ledger.state_machine import (
    STATUS_EXPIRED,
    STATUS_PENDING,
    Ledger,
    _AccountState,
    _pack_balance,
    _Pending,
)
from ledger.types import Transfer, TransferFlags

MAGIC = b"AEGISLSN"
VERSION = 1
_HEADER = struct.Struct("<8sII Q 32s 5Q")
_PENDING = struct.Struct("<QB7x")
_FAILED = struct.Struct("<QQQ")  # id lo, id hi, timestamp
_CHECKSUM_SIZE = 32


class SnapshotError(ValueError):
    """The bytes are not a valid snapshot; the message says why."""


def snapshot(ledger: Ledger) -> bytes:
    state_hash = ledger.state_hash()

    transfers = [ledger._transfer_record[ts] for ts in sorted(ledger._transfer_record)]
    failed = sorted((ts, i) for i, ts in ledger._failed.items())
    history_accounts = [a for a in ledger._account_order if a.history is not None]
    parts = [
        _HEADER.pack(
            MAGIC,
            VERSION,
            0,
            ledger._last_timestamp,
            state_hash,
            len(ledger._account_order),
            len(transfers),
            len(ledger._pending_order),
            len(failed),
            len(history_accounts),
        ),
        *(a.record() for a in ledger._account_order),
        *transfers,
        *(_PENDING.pack(p.timestamp, p.status) for p in ledger._pending_order),
        *(_FAILED.pack(i & (1 << 64) - 1, i >> 64, ts) for ts, i in failed),
        *(_pack_balance(e) for a in history_accounts for e in a.history or ()),
    ]
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def restore(data: bytes, expected_state_hash: bytes | None = None) -> Ledger:
    try:
        return _restore(data, expected_state_hash)
    except DecodeError as error:
        raise SnapshotError(f"snapshot record is malformed: {error}") from error


def _restore(data: bytes, expected_state_hash: bytes | None) -> Ledger:
    if len(data) < _HEADER.size + _CHECKSUM_SIZE:
        raise SnapshotError(f"snapshot is truncated: {len(data)} bytes")
    body, checksum = data[:-_CHECKSUM_SIZE], data[-_CHECKSUM_SIZE:]
    if hashlib.sha256(body).digest() != checksum:
        raise SnapshotError("snapshot checksum mismatch: the bytes are corrupt or truncated")
    (magic, version, reserved, last_timestamp, declared_hash, n_accounts, n_transfers,
     n_pending, n_failed, n_history) = _HEADER.unpack_from(body)  # fmt: skip
    if magic != MAGIC:
        raise SnapshotError(f"not a ledger snapshot (magic {magic!r})")
    if version != VERSION or reserved != 0:
        raise SnapshotError(f"unsupported snapshot version {version}.{reserved}")
    fixed = (
        _HEADER.size
        + (n_accounts + n_transfers) * RECORD_SIZE
        + n_pending * _PENDING.size
        + n_failed * _FAILED.size
    )
    if fixed > len(body):
        raise SnapshotError("snapshot counts exceed its length")
    offset = _HEADER.size

    def take(size: int) -> bytes:
        nonlocal offset
        chunk = body[offset : offset + size]
        offset += size
        return chunk

    ledger = Ledger()
    previous_ts = 0
    for index in range(n_accounts):
        account = decode_account(take(RECORD_SIZE), index)
        if account.timestamp <= previous_ts or account.id in ledger._accounts:
            raise SnapshotError(f"account[{index}] is out of order or duplicated")
        previous_ts = account.timestamp
        state = _AccountState(account, account.timestamp, index)
        (state.debits_pending, state.debits_posted, state.credits_pending,
         state.credits_posted) = (account.debits_pending, account.debits_posted,
                                  account.credits_pending, account.credits_posted)  # fmt: skip
        ledger._accounts[account.id] = state
        ledger._account_order.append(state)
        ledger._dirty_accounts.add(index)

    derived: dict[int, list[int]] = {a.id: [0, 0, 0, 0] for a in ledger._account_order}
    transfers: dict[int, Transfer] = {}
    previous_ts = 0
    for index in range(n_transfers):
        record = take(RECORD_SIZE)
        t = decode_transfer(record, index)
        if t.timestamp <= previous_ts or t.id in ledger._transfer_timestamp:
            raise SnapshotError(f"transfer[{index}] is out of order or duplicated")
        if t.debit_account_id not in derived or t.credit_account_id not in derived:
            raise SnapshotError(f"transfer[{index}] names an account the snapshot lacks")
        previous_ts = t.timestamp
        transfers[t.timestamp] = t
        ledger._transfer_timestamp[t.id] = t.timestamp
        ledger._transfer_record[t.timestamp] = record
        ledger._accounts[t.debit_account_id].transfer_timestamps.append(t.timestamp)
        ledger._accounts[t.credit_account_id].transfer_timestamps.append(t.timestamp)
        if not t.flags & (TransferFlags.PENDING | TransferFlags.VOID_PENDING_TRANSFER):
            derived[t.debit_account_id][1] += t.amount
            derived[t.credit_account_id][3] += t.amount

    for index in range(n_pending):
        ts, status = _PENDING.unpack(take(_PENDING.size))
        pending_transfer = transfers.get(ts)
        if (
            pending_transfer is None
            or not pending_transfer.flags & TransferFlags.PENDING
            or not STATUS_PENDING <= status <= STATUS_EXPIRED
        ):
            raise SnapshotError(f"pending[{index}] does not name a pending transfer")
        if ledger._pending_order and ledger._pending_order[-1].timestamp >= ts:
            raise SnapshotError(f"pending[{index}] is out of order")
        p = pending_transfer
        pending = _Pending(p, p.amount, ts, index)
        pending.status = status
        ledger._pending[p.id] = pending
        ledger._pending_order.append(pending)
        ledger._dirty_pending.add(index)
        if status == STATUS_PENDING:
            derived[p.debit_account_id][0] += p.amount
            derived[p.credit_account_id][2] += p.amount
            if pending.expires_at:
                ledger._expiries.append((pending.expires_at, ts, p.id))
    heapq.heapify(ledger._expiries)
    if sum(1 for t in transfers.values() if t.flags & TransferFlags.PENDING) != n_pending:
        raise SnapshotError("snapshot lacks the status of some pending transfers")

    for index in range(n_failed):
        lo, hi, ts = _FAILED.unpack(take(_FAILED.size))
        failed_id = lo | hi << 64
        if failed_id in ledger._failed or failed_id in ledger._transfer_timestamp:
            raise SnapshotError(f"failed[{index}] duplicates an id")
        ledger._failed[failed_id] = ts

    history_accounts = [a for a in ledger._account_order if a.history is not None]
    if len(history_accounts) != n_history:
        raise SnapshotError("history account count does not match the accounts")
    for history_account in history_accounts:
        assert history_account.history is not None
        for position, ts in enumerate(history_account.transfer_timestamps):
            balance = decode_balance(take(RECORD_SIZE), position)
            if balance.timestamp != ts:
                raise SnapshotError(f"history of account {history_account.id} is out of step")
            history_account.history.append(
                (
                    ts,
                    balance.debits_pending,
                    balance.debits_posted,
                    balance.credits_pending,
                    balance.credits_posted,
                )
            )
    if offset != len(body):
        raise SnapshotError(f"snapshot has {len(body) - offset} trailing bytes")

    for state in ledger._account_order:
        if list(state.balances()) != derived[state.id]:
            raise SnapshotError(f"account {state.id} balances do not follow from its transfers")
    if ledger._account_order and ledger._account_order[-1].timestamp > last_timestamp:
        raise SnapshotError("last timestamp is older than the newest account")
    if transfers and max(transfers) > last_timestamp:
        raise SnapshotError("last timestamp is older than the newest transfer")
    ledger._last_timestamp = last_timestamp
    _rebuild_history_chain(ledger, transfers)

    actual = ledger.state_hash()
    if actual != declared_hash:
        raise SnapshotError("state hash mismatch: content does not match the declared hash")
    if expected_state_hash is not None and actual != expected_state_hash:
        raise SnapshotError("state hash mismatch: snapshot is not the expected state")
    return ledger


def _rebuild_history_chain(ledger: Ledger, transfers: dict[int, Transfer]) -> None:
    """Re-fold the append-only history exactly as the live ledger folded it."""
    positions: dict[int, int] = {}
    events = sorted(
        [(ts, 0, 0) for ts in transfers] + [(ts, 1, i) for i, ts in ledger._failed.items()]
    )
    entries = ledger._chain_entries
    for ts, kind, failed_id in events:
        if kind == 1:
            entries.append(b"F" + failed_id.to_bytes(16, "little") + ts.to_bytes(8, "little"))
            continue
        record = ledger._transfer_record[ts]
        entries.append(b"T" + record)
        for side in (record[16:32], record[32:48]):
            account = ledger._accounts[int.from_bytes(side, "little")]
            if account.history is not None:
                position = positions.get(account.id, 0)
                positions[account.id] = position + 1
                entries.append(b"B" + side + _pack_balance(account.history[position]))
