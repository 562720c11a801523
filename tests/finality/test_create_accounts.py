"""``OP_CREATE_ACCOUNTS``: accounts are created through consensus like transfers are."""

from __future__ import annotations

from consensus.messages import OP_CREATE_ACCOUNTS, OP_TRANSFERS, Request
from finality.executor import LedgerExecutor
from ledger import (
    Account,
    CreateAccountResult,
    Ledger,
    Transfer,
    encode_accounts,
    encode_transfers,
)

ACCOUNTS = [Account(id=1, ledger=1, code=1), Account(id=2, ledger=1, code=1)]


def _block() -> list[Request]:
    transfer = Transfer(id=5, debit_account_id=1, credit_account_id=2, amount=3, ledger=1, code=1)
    return [
        Request(client_id=1, request_number=1, transfers=encode_accounts(ACCOUNTS),
                operation=OP_CREATE_ACCOUNTS),
        Request(client_id=2, request_number=1, transfers=encode_transfers([transfer]),
                operation=OP_TRANSFERS),
        Request(client_id=1, request_number=2, transfers=encode_accounts(ACCOUNTS[:1]),
                operation=OP_CREATE_ACCOUNTS),
    ]  # fmt: skip


def test_accounts_then_transfers_in_one_block() -> None:
    executor = LedgerExecutor(Ledger())
    execution = executor.execute(_block(), first_timestamp=1_000)
    assert [codes for _, _, codes in execution.results] == [
        bytes(2),
        bytes(1),
        bytes((CreateAccountResult.EXISTS,)),
    ]
    assert [a.timestamp for a in executor.ledger.lookup_accounts([1, 2])] == [1_000, 1_001]
    assert executor.ledger.lookup_transfers([5])[0].timestamp == 1_002
    assert execution.last_timestamp == 1_003
    twin = LedgerExecutor(Ledger())
    assert twin.execute(_block(), first_timestamp=1_000).state_hash == execution.state_hash


def test_undecodable_account_records_are_refused_before_ordering() -> None:
    executor = LedgerExecutor(Ledger())
    bad = Request(client_id=1, request_number=1, transfers=b"\xff" * 128,
                  operation=OP_CREATE_ACCOUNTS)  # fmt: skip
    problem = executor.check_request(bad)
    assert problem is not None and "account[0]" in problem
    assert executor.check_request(_block()[0]) is None
