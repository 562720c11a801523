"""The agent gate and its built-in amount-limit policy, inside the executor.

Real ledgers and executors; each denial test has a twin where the transfer
passes (no limit, or a limit it fits), so the denial tests can fail.
"""

from __future__ import annotations

import hashlib

import pytest

from consensus.messages import OP_SET_LIMITS, Request
from consensus.state_machine import Execution
from finality import FinalityResult
from finality.executor import ENVELOPE_MAGIC, LedgerExecutor
from finality.gate import (
    LIMIT_ACCOUNT,
    LIMIT_LEDGER,
    VERDICT_RECORD,
    Action,
    AgentGate,
    AmountLimitPolicy,
    Artifacts,
    LimitError,
    Policy,
    Reason,
    Verdict,
    decode_limits,
    encode_limits,
)
from ledger import Account, CreateTransferResult, Ledger, Transfer, TransferFlags, encode_transfers

DENIED = FinalityResult.DENIED_BY_POLICY
OK = CreateTransferResult.OK
LINKED_EVENT_FAILED = CreateTransferResult.LINKED_EVENT_FAILED
OPERATOR, CUSTOMER = 1, 7
START_NS = 10**18


def xfer(id: int, amount: int, debit: int = 1, flags: int = 0) -> Transfer:
    return Transfer(id=id, debit_account_id=debit, credit_account_id=3, amount=amount,
                    ledger=1, code=1, flags=flags)  # fmt: skip


class Node:
    def __init__(self) -> None:
        ledger = Ledger()
        ledger.create_accounts([Account(id=i, ledger=1, code=1) for i in (1, 2, 3)], START_NS)
        self.executor = LedgerExecutor(ledger, operators=frozenset({OPERATOR}))
        self.number = 0

    def _request(self, client: int, payload: bytes, operation: int = 0) -> Request:
        self.number += 1
        return Request(client_id=client, request_number=self.number, transfers=payload,
                       operation=operation)  # fmt: skip

    def block(self, *requests: Request) -> Execution:
        first = self.executor.last_timestamp() + 1_000
        return self.executor.execute(list(requests), first)

    def transfers(self, *transfers: Transfer) -> Request:
        return self._request(CUSTOMER, encode_transfers(list(transfers)))

    def limits(self, *changes: tuple[int, int, int], client: int = OPERATOR) -> Request:
        return self._request(client, encode_limits(changes), OP_SET_LIMITS)


def codes(execution: Execution) -> list[list[int]]:
    return [list(c) for _, _, c in execution.results]


def test_account_and_ledger_limits_deny_and_the_block_carries_the_verdicts() -> None:
    node = Node()
    setup = node.block(node.limits((LIMIT_ACCOUNT, 1, 100), (LIMIT_LEDGER, 1, 500)))
    assert codes(setup) == [[OK, OK]] and setup.verdicts == b""
    run = node.block(node.transfers(xfer(1, 100), xfer(2, 101), xfer(3, 300, debit=2),
                                    xfer(4, 501, debit=2)))  # fmt: skip
    assert codes(run) == [[OK, DENIED, OK, DENIED]]
    size = VERDICT_RECORD.size
    records = [VERDICT_RECORD.unpack_from(run.verdicts, o) for o in range(0, 2 * size, size)]
    assert len(run.verdicts) == 2 * VERDICT_RECORD.size
    assert records[0][:5] == (0, 1, Action.DENY, Policy.AMOUNT_LIMIT, Reason.ACCOUNT_LIMIT)
    assert records[0][6] == 100
    assert records[1][:5] == (0, 3, Action.DENY, Policy.AMOUNT_LIMIT, Reason.LEDGER_LIMIT)
    assert [t.id for t in node.executor.ledger.lookup_transfers([1, 2, 3, 4])] == [1, 3]


def test_without_limits_the_same_transfers_pass() -> None:
    node = Node()
    run = node.block(node.transfers(xfer(1, 100), xfer(2, 101), xfer(4, 501, debit=2)))
    assert codes(run) == [[OK, OK, OK]] and run.verdicts == b""


def test_limits_take_effect_from_the_next_block_and_zero_removes_one() -> None:
    node = Node()
    same_block = node.block(node.limits((LIMIT_ACCOUNT, 1, 10)), node.transfers(xfer(1, 50)))
    assert codes(same_block) == [[OK], [OK]]  # agents saw the parent height: no limit yet
    assert codes(node.block(node.transfers(xfer(2, 50)))) == [[DENIED]]
    node.block(node.limits((LIMIT_ACCOUNT, 1, 0)))
    assert codes(node.block(node.transfers(xfer(3, 50)))) == [[OK]]


