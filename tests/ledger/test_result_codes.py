"""One table row per result code, plus rows where two codes apply (precedence).

Each row builds a fresh ledger with the standard accounts, applies its setup
transfers (each must succeed unless marked), then submits one event and
checks the exact code and that a failed event changed nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from ledger import (
    U128_MAX,
    AccountFlags,
    CreateAccountResult,
    CreateTransferResult,
    Transfer,
    TransferFlags,
)
from tests.ledger.support import Driver, acct, xfer

R = CreateTransferResult
F = TransferFlags
PENDING = F.PENDING
POST = F.POST_PENDING_TRANSFER
VOID = F.VOID_PENDING_TRANSFER
HALF = 1 << 127

STANDARD_ACCOUNTS = [
    acct(1),
    acct(2),
    acct(3, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
    acct(4, flags=AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS),
    acct(5, ledger=2),
    acct(6, flags=AccountFlags.HISTORY),
    acct(7, flags=AccountFlags.CLOSED),
    acct(8),
    acct(9),
]


@dataclass
class Row:
    name: str
    event: Transfer
    expected: CreateTransferResult
    setup: list[Transfer] = field(default_factory=list)
    setup_fails: bool = False  # setup rows that are expected to fail (e.g. to orphan an id)
    start_ns: int = 10**18
    advance_seconds: int = 0  # clock moves after the setup, before the event


def _second_phase(id: int, pending_id: int, flags: int, **fields: Any) -> Transfer:
    values: dict[str, Any] = {"debit": 0, "credit": 0, "ledger": 0, "code": 0}
    values.update(fields)
    return xfer(id, pending_id=pending_id, flags=flags, **values)


def post(id: int, pending_id: int, amount: int = U128_MAX, **fields: Any) -> Transfer:
    return _second_phase(id, pending_id, POST, amount=amount, **fields)


def void(id: int, pending_id: int, amount: int = 0, **fields: Any) -> Transfer:
    return _second_phase(id, pending_id, VOID, amount=amount, **fields)


P100 = xfer(100, amount=50, flags=PENDING)  # a pending transfer 1 -> 2

ROWS = [
    Row("ok", xfer(10), R.OK),
    Row("ok zero amount", xfer(10, amount=0), R.OK),
    Row("linked_event_chain_open", xfer(10, flags=F.LINKED), R.LINKED_EVENT_CHAIN_OPEN),
    Row(
        "chain open before timestamp",
        xfer(10, flags=F.LINKED, timestamp=5),
        R.LINKED_EVENT_CHAIN_OPEN,
    ),
    Row("timestamp_must_be_zero", xfer(10, timestamp=5), R.TIMESTAMP_MUST_BE_ZERO),
    Row("reserved_flag imported bit", xfer(10, flags=1 << 8), R.RESERVED_FLAG),
    Row("reserved_flag high bit", xfer(10, flags=1 << 15), R.RESERVED_FLAG),
    Row("id_must_not_be_zero", xfer(0), R.ID_MUST_NOT_BE_ZERO),
    Row("id_must_not_be_int_max", xfer(U128_MAX), R.ID_MUST_NOT_BE_INT_MAX),
    Row(
        "flags post+void",
        xfer(10, pending_id=100, flags=POST | VOID),
        R.FLAGS_ARE_MUTUALLY_EXCLUSIVE,
        [P100],
    ),
    Row(
        "flags post+pending",
        xfer(10, pending_id=100, flags=POST | PENDING),
        R.FLAGS_ARE_MUTUALLY_EXCLUSIVE,
        [P100],
    ),
    Row(
        "flags void+balancing",
        xfer(10, pending_id=100, flags=VOID | F.BALANCING_DEBIT),
        R.FLAGS_ARE_MUTUALLY_EXCLUSIVE,
        [P100],
    ),
    Row(
        "flags post+closing",
        xfer(10, pending_id=100, flags=POST | F.CLOSING_CREDIT),
        R.FLAGS_ARE_MUTUALLY_EXCLUSIVE,
        [P100],
    ),
    Row(
        "debit_account_id_must_not_be_zero", xfer(10, debit=0), R.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
    ),
    Row(
        "debit_account_id_must_not_be_int_max",
        xfer(10, debit=U128_MAX),
        R.DEBIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX,
    ),
    Row(
        "credit_account_id_must_not_be_zero",
        xfer(10, credit=0),
        R.CREDIT_ACCOUNT_ID_MUST_NOT_BE_ZERO,
    ),
    Row(
        "credit_account_id_must_not_be_int_max",
        xfer(10, credit=U128_MAX),
        R.CREDIT_ACCOUNT_ID_MUST_NOT_BE_INT_MAX,
    ),
    Row("accounts_must_be_different", xfer(10, debit=1, credit=1), R.ACCOUNTS_MUST_BE_DIFFERENT),
    Row("pending_id_must_be_zero", xfer(10, pending_id=3), R.PENDING_ID_MUST_BE_ZERO),
    Row("pending_id_must_not_be_zero", post(10, 0), R.PENDING_ID_MUST_NOT_BE_ZERO),
    Row("pending_id_must_not_be_int_max", post(10, U128_MAX), R.PENDING_ID_MUST_NOT_BE_INT_MAX),
    Row("pending_id_must_be_different", post(10, 10), R.PENDING_ID_MUST_BE_DIFFERENT),
    Row(
        "timeout_reserved single-phase",
        xfer(10, timeout=1),
        R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER,
    ),
    Row(
        "timeout_reserved on post",
        post(10, 100, timeout=1),
        R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER,
        [P100],
    ),
    Row(
        "closing_transfer_must_be_pending",
        xfer(10, flags=F.CLOSING_DEBIT),
        R.CLOSING_TRANSFER_MUST_BE_PENDING,
    ),
    Row("ledger_must_not_be_zero", xfer(10, ledger=0), R.LEDGER_MUST_NOT_BE_ZERO),
    Row("code_must_not_be_zero", xfer(10, code=0), R.CODE_MUST_NOT_BE_ZERO),
    Row("debit_account_not_found", xfer(10, debit=77), R.DEBIT_ACCOUNT_NOT_FOUND),
    Row("credit_account_not_found", xfer(10, credit=77), R.CREDIT_ACCOUNT_NOT_FOUND),
    Row(
        "accounts_must_have_the_same_ledger",
        xfer(10, debit=1, credit=5),
        R.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER,
    ),
    Row(
        "transfer_must_have_the_same_ledger_as_accounts",
        xfer(10, ledger=2),
        R.TRANSFER_MUST_HAVE_THE_SAME_LEDGER_AS_ACCOUNTS,
    ),
    Row("debit_account_already_closed", xfer(10, debit=7), R.DEBIT_ACCOUNT_ALREADY_CLOSED),
    Row("credit_account_already_closed", xfer(10, credit=7), R.CREDIT_ACCOUNT_ALREADY_CLOSED),
    Row(
        "closed by a closing transfer",
        xfer(11, debit=1, credit=2),
        R.DEBIT_ACCOUNT_ALREADY_CLOSED,
        [xfer(10, amount=0, flags=PENDING | F.CLOSING_DEBIT)],
    ),
    Row(
        "post into an account closed since",
        post(11, 100),
        R.CREDIT_ACCOUNT_ALREADY_CLOSED,
        [P100, xfer(10, debit=8, credit=2, amount=0, flags=PENDING | F.CLOSING_CREDIT)],
    ),
    Row(
        "void into a closed account is allowed",
        void(11, 100),
        R.OK,
        [P100, xfer(10, debit=8, credit=2, amount=0, flags=PENDING | F.CLOSING_CREDIT)],
    ),
    Row("pending_transfer_not_found", post(10, 100), R.PENDING_TRANSFER_NOT_FOUND),
    Row("pending_transfer_not_pending", post(10, 99), R.PENDING_TRANSFER_NOT_PENDING, [xfer(99)]),
    Row(
        "pending_transfer_has_different_debit_account_id",
        post(10, 100, debit=8),
        R.PENDING_TRANSFER_HAS_DIFFERENT_DEBIT_ACCOUNT_ID,
        [P100],
    ),
    Row(
        "pending_transfer_has_different_credit_account_id",
        post(10, 100, credit=8),
        R.PENDING_TRANSFER_HAS_DIFFERENT_CREDIT_ACCOUNT_ID,
        [P100],
    ),
    Row(
        "pending_transfer_has_different_ledger",
        post(10, 100, ledger=2),
        R.PENDING_TRANSFER_HAS_DIFFERENT_LEDGER,
        [P100],
    ),
    Row(
        "pending_transfer_has_different_code",
        post(10, 100, code=9),
        R.PENDING_TRANSFER_HAS_DIFFERENT_CODE,
        [P100],
    ),
    Row(
        "exceeds_pending_transfer_amount",
        post(10, 100, amount=51),
        R.EXCEEDS_PENDING_TRANSFER_AMOUNT,
        [P100],
    ),
    Row(
        "pending_transfer_has_different_amount",
        void(10, 100, amount=49),
        R.PENDING_TRANSFER_HAS_DIFFERENT_AMOUNT,
        [P100],
    ),
    Row("partial post is ok", post(10, 100, amount=20), R.OK, [P100]),
    Row(
        "pending_transfer_already_posted",
        post(11, 100),
        R.PENDING_TRANSFER_ALREADY_POSTED,
        [P100, post(10, 100)],
    ),
    Row(
        "pending_transfer_already_voided",
        post(11, 100),
        R.PENDING_TRANSFER_ALREADY_VOIDED,
        [P100, void(10, 100)],
    ),
    Row(
        "pending_transfer_expired",
        post(10, 100),
        R.PENDING_TRANSFER_EXPIRED,
        [xfer(100, amount=50, flags=PENDING, timeout=1)],
        advance_seconds=2,
    ),
    Row(
        "not yet expired",
        post(10, 100),
        R.OK,
        [xfer(100, amount=50, flags=PENDING, timeout=3)],
        advance_seconds=2,
    ),
    Row("exists", xfer(10), R.EXISTS, [xfer(10)]),
    Row(
        "exists_with_different_flags",
        xfer(10, flags=PENDING),
        R.EXISTS_WITH_DIFFERENT_FLAGS,
        [xfer(10)],
    ),
    Row(
        "exists_with_different_pending_id",
        post(11, 101),
        R.EXISTS_WITH_DIFFERENT_PENDING_ID,
        [P100, xfer(101, flags=PENDING), post(11, 100)],
    ),
    Row(
        "exists_with_different_timeout",
        xfer(100, amount=50, flags=PENDING, timeout=5),
        R.EXISTS_WITH_DIFFERENT_TIMEOUT,
        [P100],
    ),
    Row(
        "exists_with_different_debit_account_id",
        xfer(10, debit=8),
        R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID,
        [xfer(10)],
    ),
    Row(
        "exists_with_different_credit_account_id",
        xfer(10, credit=8),
        R.EXISTS_WITH_DIFFERENT_CREDIT_ACCOUNT_ID,
        [xfer(10)],
    ),
    Row(
        "exists_with_different_amount",
        xfer(10, amount=11),
        R.EXISTS_WITH_DIFFERENT_AMOUNT,
        [xfer(10)],
    ),
    Row(
        "exists_with_different_amount on post",
        post(11, 100, amount=3),
        R.EXISTS_WITH_DIFFERENT_AMOUNT,
        [P100, post(11, 100)],
    ),
    Row(
        "exists on post retried with the same request",
        post(11, 100),
        R.EXISTS,
        [P100, post(11, 100)],
    ),
    Row(
        "exists_with_different_user_data_128",
        xfer(10, user_data_128=1),
        R.EXISTS_WITH_DIFFERENT_USER_DATA_128,
        [xfer(10)],
    ),
    Row(
        "exists_with_different_user_data_64",
        xfer(10, user_data_64=1),
        R.EXISTS_WITH_DIFFERENT_USER_DATA_64,
        [xfer(10)],
    ),
    Row(
        "exists_with_different_user_data_32",
        xfer(10, user_data_32=1),
        R.EXISTS_WITH_DIFFERENT_USER_DATA_32,
        [xfer(10)],
    ),
    Row(
        "exists_with_different_ledger",
        xfer(10, ledger=2),
        R.EXISTS_WITH_DIFFERENT_LEDGER,
        [xfer(10)],
    ),
    Row("exists_with_different_code", xfer(10, code=2), R.EXISTS_WITH_DIFFERENT_CODE, [xfer(10)]),
    Row(
        "overflows_debits_pending",
        xfer(10, amount=1, flags=PENDING),
        R.OVERFLOWS_DEBITS_PENDING,
        [xfer(99, amount=U128_MAX, flags=PENDING)],
    ),
    Row(
        "overflows_credits_pending",
        xfer(10, debit=8, amount=1, flags=PENDING),
        R.OVERFLOWS_CREDITS_PENDING,
        [xfer(99, amount=U128_MAX, flags=PENDING)],
    ),
    Row(
        "overflows_debits_posted",
        xfer(10, debit=1, credit=8, amount=1),
        R.OVERFLOWS_DEBITS_POSTED,
        [xfer(99, amount=U128_MAX)],
    ),
    Row(
        "overflows_credits_posted",
        xfer(10, debit=8, credit=2, amount=1),
        R.OVERFLOWS_CREDITS_POSTED,
        [xfer(99, amount=U128_MAX)],
    ),
    Row(
        "overflows_debits",
        xfer(10, debit=1, credit=9, amount=HALF),
        R.OVERFLOWS_DEBITS,
        [xfer(98, credit=2, amount=HALF, flags=PENDING), xfer(99, credit=8, amount=HALF - 1)],
    ),
    Row(
        "overflows_credits",
        xfer(10, debit=9, credit=2, amount=HALF),
        R.OVERFLOWS_CREDITS,
        [xfer(98, debit=1, amount=HALF, flags=PENDING), xfer(99, debit=8, amount=HALF - 1)],
    ),
    Row(
        "overflows_timeout",
        xfer(10, amount=1, flags=PENDING, timeout=1),
        R.OVERFLOWS_TIMEOUT,
        start_ns=(1 << 63) - 10**9,
    ),
    Row("exceeds_credits", xfer(10, debit=3), R.EXCEEDS_CREDITS),
    Row("exceeds_debits", xfer(10, credit=4), R.EXCEEDS_DEBITS),
    Row("within credits is ok", xfer(10, debit=3, amount=5), R.OK, [xfer(99, credit=3, amount=5)]),
    Row("id_already_failed", xfer(10), R.ID_ALREADY_FAILED, [xfer(10, debit=77)], setup_fails=True),
    # --- precedence: where two codes apply, the earlier check wins -------------------
    Row("reserved_flag before id zero", xfer(0, flags=1 << 9), R.RESERVED_FLAG),
    Row("id zero before every field check", xfer(0, debit=0, ledger=0), R.ID_MUST_NOT_BE_ZERO),
    Row(
        "exists before validation",
        xfer(10, debit=0, ledger=0),
        R.EXISTS_WITH_DIFFERENT_DEBIT_ACCOUNT_ID,
        [xfer(10)],
    ),
    Row(
        "exists compares flags first",
        xfer(10, amount=99, flags=PENDING),
        R.EXISTS_WITH_DIFFERENT_FLAGS,
        [xfer(10)],
    ),
    Row(
        "id_already_failed before validation",
        xfer(10, debit=0),
        R.ID_ALREADY_FAILED,
        [xfer(10, debit=77)],
        setup_fails=True,
    ),
    Row(
        "debit zero before credit zero",
        xfer(10, debit=0, credit=0),
        R.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO,
    ),
    Row("pending_id before timeout", xfer(10, pending_id=5, timeout=1), R.PENDING_ID_MUST_BE_ZERO),
    Row(
        "timeout before closing",
        xfer(10, timeout=1, flags=F.CLOSING_DEBIT),
        R.TIMEOUT_RESERVED_FOR_PENDING_TRANSFER,
    ),
    Row("ledger zero before code zero", xfer(10, ledger=0, code=0), R.LEDGER_MUST_NOT_BE_ZERO),
    Row("code zero before account lookup", xfer(10, debit=77, code=0), R.CODE_MUST_NOT_BE_ZERO),
    Row(
        "debit not found before credit not found",
        xfer(10, debit=77, credit=78),
        R.DEBIT_ACCOUNT_NOT_FOUND,
    ),
    Row(
        "same-ledger before closed",
        xfer(10, debit=7, credit=5),
        R.ACCOUNTS_MUST_HAVE_THE_SAME_LEDGER,
    ),
    Row(
        "overflow before exceeds",
        xfer(10, debit=3, credit=8, amount=2),
        R.OVERFLOWS_DEBITS_POSTED,
        [
            xfer(98, debit=9, credit=3, amount=U128_MAX),
            xfer(99, debit=3, credit=2, amount=U128_MAX - 1),
        ],
    ),
    Row("exceeds_credits before exceeds_debits", xfer(10, debit=3, credit=4), R.EXCEEDS_CREDITS),
    Row(
        "post/void flags before pending_id",
        xfer(10, flags=POST | VOID),
        R.FLAGS_ARE_MUTUALLY_EXCLUSIVE,
    ),
    Row("not found before amount", post(10, 100, amount=10**6), R.PENDING_TRANSFER_NOT_FOUND),
    Row(
        "different amount before already posted",
        post(11, 100, amount=51),
        R.EXCEEDS_PENDING_TRANSFER_AMOUNT,
        [P100, post(10, 100)],
    ),
]


def _ledger_for(row: Row) -> Driver:
    driver = Driver(start_ns=row.start_ns)
    assert all(r == CreateAccountResult.OK for r in driver.accounts(STANDARD_ACCOUNTS))
    for transfer in row.setup:
        result = driver.transfers([transfer])[0]
        assert (result != R.OK) == row.setup_fails, (transfer, result)
    driver.advance(row.advance_seconds)
    return driver


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_result_code(row: Row) -> None:
    driver = _ledger_for(row)
    before = driver.ledger.snapshot()
    hash_before = driver.ledger.state_hash()
    result = driver.transfers([row.event])[0]
    assert result == row.expected
    driver.ledger.check_invariants()
    if result != R.OK:
        # A failed event changes nothing: the ledger equals its pre-event
        # snapshot moved to the same time (pending expiry is the clock's doing).
        after = driver.ledger
        restored = type(driver.ledger).restore(before)
        restored.pulse(driver.now_ns - 1)  # the same clock, without the event
        ids = [a.id for a in STANDARD_ACCOUNTS]
        assert after.lookup_accounts(ids) == restored.lookup_accounts(ids)
        assert after.transfer_count == restored.transfer_count
        event_id = [row.event.id]
        assert after.lookup_transfers(event_id) == restored.lookup_transfers(event_id)
    else:
        assert driver.ledger.state_hash() != hash_before


def test_every_transfer_code_has_a_row() -> None:
    covered = {row.expected for row in ROWS}
    assert covered == set(CreateTransferResult) - {R.LINKED_EVENT_FAILED}  # see the chain tests


A = CreateAccountResult


@pytest.mark.parametrize(
    ("account", "expected"),
    [
        (acct(20), A.OK),
        (acct(20, timestamp=1), A.TIMESTAMP_MUST_BE_ZERO),
        (acct(20, flags=1 << 4), A.RESERVED_FLAG),  # TigerBeetle's `imported`, reserved here
        (acct(20, flags=1 << 6), A.RESERVED_FLAG),
        (acct(0), A.ID_MUST_NOT_BE_ZERO),
        (acct(U128_MAX), A.ID_MUST_NOT_BE_INT_MAX),
        (
            acct(
                20,
                flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS
                | AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS,
            ),
            A.FLAGS_ARE_MUTUALLY_EXCLUSIVE,
        ),
        (acct(20, debits_pending=1), A.DEBITS_PENDING_MUST_BE_ZERO),
        (acct(20, debits_posted=1), A.DEBITS_POSTED_MUST_BE_ZERO),
        (acct(20, credits_pending=1), A.CREDITS_PENDING_MUST_BE_ZERO),
        (acct(20, credits_posted=1), A.CREDITS_POSTED_MUST_BE_ZERO),
        (acct(20, ledger=0), A.LEDGER_MUST_NOT_BE_ZERO),
        (acct(20, code=0), A.CODE_MUST_NOT_BE_ZERO),
        (acct(1), A.EXISTS),
        (acct(1, flags=AccountFlags.HISTORY), A.EXISTS_WITH_DIFFERENT_FLAGS),
        (acct(1, user_data_128=1), A.EXISTS_WITH_DIFFERENT_USER_DATA_128),
        (acct(1, user_data_64=1), A.EXISTS_WITH_DIFFERENT_USER_DATA_64),
        (acct(1, user_data_32=1), A.EXISTS_WITH_DIFFERENT_USER_DATA_32),
        (acct(1, ledger=3), A.EXISTS_WITH_DIFFERENT_LEDGER),
        (acct(1, code=3), A.EXISTS_WITH_DIFFERENT_CODE),
        # precedence
        (acct(0, flags=1 << 7), A.RESERVED_FLAG),
        (acct(1, debits_posted=5), A.EXISTS),  # exists before validation; balances ignored
        (acct(20, debits_pending=1, ledger=0), A.DEBITS_PENDING_MUST_BE_ZERO),
        (acct(20, ledger=0, code=0), A.LEDGER_MUST_NOT_BE_ZERO),
    ],
    ids=lambda value: getattr(value, "name", None) or "",
)
def test_account_result_code(account: object, expected: CreateAccountResult) -> None:
    driver = Driver()
    driver.accounts(STANDARD_ACCOUNTS)
    before = driver.ledger.lookup_accounts([a.id for a in STANDARD_ACCOUNTS])
    (result,) = driver.accounts([account])  # type: ignore[list-item]
    assert result == expected
    if result != A.OK:
        assert driver.ledger.lookup_accounts([a.id for a in STANDARD_ACCOUNTS]) == before
        assert driver.ledger.account_count == len(STANDARD_ACCOUNTS)
