"""The provisional exposure limit: fallback blocks are capped, BFT blocks are not.

Real ledgers and executors throughout; each cap test has a twin showing the
same transfer passes when the cap is out of the way, so the cap tests can fail.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.messages import Request
from consensus.state_machine import Execution
from finality import DEFAULT_EXPOSURE, ExposureLimit, ExposureUsage, FinalityResult
from finality.executor import ENVELOPE_MAGIC, LedgerExecutor
from ledger import (
    Account,
    CreateTransferResult,
    Ledger,
    Transfer,
    TransferFlags,
    encode_transfers,
)

EXCEEDS = FinalityResult.EXCEEDS_PROVISIONAL_EXPOSURE
OK = CreateTransferResult.OK
LINKED_EVENT_FAILED = CreateTransferResult.LINKED_EVENT_FAILED
LINKED = TransferFlags.LINKED
UNLIMITED = ExposureLimit(max_transfers=(1 << 64) - 1, max_amount=(1 << 128) - 1)
ACCOUNTS = (1, 2, 3)
START_NS = 10**18


def xfer(id: int, amount: int = 10, debit: int = 1, credit: int = 2, **fields: Any) -> Transfer:
    return Transfer(id=id, debit_account_id=debit, credit_account_id=credit, amount=amount,
                    ledger=1, code=1, **fields)  # fmt: skip


class Cluster:
    """One executor over a ledger with accounts, fed blocks at advancing timestamps."""

    def __init__(self, limit: ExposureLimit = DEFAULT_EXPOSURE) -> None:
        ledger = Ledger()
        ledger.create_accounts([Account(id=i, ledger=1, code=1) for i in ACCOUNTS], START_NS)
        self.executor = LedgerExecutor(ledger, exposure=limit)
        self.request_number = 0

    def request(self, transfers: list[Transfer]) -> Request:
        self.request_number += 1
        return Request(client_id=7, request_number=self.request_number,
                       transfers=encode_transfers(transfers))  # fmt: skip

    def block(self, *requests: list[Transfer], term: int = 1) -> Execution:
        first = self.executor.last_timestamp() + 1_000
        return self.executor.execute([self.request(r) for r in requests], first, fallback_term=term)

    def codes(self, *requests: list[Transfer], term: int = 1) -> list[list[int]]:
        return [list(codes) for _, _, codes in self.block(*requests, term=term).results]

    @property
    def ledger(self) -> Ledger:
        return self.executor.ledger

    def balances(self) -> list[tuple[int, int, int, int]]:
        return [(a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted)
                for a in self.ledger.lookup_accounts(list(ACCOUNTS))]  # fmt: skip


def limit(transfers: int = 1_000, amount: int = 10**9) -> ExposureLimit:
    return ExposureLimit(max_transfers=transfers, max_amount=amount)


# ------------------------------------------------------------------ the API


def test_result_codes_sit_outside_the_ledgers_range_and_fit_a_byte() -> None:
    assert int(FinalityResult.EXCEEDS_PROVISIONAL_EXPOSURE) == 200
    assert int(FinalityResult.DENIED_BY_POLICY) == 201  # reserved for the agent gate
    assert max(CreateTransferResult) < min(FinalityResult) <= max(FinalityResult) < 256


@pytest.mark.parametrize(
    "fields",
    [
        {"max_transfers": -1, "max_amount": 0},
        {"max_transfers": 0, "max_amount": -1},
        {"max_transfers": True, "max_amount": 0},
        {"max_transfers": 1.0, "max_amount": 0},
        {"max_transfers": 1 << 64, "max_amount": 0},
        {"max_transfers": 0, "max_amount": 1 << 128},
    ],
)
def test_exposure_limit_rejects_bad_values(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ExposureLimit(**fields)


def test_exposure_limit_is_frozen_and_zero_is_legal() -> None:
    zero = ExposureLimit(max_transfers=0, max_amount=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        zero.max_transfers = 1  # type: ignore[misc]
    assert ExposureLimit(max_transfers=1_000, max_amount=10**9) == DEFAULT_EXPOSURE


# ------------------------------------------------------------------ the caps


def test_cap_by_count() -> None:
    cluster = Cluster(limit(transfers=2))
    assert cluster.codes([xfer(1), xfer(2), xfer(3)]) == [[OK, OK, EXCEEDS]]
    assert cluster.ledger.lookup_transfers([3]) == []
    assert cluster.executor.exposure_used == ExposureUsage(2, 20)


def test_cap_by_amount() -> None:
    cluster = Cluster(limit(amount=25))
    assert cluster.codes([xfer(1, 10), xfer(2, 10), xfer(3, 10), xfer(4, 5)]) == [
        [OK, OK, EXCEEDS, OK]  # a smaller transfer after a veto still fits
    ]
    assert cluster.executor.exposure_used == ExposureUsage(3, 25)
    assert [t.id for t in cluster.ledger.lookup_transfers([1, 2, 3, 4])] == [1, 2, 4]


def test_a_transfer_that_reaches_the_cap_exactly_is_admitted() -> None:
    cluster = Cluster(limit(transfers=2, amount=30))
    assert cluster.codes([xfer(1, 10), xfer(2, 20)]) == [[OK, OK]]
    assert cluster.executor.exposure_used == ExposureUsage(2, 30)
    assert cluster.codes([xfer(3, 0)]) == [[EXCEEDS]]  # count is at the cap


@pytest.mark.parametrize(
    ("cap", "expected"),
    [(limit(transfers=1), EXCEEDS), (limit(amount=15), EXCEEDS), (UNLIMITED, OK)],
)
def test_the_cap_decides_the_outcome(cap: ExposureLimit, expected: int) -> None:
    """Without the cap in the way the very same transfer posts: the cap tests can fail."""
    cluster = Cluster(cap)
    assert cluster.codes([xfer(1, 10), xfer(2, 10)]) == [[OK, expected]]
    assert len(cluster.ledger.lookup_transfers([2])) == (expected == OK)


def test_bft_blocks_are_never_capped() -> None:
    cluster = Cluster(limit(transfers=0, amount=0))
    assert cluster.codes([xfer(1), xfer(2)], [xfer(3, 10**12)], term=0) == [[OK, OK], [OK]]
    assert cluster.executor.exposure_used == ExposureUsage()
    assert cluster.codes([xfer(4)], term=1) == [[EXCEEDS]]


def test_counters_carry_across_consecutive_fallback_blocks_and_terms() -> None:
    cluster = Cluster(limit(transfers=3))
    assert cluster.codes([xfer(1), xfer(2)], term=1) == [[OK, OK]]
    assert cluster.codes([xfer(3)], [xfer(4)], term=2) == [[OK], [EXCEEDS]]
    assert cluster.executor.exposure_used == ExposureUsage(3, 30)


def test_a_bft_block_resets_the_counters_before_it_executes() -> None:
    cluster = Cluster(limit(transfers=1))
    assert cluster.codes([xfer(1)], [xfer(2)]) == [[OK], [EXCEEDS]]
    assert cluster.codes([xfer(3)], term=0) == [[OK]]
    assert cluster.executor.exposure_used == ExposureUsage()
    assert cluster.codes([xfer(2)], [xfer(4)]) == [[OK], [EXCEEDS]]  # a vetoed id may retry


def test_failed_transfers_still_count() -> None:
    cluster = Cluster(limit(transfers=2))
    assert cluster.codes([xfer(1, debit=9), xfer(2), xfer(3)]) == [
        [CreateTransferResult.DEBIT_ACCOUNT_NOT_FOUND, OK, EXCEEDS]
    ]


def test_post_and_void_count_no_amount() -> None:
    cluster = Cluster(limit(amount=100))
    pending = TransferFlags.PENDING
    assert cluster.codes([xfer(1, 60, flags=pending), xfer(2, 40, flags=pending)]) == [[OK, OK]]
    assert cluster.executor.exposure_used == ExposureUsage(2, 100)
    post = xfer(3, 60, pending_id=1, flags=TransferFlags.POST_PENDING_TRANSFER)
    void = xfer(4, 0, pending_id=2, flags=TransferFlags.VOID_PENDING_TRANSFER)
    assert cluster.codes([post, void]) == [[OK, OK]]
    assert cluster.executor.exposure_used == ExposureUsage(4, 100)
    assert cluster.codes([xfer(5, 1)]) == [[EXCEEDS]]  # a plain transfer still counts
    assert cluster.balances()[0] == (0, 60, 0, 0)


# ------------------------------------------------------------ linked chains


def test_a_veto_inside_a_linked_chain_withholds_the_whole_chain() -> None:
    cluster = Cluster(limit(amount=40))
    before = cluster.balances()
    chain = [xfer(2, 10, flags=LINKED), xfer(3, 30, flags=LINKED), xfer(4, 10)]
    codes = cluster.codes([xfer(1, 10), *chain, xfer(5, 20)])
    assert codes == [[OK, LINKED_EVENT_FAILED, EXCEEDS, LINKED_EVENT_FAILED, OK]]
    # Nothing of the chain reached the ledger, and its first member was not counted.
    assert cluster.ledger.lookup_transfers([2, 3, 4]) == []
    assert cluster.executor.exposure_used == ExposureUsage(2, 30)
    after = cluster.balances()
    assert after[0][1] - before[0][1] == 30  # transfers 1 and 5 only
    assert after[1][3] - before[1][3] == 30
    cluster.ledger.check_invariants()
    # Not remembered as failed: the chain posts in a later block once there is room.
    assert cluster.codes(chain, term=0) == [[OK, OK, OK]]


def test_a_veto_on_the_last_member_fails_the_earlier_ones() -> None:
    cluster = Cluster(limit(transfers=2))
    codes = cluster.codes([xfer(1, flags=LINKED), xfer(2, flags=LINKED), xfer(3)])
    assert codes == [[LINKED_EVENT_FAILED, LINKED_EVENT_FAILED, EXCEEDS]]
    assert cluster.executor.exposure_used == ExposureUsage()


def test_chains_around_a_vetoed_chain_keep_their_shape() -> None:
    cluster = Cluster(limit(amount=40))
    first = [xfer(1, 10, flags=LINKED), xfer(2, 10)]
    vetoed = [xfer(3, 10, flags=LINKED), xfer(4, 100)]
    last = [xfer(5, 10, flags=LINKED), xfer(6, 10)]
    assert cluster.codes([*first, *vetoed, *last]) == [
        [OK, OK, LINKED_EVENT_FAILED, EXCEEDS, OK, OK]
    ]


def test_an_open_chain_within_the_cap_is_the_ledgers_business() -> None:
    cluster = Cluster(limit(transfers=10))
    codes = cluster.codes([xfer(1), xfer(2, flags=LINKED), xfer(3, flags=LINKED)])
    assert codes == [[OK, LINKED_EVENT_FAILED, CreateTransferResult.LINKED_EVENT_CHAIN_OPEN]]
    assert cluster.executor.exposure_used == ExposureUsage(3, 30)


def test_an_open_chain_over_the_cap_is_withheld() -> None:
    cluster = Cluster(limit(transfers=2))
    codes = cluster.codes([xfer(1), xfer(2, flags=LINKED), xfer(3, flags=LINKED)])
    assert codes == [[OK, LINKED_EVENT_FAILED, EXCEEDS]]
    assert cluster.executor.exposure_used == ExposureUsage(1, 10)


# ------------------------------------------------------------- timestamps


def test_admitted_events_get_consecutive_timestamps_request_after_request() -> None:
    cluster = Cluster(limit(transfers=3))
    first = cluster.executor.last_timestamp() + 1_000
    requests = [cluster.request([xfer(1), xfer(2, 10**10), xfer(3)]),
                cluster.request([xfer(4, 10**10)]), cluster.request([xfer(5)])]  # fmt: skip
    execution = cluster.executor.execute(requests, first, fallback_term=1)
    assert [codes for _, _, codes in execution.results] == [
        bytes([OK, EXCEEDS, OK]),
        bytes([EXCEEDS]),
        bytes([OK]),
    ]
    stamps = [t.timestamp for t in cluster.ledger.lookup_transfers([1, 3, 5])]
    assert stamps == [first, first + 1, first + 2]
    assert execution.last_timestamp == first + 2 == cluster.ledger.last_timestamp


def test_a_block_with_every_event_vetoed_still_moves_time() -> None:
    cluster = Cluster(limit(transfers=0))
    hash_before = cluster.executor.state_hash()
    first = cluster.executor.last_timestamp() + 1_000
    requests = [cluster.request([xfer(1)]), cluster.request([xfer(2)])]
    execution = cluster.executor.execute(requests, first, fallback_term=1)
    assert execution.last_timestamp == first == cluster.ledger.last_timestamp
    assert cluster.ledger.transfer_count == 0
    assert execution.state_hash != hash_before  # time is part of the state
    assert cluster.codes([xfer(3)], term=0) == [[OK]]


def test_pending_transfers_expire_in_an_all_vetoed_block() -> None:
    cluster = Cluster(limit(transfers=1))
    assert cluster.codes([xfer(1, 10, flags=TransferFlags.PENDING, timeout=1)]) == [[OK]]
    assert cluster.balances()[0][0] == 10
    first = cluster.executor.last_timestamp() + 2 * 10**9
    cluster.executor.execute([cluster.request([xfer(2)])], first, fallback_term=1)
    assert cluster.balances()[0][0] == 0


# ---------------------------------------------------- replicated state


def _fallback_history(cluster: Cluster) -> None:
    cluster.block([xfer(1, 10), xfer(2, 10)], term=0)
    cluster.block([xfer(3, 20), xfer(4, 5, flags=LINKED), xfer(5, 7)], term=1)
    cluster.block([xfer(6, 900)], term=2)


def test_state_hash_is_the_ledgers_while_the_counters_are_zero() -> None:
    cluster = Cluster()
    cluster.block([xfer(1)], term=0)
    assert cluster.executor.state_hash() == cluster.ledger.state_hash()
    cluster.block([xfer(2)], term=1)
    assert cluster.executor.state_hash() != cluster.ledger.state_hash()
    cluster.block([xfer(3)], term=0)
    assert cluster.executor.state_hash() == cluster.ledger.state_hash()


def test_same_blocks_give_the_same_state_hash() -> None:
    one, two = Cluster(limit(amount=1_000)), Cluster(limit(amount=1_000))
    _fallback_history(one)
    _fallback_history(two)
    assert one.executor.exposure_used == ExposureUsage(4, 932)
    assert one.executor.state_hash() == two.executor.state_hash()


def test_the_state_hash_covers_the_counters() -> None:
    """Same ledger state, different counters: different hashes."""
    fallback, bft = Cluster(), Cluster()
    fallback.block([xfer(1)], term=1)
    bft.block([xfer(1)], term=0)
    assert fallback.ledger.state_hash() == bft.ledger.state_hash()
    assert fallback.executor.state_hash() != bft.executor.state_hash()
    # Both non-zero, still different: epochs of two blocks and of one.
    bft.block([xfer(2)], term=1)
    fallback.block([xfer(2)], term=1)
    assert fallback.ledger.state_hash() == bft.ledger.state_hash()
    assert fallback.executor.exposure_used == ExposureUsage(2, 20)
    assert bft.executor.exposure_used == ExposureUsage(1, 10)
    assert fallback.executor.state_hash() != bft.executor.state_hash()


def test_snapshot_is_the_ledgers_while_the_counters_are_zero() -> None:
    cluster = Cluster()
    cluster.block([xfer(1)], term=0)
    assert cluster.executor.snapshot() == cluster.ledger.snapshot()
    cluster.block([xfer(2)], term=1)
    assert cluster.executor.snapshot().startswith(ENVELOPE_MAGIC)


def test_snapshot_round_trip_keeps_the_counters() -> None:
    cluster = Cluster(limit(amount=1_000))
    _fallback_history(cluster)
    data, state_hash = cluster.executor.snapshot(), cluster.executor.state_hash()
    restored = LedgerExecutor(Ledger(), exposure=limit(amount=1_000))
    restored.restore(data, state_hash)
    assert restored.state_hash() == state_hash
    assert restored.exposure_used == cluster.executor.exposure_used
    assert restored.snapshot() == data
    nxt = [Request(client_id=1, request_number=1,
                   transfers=encode_transfers([xfer(7, 80), xfer(8, 9), xfer(9, 1)]))]  # fmt: skip
    first = cluster.executor.last_timestamp() + 1
    one = cluster.executor.execute(nxt, first, fallback_term=3)
    two = restored.execute(nxt, first, fallback_term=3)
    assert one == two
    assert [list(codes) for _, _, codes in one.results] == [[EXCEEDS, OK, OK]]


def test_restoring_a_plain_snapshot_clears_the_counters() -> None:
    plain = Cluster()
    plain.block([xfer(1)], term=0)
    cluster = Cluster()
    cluster.block([xfer(1)], term=1)
    assert cluster.executor.exposure_used != ExposureUsage()
    cluster.executor.restore(plain.executor.snapshot(), plain.executor.state_hash())
    assert cluster.executor.exposure_used == ExposureUsage()
    assert cluster.executor.state_hash() == plain.executor.state_hash()


def _envelope() -> tuple[bytes, bytes]:
    cluster = Cluster()
    _fallback_history(cluster)
    return cluster.executor.snapshot(), cluster.executor.state_hash()


def _rechecksum(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def _with_header(data: bytes, **changes: int) -> bytes:
    header = struct.Struct("<8sII Q QQ Q Q")
    fields = dict(zip(("magic", "version", "reserved", "transfers", "amount_low", "amount_high",
                       "size", "artifacts"), header.unpack_from(data), strict=True))  # fmt: skip
    fields.update(changes)
    return _rechecksum(header.pack(*fields.values()) + data[header.size : -32])


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda d: d[:-1] + bytes([d[-1] ^ 1]), id="checksum"),
        pytest.param(lambda d: d[:20] + bytes([d[20] ^ 1]) + d[21:], id="counter-bit"),
        pytest.param(lambda d: _with_header(d, transfers=1), id="counter-rechecksummed"),
        pytest.param(lambda d: _with_header(d, amount_high=1), id="amount-rechecksummed"),
        pytest.param(lambda d: _with_header(d, transfers=0, amount_low=0), id="zero-counters"),
        pytest.param(lambda d: _with_header(d, version=1), id="version"),
        pytest.param(lambda d: _with_header(d, artifacts=128), id="artifacts-size"),
        pytest.param(lambda d: _with_header(d, reserved=1), id="reserved"),
        pytest.param(lambda d: _with_header(d, size=1), id="size"),
        pytest.param(lambda d: d[:60], id="truncated"),
        pytest.param(lambda d: d[:16], id="header-only"),
        pytest.param(
            lambda d: _rechecksum(d[:99] + bytes([d[99] ^ 1]) + d[100:-32]), id="inner-ledger-bit"
        ),
        pytest.param(lambda d: b"NOTASNAP" + d[8:], id="magic"),
        pytest.param(lambda d: b"", id="empty"),
    ],
)
def test_restore_rejects_a_tampered_envelope(tamper: Any) -> None:
    data, state_hash = _envelope()
    executor = LedgerExecutor(Ledger())
    original_ledger = executor.ledger
    with pytest.raises(ValueError):
        executor.restore(tamper(data), state_hash)
    assert executor.ledger is original_ledger and executor.exposure_used == ExposureUsage()


def test_restore_rejects_the_wrong_expected_hash() -> None:
    data, state_hash = _envelope()
    with pytest.raises(ValueError, match="expected"):
        LedgerExecutor(Ledger()).restore(data, bytes(32))
    cluster = Cluster()
    cluster.block([xfer(1)], term=0)
    ledger_hash = cluster.ledger.state_hash()
    with pytest.raises(ValueError):
        LedgerExecutor(Ledger()).restore(cluster.executor.snapshot(), state_hash)
    LedgerExecutor(Ledger()).restore(cluster.executor.snapshot(), ledger_hash)
    with pytest.raises(ValueError):
        LedgerExecutor(Ledger()).restore(bytearray(data), state_hash)  # type: ignore[arg-type]


# -------------------------------------------------------------- property


def _transfers(draw: st.DrawFn) -> list[Transfer]:
    count = draw(st.integers(1, 12))
    return [
        xfer(
            100 + i,
            draw(st.sampled_from([0, 1, 5, 10, 50])),
            debit=draw(st.sampled_from([1, 1, 1, 9])),
            flags=draw(st.sampled_from([0, 0, LINKED])),
        )
        for i in range(count)
    ]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_vetoes_withhold_whole_chains_and_the_rest_is_the_ledgers_answer(
    data: st.DataObject,
) -> None:
    transfers = data.draw(st.composite(_transfers)())
    cap = limit(transfers=data.draw(st.integers(0, 12)), amount=data.draw(st.integers(0, 120)))
    cluster = Cluster(cap)
    (codes,) = cluster.codes(transfers)
    used = cluster.executor.exposure_used
    assert used.transfers <= cap.max_transfers and used.amount <= cap.max_amount
    # Chains are all withheld (one veto, the rest linked_event_failed) or all passed.
    admitted: list[int] = []
    start = 0
    while start < len(transfers):
        end = start
        while end < len(transfers) - 1 and transfers[end].flags & LINKED:
            end += 1
        chain = codes[start : end + 1]
        if EXCEEDS in chain:
            assert chain.count(EXCEEDS) == 1
            assert all(c in (EXCEEDS, LINKED_EVENT_FAILED) for c in chain)
        else:
            admitted.extend(range(start, end + 1))
        start = end + 1
    assert used.transfers == len(admitted)
    assert used.amount == sum(transfers[i].amount for i in admitted)
    # The admitted events got exactly what a ledger fed only them answers.
    reference = Cluster(UNLIMITED)
    expected = reference.codes([transfers[i] for i in admitted], term=0) if admitted else [[]]
    assert [codes[i] for i in admitted] == expected[0]