def test_a_denied_member_fails_its_linked_chain_and_changes_nothing() -> None:
    node = Node()
    node.block(node.limits((LIMIT_ACCOUNT, 1, 100)))
    before = node.executor.ledger.lookup_accounts([1, 2, 3])
    chain = node.block(node.transfers(xfer(1, 10, flags=TransferFlags.LINKED), xfer(2, 200),
                                      xfer(3, 10)))  # fmt: skip
    assert codes(chain) == [[LINKED_EVENT_FAILED, DENIED, OK]]
    after = node.executor.ledger.lookup_accounts([1, 2])
    assert [a.debits_posted for a in after] == [b.debits_posted + 10 for b in before[:1]] + [0]


def test_post_and_void_are_not_screened() -> None:
    node = Node()
    pending = node.block(node.transfers(xfer(1, 90, flags=TransferFlags.PENDING)))
    node.block(node.limits((LIMIT_ACCOUNT, 1, 50)))
    post = Transfer(id=2, pending_id=1, amount=(1 << 128) - 1, debit_account_id=1,
                    credit_account_id=3, ledger=1, code=1,
                    flags=TransferFlags.POST_PENDING_TRANSFER)  # fmt: skip
    assert codes(pending) == [[OK]] and codes(node.block(node.transfers(post))) == [[OK]]


def test_only_operators_change_limits() -> None:
    node = Node()
    refused = node.block(node.limits((LIMIT_ACCOUNT, 1, 10), client=CUSTOMER))
    assert codes(refused) == [[FinalityResult.NOT_AN_OPERATOR]]
    assert node.executor.artifacts.empty
    assert codes(node.block(node.transfers(xfer(1, 50)))) == [[OK]]


@pytest.mark.parametrize(
    ("record", "why"),
    [
        (encode_limits([(9, 1, 10)]), "unknown limit kind"),
        (encode_limits([(LIMIT_ACCOUNT, 0, 10)]), "not a valid target"),
        (encode_limits([(LIMIT_LEDGER, 1 << 40, 10)]), "not a valid target"),
        (encode_limits([(LIMIT_ACCOUNT, 1, 10)])[:-1] + b"\x01", "reserved bytes"),
        (b"\x01\x00\x00\x00\x05" + bytes(123), "reserved field"),
        (bytes(100), "128-byte records"),
    ],
)
def test_malformed_limit_records_are_refused_before_ordering(record: bytes, why: str) -> None:
    with pytest.raises(LimitError, match=why):
        decode_limits(record)
    node = Node()
    if len(record) % 128 == 0:
        request = Request(client_id=OPERATOR, request_number=1, transfers=record, operation=1)
        problem = node.executor.check_request(request)
        assert problem is not None and why in problem


def test_state_hash_and_snapshot_cover_the_limits() -> None:
    node, other = Node(), Node()
    plain = node.executor.state_hash()
    node.block(node.limits((LIMIT_ACCOUNT, 2, 70), (LIMIT_LEDGER, 1, 900)))
    other.block(other.limits((LIMIT_ACCOUNT, 2, 71), (LIMIT_LEDGER, 1, 900)))
    assert node.executor.state_hash() != other.executor.state_hash()
    assert node.executor.state_hash() != plain
    data = node.executor.snapshot()
    assert data.startswith(ENVELOPE_MAGIC)
    restored = LedgerExecutor(Ledger())
    restored.restore(data, node.executor.state_hash())
    assert restored.artifacts == node.executor.artifacts
    assert restored.state_hash() == node.executor.state_hash()
    with pytest.raises(ValueError):
        LedgerExecutor(Ledger()).restore(data, other.executor.state_hash())
    # Artifacts not in canonical order are refused even under a fresh checksum.
    body = data[:-32]
    swapped = body[:-256] + body[-128:] + body[-256:-128]
    with pytest.raises(ValueError, match="canonical"):
        LedgerExecutor(Ledger()).restore(
            swapped + hashlib.sha256(swapped).digest(), node.executor.state_hash()
        )


def test_the_gate_is_pure_and_first_deny_wins() -> None:
    class Always:
        def decide(self, transfer: Transfer, view: object, artifacts: Artifacts) -> Verdict:
            return Verdict(Action.DENY, 9, 9, 0)

    artifacts = Artifacts().with_limits([(LIMIT_ACCOUNT, 1, 5)])
    ledger = Ledger()
    gate = AgentGate((AmountLimitPolicy(), Always()))
    verdicts = gate.screen([xfer(1, 10), xfer(2, 1)], ledger, artifacts)
    assert [v.policy for v in verdicts] == [Policy.AMOUNT_LIMIT, 9]
    assert gate.screen([xfer(1, 10), xfer(2, 1)], ledger, artifacts) == verdicts
    with pytest.raises(ValueError):
        Verdict(action=-1)
