"""Builders shared by the ledger tests: terse records and a batch clock."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ledger import Account, Ledger, Transfer

SECOND_NS = 1_000_000_000


class Driver:
    """Feeds batches to a ledger with strictly advancing batch timestamps."""

    def __init__(self, ledger: Any = None, start_ns: int = 10**18) -> None:
        self.ledger = ledger if ledger is not None else Ledger()
        self.now_ns = start_ns

    def advance(self, seconds: int) -> None:
        self.now_ns += seconds * SECOND_NS

    def _stamp(self, count: int) -> int:
        self.now_ns += count + 1
        return self.now_ns

    def accounts(self, accounts: Sequence[Account]) -> list[Any]:
        return list(self.ledger.create_accounts(accounts, self._stamp(len(accounts))))

    def transfers(self, transfers: Sequence[Transfer]) -> list[Any]:
        return list(self.ledger.create_transfers(transfers, self._stamp(len(transfers))))

    def transfer(self, **fields: Any) -> Any:
        (result,) = self.transfers([xfer(**fields)])
        return result


def acct(id: int, ledger: int = 1, code: int = 1, **fields: Any) -> Account:
    return Account(id=id, ledger=ledger, code=code, **fields)


def xfer(
    id: int,
    debit: int = 1,
    credit: int = 2,
    amount: int = 10,
    ledger: int = 1,
    code: int = 1,
    **fields: Any,
) -> Transfer:
    return Transfer(
        id=id,
        debit_account_id=debit,
        credit_account_id=credit,
        amount=amount,
        ledger=ledger,
        code=code,
        **fields,
    )


def random_history(seed: int, batches: int = 12) -> list[tuple[str, list[Any]]]:
    """A seeded mix of every operation: (``"accounts"`` | ``"transfers"``, events)."""
    import random

    from ledger import AccountFlags, TransferFlags

    rng = random.Random(seed)
    account_flags = [0, 0, AccountFlags.HISTORY, AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS,
                     AccountFlags.CREDITS_MUST_NOT_EXCEED_DEBITS]  # fmt: skip
    history: list[tuple[str, list[Any]]] = [
        (
            "accounts",
            [acct(i, ledger=1 + i % 2, flags=rng.choice(account_flags)) for i in range(1, 13)],
        )
    ]
    pending: list[int] = []
    next_id = 100
    for _ in range(batches):
        batch = []
        for _ in range(rng.randint(1, 12)):
            next_id += 1
            linked = TransferFlags.LINKED if rng.random() < 0.15 else 0
            debit, credit = rng.sample(range(1, 14), 2)  # 13 does not exist
            roll = rng.random()
            if roll < 0.55:
                batch.append(xfer(next_id, debit, credit, rng.randint(0, 50),
                                  ledger=1 + debit % 2, flags=linked))  # fmt: skip
            elif roll < 0.75:
                batch.append(xfer(next_id, debit, credit, rng.randint(0, 50),
                                  ledger=1 + debit % 2, timeout=rng.choice([0, 1, 3]),
                                  flags=linked | TransferFlags.PENDING))  # fmt: skip
                pending.append(next_id)
            elif pending:
                flag = rng.choice([TransferFlags.POST_PENDING_TRANSFER,
                                   TransferFlags.VOID_PENDING_TRANSFER])  # fmt: skip
                batch.append(xfer(next_id, 0, 0, rng.choice([0, 5, U128]), ledger=0, code=0,
                                  pending_id=rng.choice(pending), flags=linked | flag))  # fmt: skip
            else:
                batch.append(xfer(rng.choice([next_id, 101]), debit, credit, 1))
        history.append(("transfers", batch))
    return history


U128 = (1 << 128) - 1


def run(driver: Driver, history: list[tuple[str, list[Any]]]) -> None:
    """Apply each batch of ``history`` to ``driver``, one time step after each."""
    for kind, events in history:
        if kind == "accounts":
            driver.accounts(events)
        else:
            driver.transfers(events)
        driver.advance(1)


def replay(history: list[tuple[str, list[Any]]], ledger: Any = None) -> Driver:
    driver = Driver(ledger)
    run(driver, history)
    return driver
