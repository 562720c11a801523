"""Canonical binary encoding of ledger records.

Guarantees: ``Account`` and ``Transfer`` encode to exactly 128 bytes in
TigerBeetle's little-endian layout; ``AccountBalance`` to 128 bytes (four u128
balances, u64 timestamp, 56 reserved zero bytes).  Decoding is strict and
total: it either returns records whose re-encoding is byte-identical to the
input, or raises ``DecodeError`` naming the record index and field.  This one
encoding is the only input to hashes, signatures, Merkle leaves and the
write-ahead log, so it must never have two spellings of one record.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ledger.types import (
    ACCOUNT_FLAGS_KNOWN,
    BATCH_EVENTS_MAX,
    TRANSFER_FLAGS_KNOWN,
    Account,
    AccountBalance,
    Transfer,
)

RECORD_SIZE = 128
_MASK64 = (1 << 64) - 1

# Six u128 (as lo/hi u64 pairs), then u64, u32, u32, u32, u16, u16, u64.
# Account:  id, debits_pending, debits_posted, credits_pending, credits_posted,
#           user_data_128 | user_data_64, user_data_32, reserved, ledger, code,
#           flags, timestamp
# Transfer: id, debit_account_id, credit_account_id, amount, pending_id,
#           user_data_128 | user_data_64, user_data_32, timeout, ledger, code,
#           flags, timestamp
_RECORD = struct.Struct("<12QQIIIHHQ")
_BALANCE = struct.Struct("<8QQ56x")
assert _RECORD.size == RECORD_SIZE
assert _BALANCE.size == RECORD_SIZE


class DecodeError(ValueError):
    """Bytes that are not a canonical record; the message names the field."""


def encode_account(account: Account) -> bytes:
    a = account
    return _RECORD.pack(
        a.id & _MASK64, a.id >> 64,
        a.debits_pending & _MASK64, a.debits_pending >> 64,
        a.debits_posted & _MASK64, a.debits_posted >> 64,
        a.credits_pending & _MASK64, a.credits_pending >> 64,
        a.credits_posted & _MASK64, a.credits_posted >> 64,
        a.user_data_128 & _MASK64, a.user_data_128 >> 64,
        a.user_data_64, a.user_data_32, 0, a.ledger, a.code, a.flags, a.timestamp,
    )  # fmt: skip


def encode_transfer(transfer: Transfer) -> bytes:
    t = transfer
    return _RECORD.pack(
        t.id & _MASK64, t.id >> 64,
        t.debit_account_id & _MASK64, t.debit_account_id >> 64,
        t.credit_account_id & _MASK64, t.credit_account_id >> 64,
        t.amount & _MASK64, t.amount >> 64,
        t.pending_id & _MASK64, t.pending_id >> 64,
        t.user_data_128 & _MASK64, t.user_data_128 >> 64,
        t.user_data_64, t.user_data_32, t.timeout, t.ledger, t.code, t.flags, t.timestamp,
    )  # fmt: skip


def encode_balance(balance: AccountBalance) -> bytes:
    b = balance
    return _BALANCE.pack(
        b.debits_pending & _MASK64, b.debits_pending >> 64,
        b.debits_posted & _MASK64, b.debits_posted >> 64,
        b.credits_pending & _MASK64, b.credits_pending >> 64,
        b.credits_posted & _MASK64, b.credits_posted >> 64,
        b.timestamp,
    )  # fmt: skip


def _check_length(data: bytes, what: str, index: int) -> None:
    if len(data) != RECORD_SIZE:
        raise DecodeError(f"{what}[{index}]: expected {RECORD_SIZE} bytes, got {len(data)}")


def decode_account(data: bytes, index: int = 0) -> Account:
    _check_length(data, "account", index)
    f = _RECORD.unpack(data)
    if f[14] != 0:
        raise DecodeError(f"account[{index}].reserved must be zero, got {f[14]}")
    if f[17] & ~ACCOUNT_FLAGS_KNOWN:
        raise DecodeError(
            f"account[{index}].flags has unknown bits 0x{f[17] & ~ACCOUNT_FLAGS_KNOWN:04x}"
        )
    return Account(
        id=f[0] | f[1] << 64,
        debits_pending=f[2] | f[3] << 64,
        debits_posted=f[4] | f[5] << 64,
        credits_pending=f[6] | f[7] << 64,
        credits_posted=f[8] | f[9] << 64,
        user_data_128=f[10] | f[11] << 64,
        user_data_64=f[12],
        user_data_32=f[13],
        ledger=f[15],
        code=f[16],
        flags=f[17],
        timestamp=f[18],
    )


def decode_transfer(data: bytes, index: int = 0) -> Transfer:
    _check_length(data, "transfer", index)
    return _transfer_from_fields(_RECORD.unpack(data), index)


# Slot setters of the frozen dataclass, in record order.  Decoding writes through
# them because the struct format already bounds every field to its width (what
# ``Transfer.__post_init__`` checks), and decoding is on the hot path of every
# replica: this halves its cost, and unrolling the thirteen calls saves a third more.
(
    _set_id, _set_debit, _set_credit, _set_amount, _set_pending_id, _set_user_data_128,
    _set_user_data_64, _set_user_data_32, _set_timeout, _set_ledger, _set_code, _set_flags,
    _set_timestamp,
) = (
    getattr(Transfer, name).__set__
    for name in ("id", "debit_account_id", "credit_account_id", "amount", "pending_id",
                 "user_data_128", "user_data_64", "user_data_32", "timeout", "ledger", "code",
                 "flags", "timestamp")
)  # fmt: skip
_new = object.__new__


def _transfer_from_fields(f: tuple[int, ...], index: int) -> Transfer:
    if f[17] & ~TRANSFER_FLAGS_KNOWN:
        raise DecodeError(
            f"transfer[{index}].flags has unknown bits 0x{f[17] & ~TRANSFER_FLAGS_KNOWN:04x}"
        )
    transfer = _new(Transfer)
    _set_id(transfer, f[0] | f[1] << 64)
    _set_debit(transfer, f[2] | f[3] << 64)
    _set_credit(transfer, f[4] | f[5] << 64)
    _set_amount(transfer, f[6] | f[7] << 64)
    _set_pending_id(transfer, f[8] | f[9] << 64)
    _set_user_data_128(transfer, f[10] | f[11] << 64)
    _set_user_data_64(transfer, f[12])
    _set_user_data_32(transfer, f[13])
    _set_timeout(transfer, f[14])
    _set_ledger(transfer, f[15])
    _set_code(transfer, f[16])
    _set_flags(transfer, f[17])
    _set_timestamp(transfer, f[18])
    return transfer


def decode_balance(data: bytes, index: int = 0) -> AccountBalance:
    _check_length(data, "balance", index)
    if data[72:] != bytes(56):
        raise DecodeError(f"balance[{index}].reserved must be zero")
    f = _BALANCE.unpack(data)
    return AccountBalance(
        debits_pending=f[0] | f[1] << 64,
        debits_posted=f[2] | f[3] << 64,
        credits_pending=f[4] | f[5] << 64,
        credits_posted=f[6] | f[7] << 64,
        timestamp=f[8],
    )


def _check_batch_bytes(data: bytes, what: str) -> int:
    if len(data) % RECORD_SIZE != 0:
        raise DecodeError(f"{what} batch: {len(data)} bytes is not a multiple of {RECORD_SIZE}")
    count = len(data) // RECORD_SIZE
    if count > BATCH_EVENTS_MAX:
        raise DecodeError(f"{what} batch: {count} events exceeds the limit of {BATCH_EVENTS_MAX}")
    return count


def encode_accounts(accounts: Sequence[Account]) -> bytes:
    return b"".join(encode_account(a) for a in accounts)


def encode_transfers(transfers: Sequence[Transfer]) -> bytes:
    return b"".join(encode_transfer(t) for t in transfers)


def decode_accounts(data: bytes) -> list[Account]:
    count = _check_batch_bytes(data, "account")
    return [decode_account(data[i * RECORD_SIZE : (i + 1) * RECORD_SIZE], i) for i in range(count)]


def decode_transfers(data: bytes) -> list[Transfer]:
    _check_batch_bytes(data, "transfer")
    return [_transfer_from_fields(f, i) for i, f in enumerate(_RECORD.iter_unpack(data))]
