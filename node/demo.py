"""``aegis demo``: one scripted business day on an embedded ledger.

Deterministic on purpose: the day runs on a scripted clock, so every run
prints the same table and the same state hash.  It shows single-phase
transfers, a failing transfer, an atomic linked chain (and one that rolls
back), a pending hold that is posted for less, one that is voided, and an
idempotent retry, then checks the double-entry invariants.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

from ledger import (
    U128_MAX,
    Account,
    AccountFlags,
    CreateAccountResult,
    CreateTransferResult,
    Ledger,
    Transfer,
    TransferFlags,
)

USD = 840  # ISO 4217 numeric code as the ledger id
DAY_START = datetime.datetime(2026, 11, 28, 9, 0, tzinfo=datetime.UTC)
NS_PER_S = 1_000_000_000

NAMES = {1: "bank cash", 2: "alice", 3: "bob", 4: "carol's shop", 5: "fees"}
CASH, ALICE, BOB, CAROL, FEES = 1, 2, 3, 4, 5


@dataclass(frozen=True, slots=True)
class Step:
    at: str  # HH:MM on the scripted day
    what: str
    transfers: tuple[Transfer, ...]


def _t(id: int, debit: int, credit: int, cents: int, **fields: int) -> Transfer:
    return Transfer(id=id, debit_account_id=debit, credit_account_id=credit, amount=cents,
                    ledger=USD, code=1, **fields)  # fmt: skip


def _second_phase(id: int, pending_id: int, flags: int, cents: int) -> Transfer:
    return Transfer(id=id, debit_account_id=0, credit_account_id=0, amount=cents,
                    pending_id=pending_id, ledger=0, code=0, flags=flags)  # fmt: skip


LINKED = TransferFlags.LINKED
SCRIPT = (
    Step("09:00", "fund alice from bank cash", (_t(1001, CASH, ALICE, 50_000),)),
    Step("09:01", "fund bob from bank cash", (_t(1002, CASH, BOB, 20_000),)),
    Step("10:15", "alice pays carol", (_t(1003, ALICE, CAROL, 12_000),)),
    Step("11:30", "bob overdraws: rejected", (_t(1004, BOB, CAROL, 25_000),)),
    Step(
        "12:00",
        "alice pays carol + fee (linked)",
        (_t(1005, ALICE, CAROL, 8_000, flags=LINKED), _t(1006, ALICE, FEES, 150)),
    ),
    Step(
        "12:05",
        "bob pays + fee, fee overdraws: chain rolls back",
        (_t(1007, BOB, CAROL, 19_950, flags=LINKED), _t(1008, BOB, FEES, 150)),
    ),
    Step(
        "13:00",
        "card hold bob -> carol (pending, 24h)",
        (_t(1009, BOB, CAROL, 6_000, flags=TransferFlags.PENDING, timeout=86_400),),
    ),
    Step(
        "13:10",
        "hotel hold alice -> carol (pending)",
        (_t(1010, ALICE, CAROL, 10_000, flags=TransferFlags.PENDING),),
    ),
    Step(
        "17:45",
        "capture the card hold for less",
        (_second_phase(1011, 1009, TransferFlags.POST_PENDING_TRANSFER, 4_500),),
    ),
    Step(
        "18:00",
        "release the hotel hold (void)",
        (_second_phase(1012, 1010, TransferFlags.VOID_PENDING_TRANSFER, 0),),
    ),
    Step("18:30", "client retries transfer 1003", (_t(1003, ALICE, CAROL, 12_000),)),
    Step(
        "18:31",
        "capture the card hold again",
        (_second_phase(1013, 1009, TransferFlags.POST_PENDING_TRANSFER, U128_MAX),),
    ),
)


def _timestamp(at: str, count: int) -> int:
    hours, minutes = (int(part) for part in at.split(":"))
    moment = DAY_START.replace(hour=hours, minute=minutes)
    return int(moment.timestamp()) * NS_PER_S + count


def _money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}${abs(cents) // 100:,}.{abs(cents) % 100:02d}"


def _table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out.write(line.format(*header).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for row in rows:
        out.write(line.format(*row).rstrip() + "\n")


def run(out: TextIO) -> int:
    """Run the day; return a process exit code (0 when every check holds)."""
    ledger = Ledger()
    accounts = [
        Account(id=CASH, ledger=USD, code=10),
        Account(id=ALICE, ledger=USD, code=20, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
        Account(id=BOB, ledger=USD, code=20, flags=AccountFlags.DEBITS_MUST_NOT_EXCEED_CREDITS),
        Account(id=CAROL, ledger=USD, code=30, flags=AccountFlags.HISTORY),
        Account(id=FEES, ledger=USD, code=40),
    ]
    opened = ledger.create_accounts(accounts, _timestamp("08:00", len(accounts)))
    assert all(r == CreateAccountResult.OK for r in opened), opened
    out.write(f"Aegis Ledger demo: one day on ledger {USD} (USD), embedded, no network\n\n")

    rows = []
    for step in SCRIPT:
        results = ledger.create_transfers(step.transfers, _timestamp(step.at, len(step.transfers)))
        for transfer, result in zip(step.transfers, results, strict=True):
            stored = ledger.lookup_transfers([transfer.id])
            amount = stored[0].amount if stored and result == CreateTransferResult.OK else None
            rows.append((
                step.at, str(transfer.id), step.what,
                _money(amount if amount is not None else transfer.amount)
                if transfer.amount != U128_MAX else "full",
                result.name.lower(),
            ))  # fmt: skip
    _table(out, ("time", "id", "what", "amount", "result"), rows)

    out.write("\nBalances at close of day\n\n")
    balance_rows = []
    for account in ledger.lookup_accounts(list(NAMES)):
        net = account.credits_posted - account.debits_posted
        balance_rows.append((
            NAMES[account.id], _money(account.debits_posted), _money(account.credits_posted),
            _money(account.debits_pending + account.credits_pending), _money(net),
        ))  # fmt: skip
    _table(out, ("account", "debits", "credits", "pending", "net (cr-dr)"), balance_rows)

    ledger.check_invariants()  # raises if double entry is broken
    closing = ledger.lookup_accounts(list(NAMES))
    debits = sum(a.debits_posted for a in closing)
    credits = sum(a.credits_posted for a in closing)
    pending = sum(a.debits_pending for a in closing)
    verdict = "holds" if debits == credits else "BROKEN"
    out.write(
        f"\ndouble entry {verdict}: debits {_money(debits)}, credits {_money(credits)}, "
        f"pending {_money(pending)}\n"
        f"transfers stored: {ledger.transfer_count}, state hash {ledger.state_hash().hex()}\n"
    )
    return 0 if debits == credits else 1
