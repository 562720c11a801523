"""Behaviour beyond single result codes: chains, two-phase, expiry, closing, queries."""

from __future__ import annotations

import pytest

from ledger import (
    BATCH_EVENTS_MAX,
    U128_MAX,
    AccountFilter,
    AccountFilterFlags,
    AccountFlags,
    CreateTransferResult,
    Ledger,
    LedgerError,
    TransferFlags,
)
from tests.ledger.support import SECOND_NS, Driver, acct, xfer

R = CreateTransferResult
F = TransferFlags
LINKED = F.LINKED


@pytest.fixture
def driver() -> Driver:
    d = Driver()
    d.accounts(
        [
            acct(1),
            acct(2),
            acct(3, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
            acct(6, flags=AccountFlags.HISTORY),
            acct(8, flags=AccountFlags.HISTORY),
        ]
    )
    return d


def balances(d: Driver, account_id: int) -> tuple[int, int, int, int]:
    (a,) = d.ledger.lookup_accounts([account_id])
    return (a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)


# ---------------------------------------------------------------- linked chains


def test_chain_is_all_or_nothing(driver: Driver) -> None:
    results = driver.transfers(
        [xfer(10, flags=LINKED), xfer(11, flags=LINKED), xfer(12, debit=3), xfer(13)]
    )
    assert results == [R.LINKED_EVENT_FAILED, R.LINKED_EVENT_FAILED, R.EXCEEDS_CREDITS, R.OK]
    assert [t.id for t in driver.ledger.lookup_transfers([10, 11, 12, 13])] == [13]
    assert balances(driver, 1) == (0, 10, 0, 0)
    driver.ledger.check_invariants()


def test_events_after_the_break_fail_and_chain_sees_its_own_effects(driver: Driver) -> None:
    # 21 can only succeed because 20 (same chain) funded account 3 first.
    results = driver.transfers(
        [
            xfer(20, debit=1, credit=3, amount=5, flags=LINKED),
            xfer(21, debit=3, credit=2, amount=5, flags=LINKED),
            xfer(22, debit=3, credit=2, amount=1, flags=LINKED),  # breaks: 3 is empty now
            xfer(23, flags=LINKED),
            xfer(24),
            xfer(25, flags=LINKED),
            xfer(26),
        ]
    )
    assert results == [
        R.LINKED_EVENT_FAILED,
        R.LINKED_EVENT_FAILED,
        R.EXCEEDS_CREDITS,
        R.LINKED_EVENT_FAILED,
        R.LINKED_EVENT_FAILED,
        R.OK,
        R.OK,
    ]
    assert balances(driver, 3) == (0, 0, 0, 0)


def test_open_chain_at_batch_end_fails_whole_chain(driver: Driver) -> None:
    results = driver.transfers([xfer(30), xfer(31, flags=LINKED), xfer(32, flags=LINKED)])
    assert results == [R.OK, R.LINKED_EVENT_FAILED, R.LINKED_EVENT_CHAIN_OPEN]
    assert driver.ledger.transfer_count == 1


def test_exists_breaks_a_chain_and_linked_bit_is_compared(driver: Driver) -> None:
    assert driver.transfer(id=40) == R.OK
    assert driver.transfers([xfer(40, flags=LINKED), xfer(41)]) == [
        R.EXISTS_WITH_DIFFERENT_FLAGS,
        R.LINKED_EVENT_FAILED,
    ]


def test_transient_failure_survives_chain_rollback(driver: Driver) -> None:
    # TigerBeetle's example: T1 rolled back, T2 exceeds, T3 never ran.
    results = driver.transfers([xfer(50, flags=LINKED), xfer(51, debit=3, flags=LINKED), xfer(52)])
    assert results == [R.LINKED_EVENT_FAILED, R.EXCEEDS_CREDITS, R.LINKED_EVENT_FAILED]
    assert driver.transfers([xfer(50), xfer(51), xfer(52)]) == [R.OK, R.ID_ALREADY_FAILED, R.OK]


def test_rolled_back_pending_does_not_expire_later(driver: Driver) -> None:
    results = driver.transfers(
        [xfer(60, amount=7, flags=LINKED | F.PENDING, timeout=1), xfer(61, debit=3)]
    )
    assert results == [R.LINKED_EVENT_FAILED, R.EXCEEDS_CREDITS]
    driver.advance(5)
    assert driver.transfer(id=62) == R.OK  # the sweep must skip the rolled-back pending
    assert balances(driver, 1) == (0, 10, 0, 0)
    driver.ledger.check_invariants()


# ------------------------------------------------------------ two-phase & expiry


def test_post_partial_releases_the_whole_pending_amount(driver: Driver) -> None:
    assert driver.transfer(id=70, amount=100, flags=F.PENDING) == R.OK
    assert balances(driver, 1) == (100, 0, 0, 0)
    post = xfer(
        71,
        debit=0,
        credit=0,
        amount=30,
        ledger=0,
        code=0,
        pending_id=70,
        flags=F.POST_PENDING_TRANSFER,
    )
    assert driver.transfers([post]) == [R.OK]
    assert balances(driver, 1) == (0, 30, 0, 0)
    assert balances(driver, 2) == (0, 0, 0, 30)
    (stored,) = driver.ledger.lookup_transfers([71])
    assert (stored.debit_account_id, stored.credit_account_id, stored.amount) == (1, 2, 30)
    assert (stored.ledger, stored.code, stored.timeout) == (1, 1, 0)


def test_expiry_releases_balance_at_the_next_batch(driver: Driver) -> None:
    assert driver.transfer(id=80, amount=9, flags=F.PENDING, timeout=2) == R.OK
    driver.advance(1)
    driver.ledger.pulse(driver.now_ns)
    assert balances(driver, 1) == (9, 0, 0, 0)
    driver.advance(2)
    driver.ledger.pulse(driver.now_ns)
    assert balances(driver, 1) == (0, 0, 0, 0)
    assert driver.ledger.lookup_transfers([80])[0].amount == 9  # expiry creates no transfer
    driver.ledger.check_invariants()


def test_post_checks_expiry_against_its_own_timestamp() -> None:
    ledger = Ledger()
    ledger.create_accounts([acct(1), acct(2)], 100)
    assert ledger.create_transfers([xfer(1, flags=F.PENDING, timeout=1)], 200) == [R.OK]
    expires_at = 200 + SECOND_NS
    post = xfer(
        2,
        debit=0,
        credit=0,
        amount=U128_MAX,
        ledger=0,
        code=0,
        pending_id=1,
        flags=F.POST_PENDING_TRANSFER,
    )
    # The batch's first event is exactly at expiry: no sweep has run, the check still holds.
    assert ledger.create_transfers([post], expires_at) == [R.PENDING_TRANSFER_EXPIRED]
    (a,) = ledger.lookup_accounts([1])
    assert a.debits_pending == 10  # released only by the sweep, at the next batch
    ledger.pulse(expires_at + 1)
    (a,) = ledger.lookup_accounts([1])
    assert a.debits_pending == 0


def test_expired_closing_transfer_reopens_the_account(driver: Driver) -> None:
    closing = xfer(90, amount=0, flags=F.PENDING | F.CLOSING_DEBIT, timeout=1)
    assert driver.transfers([closing]) == [R.OK]
    assert driver.transfer(id=91) == R.DEBIT_ACCOUNT_ALREADY_CLOSED
    driver.advance(2)
    assert driver.transfer(id=92) == R.OK


def test_balancing_debit_clamps_and_may_move_zero(driver: Driver) -> None:
    assert driver.transfer(id=100, debit=2, credit=3, amount=40) == R.OK
    balancing = dict(debit=3, credit=1, amount=U128_MAX, flags=F.BALANCING_DEBIT)
    assert driver.transfer(id=101, **balancing) == R.OK
    assert driver.ledger.lookup_transfers([101])[0].amount == 40
    assert driver.transfer(id=102, **balancing) == R.OK
    assert driver.ledger.lookup_transfers([102])[0].amount == 0
    # A retry with a lower ceiling than what moved is a different request.
    assert driver.transfer(id=101, debit=3, credit=1, amount=39, flags=F.BALANCING_DEBIT) == (
        R.EXISTS_WITH_DIFFERENT_AMOUNT
    )


# ---------------------------------------------------------------------- queries


def test_account_transfers_and_balances_follow_tigerbeetle_example(driver: Driver) -> None:
    for id, (debit, credit, amount) in enumerate(
        [(6, 8, 10), (8, 6, 11), (6, 8, 12), (8, 6, 13)], start=1
    ):
        assert driver.transfer(id=id, debit=debit, credit=credit, amount=amount) == R.OK
    rows = driver.ledger.get_account_balances(AccountFilter(account_id=6, limit=10))
    assert [
        (b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted) for b in rows
    ] == [(0, 10, 0, 0), (0, 10, 0, 11), (0, 22, 0, 11), (0, 22, 0, 24)]
    debits = driver.ledger.get_account_transfers(
        AccountFilter(account_id=6, limit=10, flags=AccountFilterFlags.DEBITS)
    )
    assert [t.id for t in debits] == [1, 3]
    newest = driver.ledger.get_account_transfers(
        AccountFilter(
            account_id=6,
            limit=2,
            flags=AccountFilterFlags.DEBITS
            | AccountFilterFlags.CREDITS
            | AccountFilterFlags.REVERSED,
        )
    )
    assert [t.id for t in newest] == [4, 3]
    ts = [t.timestamp for t in driver.ledger.lookup_transfers([2, 3])]
    window = driver.ledger.get_account_transfers(
        AccountFilter(account_id=6, limit=10, timestamp_min=ts[0], timestamp_max=ts[1])
    )
    assert [t.id for t in window] == [2, 3]  # bounds are inclusive


@pytest.mark.parametrize(
    "query",
    [
        AccountFilter(account_id=0, limit=1),
        AccountFilter(account_id=U128_MAX, limit=1),
        AccountFilter(account_id=6, limit=0),
        AccountFilter(account_id=6, limit=1, flags=AccountFilterFlags.REVERSED),
        AccountFilter(account_id=6, limit=1, flags=1 << 3 | 1),
        AccountFilter(account_id=6, limit=1, timestamp_min=5, timestamp_max=4),
        AccountFilter(account_id=6, limit=1, timestamp_min=1 << 63),
    ],
)
def test_invalid_filters_return_nothing(driver: Driver, query: AccountFilter) -> None:
    assert driver.transfer(id=1, debit=6, credit=8) == R.OK
    assert driver.ledger.get_account_transfers(query) == []
    assert driver.ledger.get_account_balances(query) == []


def test_balances_need_history_flag(driver: Driver) -> None:
    assert driver.transfer(id=1) == R.OK
    assert driver.ledger.get_account_balances(AccountFilter(account_id=1, limit=5)) == []
    assert len(driver.ledger.get_account_transfers(AccountFilter(account_id=1, limit=5))) == 1


def test_lookups_skip_missing_and_failed_ids(driver: Driver) -> None:
    assert driver.transfers([xfer(1), xfer(2, debit=99)]) == [R.OK, R.DEBIT_ACCOUNT_NOT_FOUND]
    assert [t.id for t in driver.ledger.lookup_transfers([2, 1, 7, 1])] == [1, 1]
    assert [a.id for a in driver.ledger.lookup_accounts([99, 2])] == [2]


# ------------------------------------------------------------- API contract


def test_batch_over_the_limit_is_rejected_whole(driver: Driver) -> None:
    batch = [xfer(1000 + i) for i in range(BATCH_EVENTS_MAX + 1)]
    with pytest.raises(LedgerError, match="exceeds the limit of 8189"):
        driver.transfers(batch)
    assert driver.ledger.transfer_count == 0
    assert driver.transfers(batch[:BATCH_EVENTS_MAX]).count(R.OK) == BATCH_EVENTS_MAX


def test_time_must_advance(driver: Driver) -> None:
    last = driver.ledger.last_timestamp
    hash_before = driver.ledger.state_hash()
    with pytest.raises(LedgerError, match="does not advance"):
        driver.ledger.create_transfers([xfer(1)], last)
    with pytest.raises(LedgerError, match="does not advance"):
        driver.ledger.create_transfers([xfer(1), xfer(2)], last + 1)
    with pytest.raises(LedgerError, match="not an int"):
        driver.ledger.create_transfers([xfer(1)], 1 << 63)
    assert driver.ledger.state_hash() == hash_before
