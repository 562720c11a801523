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
from itertools import islice

from ledger.codec import (
    _RECORD,
    RECORD_SIZE,
    DecodeError,
    decode_account,
    decode_balance,
    decode_transfer,
)
from ledger.state_machine import (
    STATUS_EXPIRED,
    STATUS_PENDING,
    Ledger,
    _AccountState,
    _pack_balance,
    _Pending,
)
from ledger.types import TRANSFER_FLAGS_KNOWN, TransferFlags

MAGIC = b"AEGISLSN"
VERSION = 1
_HEADER = struct.Struct("<8sII Q 32s 5Q")
_PENDING = struct.Struct("<QB7x")
_FAILED = struct.Struct("<QQQ")  # id lo, id hi, timestamp
_CHECKSUM_SIZE = 32
_T_PENDING = int(TransferFlags.PENDING)
_T_NOT_POSTED = int(TransferFlags.PENDING | TransferFlags.VOID_PENDING_TRANSFER)


class SnapshotError(ValueError):
    """The bytes are not a valid snapshot; the message says why."""


def snapshot(ledger: Ledger) -> bytes:
    state_hash = ledger.state_hash()
    transfers = _transfers_section(ledger)
    failed = sorted((ts, i) for i, ts in ledger._failed.items())
    history_accounts = [a for a in ledger._account_order if a.history is not None]
    parts: list[bytes | bytearray] = [
        _HEADER.pack(
            MAGIC,
            VERSION,
            0,
            ledger._last_timestamp,
            state_hash,
            len(ledger._account_order),
            len(ledger._transfer_record),
            len(ledger._pending_order),
            len(failed),
            len(history_accounts),
        ),
        b"".join([a.record() for a in ledger._account_order]),
        transfers,
        b"".join([_PENDING.pack(p.timestamp, p.status) for p in ledger._pending_order]),
        b"".join([_FAILED.pack(i & (1 << 64) - 1, i >> 64, ts) for ts, i in failed]),
        b"".join([_pack_balance(e) for a in history_accounts for e in a.history or ()]),
    ]
    checksum = hashlib.sha256()
    for part in parts:
        checksum.update(part)
    return b"".join([*parts, checksum.digest()])  # one copy of the body, not two


def _transfers_section(ledger: Ledger) -> bytearray:
    """Every transfer record in timestamp order, kept between snapshots: only those
    created since the last one are added.  Transfers are created in timestamp order
    and dict order keeps it; only the newest are ever removed (a linked chain inside
    a batch, before any snapshot can see them; ``ledger.change.undo``, which cuts the
    section back), so the kept prefix stays the first transfers."""
    section = ledger._snapshot_transfers
    kept = ledger._snapshot_transfers_count
    records = ledger._transfer_record
    assert kept <= len(records) and len(section) == kept * RECORD_SIZE
    if kept < len(records):
        added = list(islice(reversed(records.values()), len(records) - kept))
        added.reverse()
        section += b"".join(added)
        ledger._snapshot_transfers_count = len(records)
    if records:  # cheap evidence that the prefix is still the ledger's
        newest = next(reversed(records.values()))
        assert section[-RECORD_SIZE:] == newest, "snapshot transfer section out of step"
    return section


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
    # Transfers: unpacked field by field, without building Transfer values (the bulk of
    # a snapshot); the checks are decode_transfer's and those below, in the same order.
    accounts = ledger._accounts
    transfer_timestamp = ledger._transfer_timestamp
    transfer_record = ledger._transfer_record
    size = n_transfers * RECORD_SIZE
    section = body[offset : offset + size]
    offset += size
    ledger._snapshot_transfers = bytearray(section)  # the next snapshot starts from it
    ledger._snapshot_transfers_count = n_transfers
    pending_transfers = 0
    previous_ts = 0
    for index, f in enumerate(_RECORD.iter_unpack(section)):
        flags = f[17]
        if flags & ~TRANSFER_FLAGS_KNOWN:
            raise DecodeError(
                f"transfer[{index}].flags has unknown bits 0x{flags & ~TRANSFER_FLAGS_KNOWN:04x}"
            )
        transfer_id = f[0] | f[1] << 64
        timestamp = f[18]
        if timestamp <= previous_ts or transfer_id in transfer_timestamp:
            raise SnapshotError(f"transfer[{index}] is out of order or duplicated")
        debit_id = f[2] | f[3] << 64
        credit_id = f[4] | f[5] << 64
        debit = derived.get(debit_id)
        credit = derived.get(credit_id)
        if debit is None or credit is None:
            raise SnapshotError(f"transfer[{index}] names an account the snapshot lacks")
        previous_ts = timestamp
        start = index * RECORD_SIZE
        transfer_timestamp[transfer_id] = timestamp
        transfer_record[timestamp] = section[start : start + RECORD_SIZE]
        accounts[debit_id].transfer_timestamps.append(timestamp)
        accounts[credit_id].transfer_timestamps.append(timestamp)
        if flags & _T_PENDING:
            pending_transfers += 1
        if not flags & _T_NOT_POSTED:
            amount = f[6] | f[7] << 64
            debit[1] += amount
            credit[3] += amount

    for index in range(n_pending):
        ts, status = _PENDING.unpack(take(_PENDING.size))
        pending_record = transfer_record.get(ts)
        pending_transfer = None if pending_record is None else decode_transfer(pending_record)
        if (
            pending_transfer is None
            or not pending_transfer.flags & _T_PENDING
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
    if pending_transfers != n_pending:
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
    if previous_ts > last_timestamp:  # the newest transfer's (0: none)
        raise SnapshotError("last timestamp is older than the newest transfer")
    ledger._last_timestamp = last_timestamp
    _rebuild_history_chain(ledger)

    actual = ledger.state_hash()
    if actual != declared_hash:
        raise SnapshotError("state hash mismatch: content does not match the declared hash")
    if expected_state_hash is not None and actual != expected_state_hash:
        raise SnapshotError("state hash mismatch: snapshot is not the expected state")
    return ledger


def _rebuild_history_chain(ledger: Ledger) -> None:
    """Re-fold the append-only history exactly as the live ledger folded it: every
    transfer (with the balance entries of its history accounts) and every transient
    failure, by timestamp (transfers are in timestamp order already)."""
    failed = sorted((ts, i) for i, ts in ledger._failed.items())
    history = any(a.history is not None for a in ledger._account_order)
    entries = ledger._chain_entries
    records = ledger._transfer_record
    if not failed and not history:  # the common case: one entry per transfer
        entries.extend(b"T" + record for record in records.values())
        return
    positions: dict[int, int] = {}
    events = heapq.merge(((ts, 0, 0) for ts in records), ((ts, 1, i) for ts, i in failed))
    for ts, kind, failed_id in events:
        if kind == 1:
            entries.append(b"F" + failed_id.to_bytes(16, "little") + ts.to_bytes(8, "little"))
            continue
        record = records[ts]
        entries.append(b"T" + record)
        if not history:
            continue
        for side in (record[16:32], record[32:48]):
            account = ledger._accounts[int.from_bytes(side, "little")]
            if account.history is not None:
                position = positions.get(account.id, 0)
                positions[account.id] = position + 1
                entries.append(b"B" + side + _pack_balance(account.history[position]))
