"""ledger.change: a captured change undoes exactly, and applies exactly to a copy.

Compared on everything a reader or a later batch can see: the state hash, the
snapshot bytes, every account's transfers and balance history, and the expiry heap
(which pending transfers will expire, and when)."""

from __future__ import annotations

from typing import Any

import pytest

from ledger import AccountFilter, AccountFlags, CreateTransferResult, Ledger, TransferFlags
from ledger import change as ledger_change
from ledger.state_machine import STATUS_PENDING
from tests.ledger.support import SECOND_NS, Driver, acct, random_history, run, xfer

SEEDS = range(12)


def view(ledger: Ledger) -> tuple[Any, ...]:
    """What can be seen of a ledger, including what only affects later batches."""
    ids = [a.id for a in ledger._account_order]
    every = [AccountFilter(account_id=i, limit=8189) for i in ids]
    live_expiries = sorted(
        entry
        for entry in set(ledger._expiries)
        if (p := ledger._pending.get(entry[2])) is not None
        and p.status == STATUS_PENDING
        and p.timestamp == entry[1]
    )
    expected = sorted(
        (p.expires_at, p.timestamp, p.id)
        for p in ledger._pending_order
        if p.status == STATUS_PENDING and p.expires_at
    )
    assert live_expiries == expected, "a pending transfer would never expire"
    return (
        ledger.state_hash(),
        ledger.snapshot(),
        ledger.lookup_accounts(ids),
        [ledger.get_account_transfers(f) for f in every],
        [ledger.get_account_balances(f) for f in every],
        live_expiries,
        ledger.last_timestamp,
    )


def split(seed: int) -> tuple[list[Any], list[Any], list[Any]]:
    history = random_history(seed, batches=18)
    return history[:7], history[7:13], history[13:]


@pytest.mark.parametrize("seed", SEEDS)
def test_undo_gives_back_the_state_before(seed: int) -> None:
    prefix, block, later = split(seed)
    driver = Driver()
    run(driver, prefix)
    before = driver.ledger.snapshot()
    start_ns = driver.now_ns
    ledger_change.begin(driver.ledger)
    run(driver, block)
    change = ledger_change.end(driver.ledger)
    driver.ledger.snapshot()  # its transfer section now holds the change's transfers
    ledger_change.undo(driver.ledger, change)
    fresh = Ledger.restore(before)
    assert view(driver.ledger) == view(fresh)
    # The same future: run the rest on both (pending expiries included).
    driver.now_ns = start_ns
    other = Driver(fresh, start_ns=start_ns)
    run(driver, block + later)
    run(other, block + later)
    assert view(driver.ledger) == view(other.ledger)


@pytest.mark.parametrize("seed", SEEDS)
def test_apply_to_a_copy_gives_the_state_after(seed: int) -> None:
    prefix, block, later = split(seed)
    driver = Driver()
    run(driver, prefix)
    copy = Driver(Ledger.restore(driver.ledger.snapshot()), start_ns=driver.now_ns)
    ledger_change.begin(driver.ledger)
    run(driver, block)
    change = ledger_change.end(driver.ledger)
    ledger_change.apply(copy.ledger, change)
    assert view(copy.ledger) == view(driver.ledger)
    copy.now_ns = driver.now_ns
    run(driver, later)
    run(copy, later)
    assert view(copy.ledger) == view(driver.ledger)


@pytest.mark.parametrize("seed", SEEDS)
def test_changes_undo_in_reverse_order_and_apply_in_order(seed: int) -> None:
    history = random_history(seed, batches=20)
    driver = Driver()
    run(driver, history[:3])
    copy = Ledger.restore(driver.ledger.snapshot())
    snapshots = [driver.ledger.snapshot()]
    changes = []
    for start in range(3, len(history), 4):
        ledger_change.begin(driver.ledger)
        run(driver, history[start : start + 4])
        changes.append(ledger_change.end(driver.ledger))
        snapshots.append(driver.ledger.snapshot())
    for change in changes:
        ledger_change.apply(copy, change)
    assert view(copy) == view(driver.ledger)
    for change, before in zip(reversed(changes), reversed(snapshots[:-1]), strict=True):
        ledger_change.undo(driver.ledger, change)
        assert view(driver.ledger) == view(Ledger.restore(before))


def test_capture_changes_no_result() -> None:
    plain, captured = Driver(), Driver()
    for seed in range(4):
        history = random_history(seed)
        ledger_change.begin(captured.ledger)
        run(captured, history)
        ledger_change.end(captured.ledger)
        run(plain, history)
        assert view(plain.ledger) == view(captured.ledger)


def test_a_rolled_back_pending_id_used_again_keeps_its_own_expiry() -> None:
    """A linked chain creates pending transfer 7 (1 s timeout) and fails: 7 is rolled
    back.  Transfer 7 is then created again, with a 10 s timeout.  The first one's heap
    entry must not expire the second after 1 s (the old ledger did, and a replica that
    restored from a snapshot, whose heap has no such entry, would then diverge)."""
    driver = Driver()
    driver.accounts([acct(1), acct(2), acct(3, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS)])
    chain = [
        xfer(7, 1, 2, 5, timeout=1, flags=TransferFlags.PENDING | TransferFlags.LINKED),
        xfer(8, 3, 2, 5),  # exceeds credits: the chain fails
    ]
    assert driver.transfers(chain)[1] == CreateTransferResult.EXCEEDS_CREDITS
    assert driver.transfer(id=7, debit=1, credit=2, amount=5, timeout=10,
                           flags=TransferFlags.PENDING) == CreateTransferResult.OK  # fmt: skip
    restored = Driver(Ledger.restore(driver.ledger.snapshot()), start_ns=driver.now_ns)
    for each in (driver, restored):
        each.advance(2)
        assert each.transfer(id=9, debit=1, credit=2, amount=1) == CreateTransferResult.OK
        (account,) = each.ledger.lookup_accounts([1])
        assert account.debits_pending == 5, "transfer 7 expired after 1 s, not 10 s"
    assert driver.ledger.state_hash() == restored.ledger.state_hash()
    driver.now_ns += 10 * SECOND_NS
    driver.transfer(id=10, debit=1, credit=2, amount=1)
    assert driver.ledger.lookup_accounts([1])[0].debits_pending == 0
