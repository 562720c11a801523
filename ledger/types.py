"""Ledger records, flags and limits.

Guarantees: every ``Account``, ``Transfer``, ``AccountBalance`` and
``AccountFilter`` that exists holds integers that fit the canonical 128-byte
layout (u128/u64/u32/u16 fields), so encoding can never fail and two equal
records always encode to the same bytes.  Domain rules (a zero id, a missing
ledger, conflicting flags) are *not* checked here: they are outcomes that the
state machine reports as result codes, exactly as TigerBeetle does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

U16_MAX = (1 << 16) - 1
U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
U128_MAX = (1 << 128) - 1

# Largest batch one call accepts: TigerBeetle's (1 MiB message - 256-byte
# header) / 128-byte event.  A longer batch is rejected whole.
BATCH_EVENTS_MAX = 8189

NANOSECONDS_PER_SECOND = 1_000_000_000


class AccountFlags(enum.IntFlag):
    NONE = 0
    LINKED = 1 << 0
    DEBITS_MUST_NOT_EXCEED_CREDITS = 1 << 1
    CREDITS_MUST_NOT_EXCEED_DEBITS = 1 << 2
    HISTORY = 1 << 3
    # Bit 4 is TigerBeetle's `imported`; Aegis stamps every timestamp itself
    # (consensus owns time), so the bit is reserved here.
    CLOSED = 1 << 5


class TransferFlags(enum.IntFlag):
    NONE = 0
    LINKED = 1 << 0
    PENDING = 1 << 1
    POST_PENDING_TRANSFER = 1 << 2
    VOID_PENDING_TRANSFER = 1 << 3
    BALANCING_DEBIT = 1 << 4
    BALANCING_CREDIT = 1 << 5
    CLOSING_DEBIT = 1 << 6
    CLOSING_CREDIT = 1 << 7
    # Bit 8 (`imported` in TigerBeetle) is reserved, as for accounts.


class AccountFilterFlags(enum.IntFlag):
    NONE = 0
    DEBITS = 1 << 0
    CREDITS = 1 << 1
    REVERSED = 1 << 2


ACCOUNT_FLAGS_KNOWN = int(
    AccountFlags.LINKED
    | AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
    | AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS
    | AccountFlags.HISTORY
    | AccountFlags.CLOSED
)
TRANSFER_FLAGS_KNOWN = (1 << 8) - 1
ACCOUNT_FILTER_FLAGS_KNOWN = 0b111


class RecordError(ValueError):
    """A record field does not fit its canonical width; names the field."""


def _check_width(record: str, field: str, value: object, maximum: int) -> None:
    # bool is an int subclass; a True amount is a caller bug worth naming.
    if type(value) is not int:
        raise RecordError(f"{record}.{field} must be an int, got {type(value).__name__}")
    if value < 0 or value > maximum:
        raise RecordError(f"{record}.{field}={value} is outside 0..{maximum}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    id: int
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0
    user_data_128: int = 0
    user_data_64: int = 0
    user_data_32: int = 0
    ledger: int
    code: int
    flags: int = 0
    timestamp: int = 0

    def __post_init__(self) -> None:
        for name in _ACCOUNT_U128:
            _check_width("Account", name, getattr(self, name), U128_MAX)
        _check_width("Account", "user_data_64", self.user_data_64, U64_MAX)
        _check_width("Account", "user_data_32", self.user_data_32, U32_MAX)
        _check_width("Account", "ledger", self.ledger, U32_MAX)
        _check_width("Account", "code", self.code, U16_MAX)
        _check_width("Account", "flags", int(self.flags), U16_MAX)
        _check_width("Account", "timestamp", self.timestamp, U64_MAX)
        if type(self.flags) is not int:  # IntFlag in, plain int stored
            object.__setattr__(self, "flags", int(self.flags))


_ACCOUNT_U128 = (
    "id",
    "debits_pending",
    "debits_posted",
    "credits_pending",
    "credits_posted",
    "user_data_128",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Transfer:
    id: int
    debit_account_id: int
    credit_account_id: int
    amount: int
    pending_id: int = 0
    user_data_128: int = 0
    user_data_64: int = 0
    user_data_32: int = 0
    timeout: int = 0  # seconds; only for pending transfers
    ledger: int
    code: int
    flags: int = 0
    timestamp: int = 0

    def __post_init__(self) -> None:
        # One expression for the common, valid case (decoding builds many of these);
        # the per-field checks below only run to name what is wrong.
        if (
            type(self.id) is int and 0 <= self.id <= U128_MAX
            and type(self.debit_account_id) is int and 0 <= self.debit_account_id <= U128_MAX
            and type(self.credit_account_id) is int and 0 <= self.credit_account_id <= U128_MAX
            and type(self.amount) is int and 0 <= self.amount <= U128_MAX
            and type(self.pending_id) is int and 0 <= self.pending_id <= U128_MAX
            and type(self.user_data_128) is int and 0 <= self.user_data_128 <= U128_MAX
            and type(self.user_data_64) is int and 0 <= self.user_data_64 <= U64_MAX
            and type(self.user_data_32) is int and 0 <= self.user_data_32 <= U32_MAX
            and type(self.timeout) is int and 0 <= self.timeout <= U32_MAX
            and type(self.ledger) is int and 0 <= self.ledger <= U32_MAX
            and type(self.code) is int and 0 <= self.code <= U16_MAX
            and type(self.flags) is int and 0 <= self.flags <= U16_MAX
            and type(self.timestamp) is int and 0 <= self.timestamp <= U64_MAX
        ):  # fmt: skip
            return
        for name in _TRANSFER_U128:
            _check_width("Transfer", name, getattr(self, name), U128_MAX)
        _check_width("Transfer", "user_data_64", self.user_data_64, U64_MAX)
        _check_width("Transfer", "user_data_32", self.user_data_32, U32_MAX)
        _check_width("Transfer", "timeout", self.timeout, U32_MAX)
        _check_width("Transfer", "ledger", self.ledger, U32_MAX)
        _check_width("Transfer", "code", self.code, U16_MAX)
        _check_width("Transfer", "flags", int(self.flags), U16_MAX)
        _check_width("Transfer", "timestamp", self.timestamp, U64_MAX)
        if type(self.flags) is not int:
            object.__setattr__(self, "flags", int(self.flags))


_TRANSFER_U128 = (
    "id",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "pending_id",
    "user_data_128",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountBalance:
    """An account's balances right after one transfer (history accounts only)."""

    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int
    timestamp: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountFilter:
    """Query for get_account_transfers / get_account_balances.

    timestamp_min/max are inclusive; 0 means unbounded.  flags must select
    debits, credits or both; REVERSED returns newest first.
    """

    account_id: int
    timestamp_min: int = 0
    timestamp_max: int = 0
    limit: int
    flags: int = AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS

    def __post_init__(self) -> None:
        _check_width("AccountFilter", "account_id", self.account_id, U128_MAX)
        _check_width("AccountFilter", "timestamp_min", self.timestamp_min, U64_MAX)
        _check_width("AccountFilter", "timestamp_max", self.timestamp_max, U64_MAX)
        _check_width("AccountFilter", "limit", self.limit, U32_MAX)
        _check_width("AccountFilter", "flags", int(self.flags), U32_MAX)
        if type(self.flags) is not int:
            object.__setattr__(self, "flags", int(self.flags))
