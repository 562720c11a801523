"""State hash determinism and snapshot/restore, including corrupt input."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import pytest

from ledger import CreateTransferResult, Ledger, SnapshotError
from tests.ledger.support import Driver, acct, random_history, replay, xfer

SEEDS = range(8)


@pytest.mark.parametrize("seed", SEEDS)
def test_replaying_the_same_history_gives_the_same_hash(seed: int) -> None:
    history = random_history(seed)
    assert replay(history).ledger.state_hash() == replay(history).ledger.state_hash()


def test_hash_differs_when_history_differs() -> None:
    a, b = random_history(1), random_history(1)
    kind, events = b[-1]
    b[-1] = (kind, events[:-1])
    assert replay(a).ledger.state_hash() != replay(b).ledger.state_hash()


def test_hash_is_the_same_in_another_process() -> None:
    here = replay(random_history(3)).ledger.state_hash().hex()
    code = textwrap.dedent(
        """
        from tests.ledger.support import random_history, replay
        print(replay(random_history(3)).ledger.state_hash().hex())
        """
    )
    env = dict(os.environ, PYTHONHASHSEED="12345")  # set/dict order must not leak in
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env, cwd=os.getcwd())  # fmt: skip
    assert out.stdout.strip() == here


def test_hash_covers_failed_ids_and_pending_status() -> None:
    base = Driver()
    base.accounts([acct(1), acct(2)])
    snapshot = base.ledger.snapshot()

    failed = Driver(Ledger.restore(snapshot), start_ns=base.now_ns)
    assert failed.transfer(id=9, debit=5) == CreateTransferResult.DEBIT_ACCOUNT_NOT_FOUND
    rejected = Driver(Ledger.restore(snapshot), start_ns=base.now_ns)
    assert (
        rejected.transfer(id=9, debit=0) == CreateTransferResult.DEBIT_ACCOUNT_ID_MUST_NOT_BE_ZERO
    )
    # Same balances, same transfers; only the remembered failed id differs.
    assert failed.ledger.state_hash() != rejected.ledger.state_hash()


@pytest.mark.parametrize("seed", SEEDS)
def test_snapshot_restore_round_trip_and_continue(seed: int) -> None:
    history = random_history(seed, batches=16)
    original = replay(history[:10])
    data = original.ledger.snapshot()
    restored = Ledger.restore(data, expected_state_hash=original.ledger.state_hash())
    assert restored.state_hash() == original.ledger.state_hash()
    assert restored.snapshot() == data
    # Both continue identically: restore rebuilt indexes, expiry heap and history chain.
    continued = Driver(restored, start_ns=original.now_ns)
    for kind, events in history[10:]:
        assert kind == "transfers"
        assert original.transfers(events) == continued.transfers(events)
        original.advance(1)
        continued.advance(1)
    assert continued.ledger.state_hash() == original.ledger.state_hash()
    continued.ledger.check_invariants()


def _corrupt_snapshot() -> bytes:
    return replay(random_history(5)).ledger.snapshot()


def _reseal(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def test_restore_rejects_any_flipped_byte() -> None:
    data = _corrupt_snapshot()
    for position in range(0, len(data), max(1, len(data) // 97)):
        damaged = bytearray(data)
        damaged[position] ^= 0x01
        with pytest.raises(SnapshotError):
            Ledger.restore(bytes(damaged))


@pytest.mark.parametrize("cut", [0, 10, 100, -1, -33])
def test_restore_rejects_truncation(cut: int) -> None:
    data = _corrupt_snapshot()
    with pytest.raises(SnapshotError):
        Ledger.restore(data[:cut])


def test_restore_catches_resealed_but_inconsistent_balances() -> None:
    # The checker must not just trust the checksum: re-seal a doctored balance.
    data = bytearray(_corrupt_snapshot()[:-32])
    header = 8 + 4 + 4 + 8 + 32 + 40
    data[header + 32] ^= 0x01  # debits_posted low byte of the first account
    with pytest.raises(SnapshotError, match="balances do not follow"):
        Ledger.restore(_reseal(bytes(data)))


def test_restore_catches_a_doctored_declared_hash() -> None:
    data = bytearray(_corrupt_snapshot()[:-32])
    data[24] ^= 0xFF  # first byte of the declared state hash
    with pytest.raises(SnapshotError, match="state hash mismatch"):
        Ledger.restore(_reseal(bytes(data)))


def test_restore_checks_the_expected_hash() -> None:
    data = _corrupt_snapshot()
    with pytest.raises(SnapshotError, match="not the expected state"):
        Ledger.restore(data, expected_state_hash=bytes(32))


def test_restore_names_bad_magic() -> None:
    data = bytearray(_corrupt_snapshot()[:-32])
    data[0:8] = b"NOTALEDG"
    with pytest.raises(SnapshotError, match="not a ledger snapshot"):
        Ledger.restore(_reseal(bytes(data)))


def test_empty_ledger_round_trips() -> None:
    empty = Ledger()
    assert Ledger.restore(empty.snapshot()).state_hash() == empty.state_hash()


def test_chain_rollback_leaves_hash_as_if_never_tried() -> None:
    a = Driver()
    b = Driver()
    for d in (a, b):
        d.accounts([acct(1), acct(2), acct(3, flags=2)])  # 3: debits must not exceed credits
    # a: a chain (one pending) that breaks at 7; b: two plain invalid events, then 7.
    # Both remember failed id 7 at the same timestamp and create nothing.
    assert a.transfers([xfer(5, flags=1), xfer(6, flags=3, timeout=1), xfer(7, debit=3)])[2] == (
        CreateTransferResult.EXCEEDS_CREDITS
    )
    assert b.transfers([xfer(8, ledger=0), xfer(9, ledger=0), xfer(7, debit=3)])[2] == (
        CreateTransferResult.EXCEEDS_CREDITS
    )
    assert a.ledger.state_hash() == b.ledger.state_hash()
    a.advance(5)
    b.advance(5)
    assert a.transfer(id=11) == b.transfer(id=11) == CreateTransferResult.OK
    assert a.ledger.state_hash() == b.ledger.state_hash()
