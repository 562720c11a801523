"""``aegis demo``: the cluster run end to end, the exactly-once check failing when a
replica's answer is wrong, and the embedded scripted day (``--embedded``)."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from ledger import Account, Transfer
from node import demo
from node.client import Client

ROOT = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT_S = 120  # it takes ~15 s; the bound only keeps a hung run from hanging the suite


def _aegis(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("aegis", path=str(Path(sys.executable).parent)) or "aegis"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _pids(output: str) -> list[int]:
    started = re.search(r"started 4 replica processes, PIDs ([\d, ]+)", output)
    assert started, output
    restarted = re.findall(r"restarted replica \d \(PID (\d+)\)", output)
    return [int(p) for p in started.group(1).split(", ")] + [int(p) for p in restarted]


# ---------------------------------------------------------------------- end to end


def test_aegis_demo_runs_a_cluster_through_a_leader_crash_and_passes() -> None:
    done = _aegis("demo", timeout_s=DEMO_TIMEOUT_S)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    killed = re.search(r"killed the leader, replica (\d) \(PID (\d+)\), with SIGKILL", out)
    assert killed, out
    leader = int(killed.group(1))
    after_kill = out[killed.end() :]
    changed = re.search(r"replicas? [\d, ]+: regency (\d+) -> (\d+) \(leader (\d)\)", after_kill)
    assert changed and int(changed.group(2)) > int(changed.group(1)), out
    assert int(changed.group(3)) != leader
    assert re.search(rf"regency change done [\d.]+ s after the crash: leader (?!{leader}\b)\d", out)
    assert f"restarted replica {leader} (PID" in out
    for replica in range(4):
        row = rf"^ +{replica} +5000 +0 +0 +0 +add up +(\$[\d,.]+) = \1$"
        assert re.search(row, out, re.MULTILINE), out
    assert re.search(r"^VERDICT: PASS: all 5000 acknowledged transfers are on all 4 replicas "
                     r"exactly once", out, re.MULTILINE)  # fmt: skip
    assert "stopped the replica processes (exit codes 0, 0, 0, 0)" in out
    assert all(_gone(pid) for pid in _pids(out))
    directory = re.search(r"a write-ahead log each, in (\S+)/cluster", out)
    assert directory and not Path(directory.group(1)).exists()  # removed after a pass
    assert "100% " in done.stderr and "100/100 calls FINAL" in done.stderr  # the progress bar


def test_the_demo_fails_and_keeps_its_logs_when_a_replica_answers_wrong(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The real cluster run, with replica 2's lookup answer losing one transfer and
    repeating another: the verdict must be FAIL and the exit status 1."""
    honest = demo.ask_replica

    def lying(
        client: Client, replica: int, transfer_ids: Sequence[int], account_ids: Sequence[int]
    ) -> demo.ReplicaAnswer:
        answer = honest(client, replica, transfer_ids, account_ids)
        if replica != 2:
            return answer
        transfers = answer.transfers
        return replace(answer, transfers=(*transfers[1:], transfers[-1]))

    monkeypatch.setattr(demo, "ask_replica", lying)
    out, err = io.StringIO(), io.StringIO()
    status = demo.run_cluster(out, err, demo.ClusterDemo(batches=8, batch_transfers=20))
    text = out.getvalue()
    assert status == 1, text
    first = demo.TRANSFER_ID_BASE
    last = first + 8 * 20 - 1
    assert "VERDICT: FAIL (" in text
    assert f"replica 2: 1 transfer(s) missing: {first}" in text
    assert f"replica 2: 1 transfer(s) present more than once: {last}" in text
    for replica in (0, 1, 3):
        assert re.search(rf"^ +{replica} +160 +0 +0 +0 +add up ", text, re.MULTILINE), text
    assert all(_gone(pid) for pid in _pids(text))
    kept = re.search(r"directory is kept for a look: (\S+) ", text)
    assert kept and (Path(kept.group(1)) / "cluster" / "replica-2" / "node.log").exists()
    shutil.rmtree(kept.group(1))


# ---------------------------------------------------------------------- the check alone

ACCOUNTS = [1, 2, 3]
SENT = {
    10: Transfer(id=10, debit_account_id=1, credit_account_id=2, amount=500, ledger=840, code=1),
    11: Transfer(id=11, debit_account_id=2, credit_account_id=3, amount=200, ledger=840, code=1),
    12: Transfer(id=12, debit_account_id=3, credit_account_id=1, amount=50, ledger=840, code=1),
}


def _accounts(debits: dict[int, int], credits: dict[int, int]) -> tuple[Account, ...]:
    return tuple(
        Account(id=i, ledger=840, code=20, debits_posted=debits.get(i, 0),
                credits_posted=credits.get(i, 0))
        for i in ACCOUNTS
    )  # fmt: skip


GOOD_ACCOUNTS = _accounts({1: 500, 2: 200, 3: 50}, {2: 500, 3: 200, 1: 50})


def _stored(transfer: Transfer) -> Transfer:
    return replace(transfer, timestamp=1_000 + transfer.id)  # as a replica returns it


def _answer(replica: int, transfers: Sequence[Transfer], accounts: tuple[Account, ...]
            = GOOD_ACCOUNTS) -> demo.ReplicaAnswer:  # fmt: skip
    return demo.ReplicaAnswer(
        replica=replica, transfers=tuple(_stored(t) for t in transfers), accounts=accounts
    )


def _good(replica: int) -> demo.ReplicaAnswer:
    return _answer(replica, list(SENT.values()))


def _findings(wrong: demo.ReplicaAnswer) -> list[demo.ReplicaFinding]:
    answers = [_good(r) for r in range(4) if r != wrong.replica] + [wrong]
    return demo.check_exactly_once(SENT, ACCOUNTS, answers)


def test_the_check_passes_on_right_answers() -> None:
    findings = demo.check_exactly_once(SENT, ACCOUNTS, [_good(r) for r in range(4)])
    assert all(f.ok and f.found == 3 for f in findings)
    assert demo.problems_of(findings) == []
    assert findings[0].debits_posted == findings[0].credits_posted == 750


def test_the_check_fails_on_a_missing_transfer() -> None:
    findings = _findings(_answer(1, [SENT[10], SENT[12]]))
    assert [f.ok for f in findings] == [True, False, True, True]
    assert findings[1].missing == (11,) and findings[1].found == 2
    assert "replica 1: 1 transfer(s) missing: 11" in demo.problems_of(findings)


def test_the_check_fails_on_a_duplicated_transfer() -> None:
    findings = _findings(_answer(3, [SENT[10], SENT[11], SENT[11], SENT[12]]))
    assert not findings[3].ok and findings[3].duplicated == (11,)
    assert "replica 3: 1 transfer(s) present more than once: 11" in demo.problems_of(findings)


def test_the_check_fails_on_an_altered_or_unexpected_transfer() -> None:
    altered = replace(SENT[12], amount=51)
    stranger = replace(SENT[12], id=99)
    findings = _findings(_answer(0, [SENT[10], SENT[11], altered, stranger]))
    assert findings[0].altered == (12,) and findings[0].unexpected == (99,)
    assert not findings[0].ok


def test_the_check_fails_when_balances_do_not_add_up() -> None:
    # Every transfer is there once, but account 2 was debited twice for transfer 11:
    # debits no longer equal credits, and account 2 is not the sum of what was sent.
    skewed = _accounts({1: 500, 2: 400, 3: 50}, {2: 500, 3: 200, 1: 50})
    findings = _findings(_answer(2, list(SENT.values()), skewed))
    problems = demo.problems_of(findings)
    assert not findings[2].ok and findings[2].found == 3
    assert "replica 2: account 2: debits/credits 400/500, the acknowledged transfers add up " \
           "to 200/500" in problems  # fmt: skip
    assert "replica 2: double entry broken: debits 950 != credits 750" in problems


def test_the_check_fails_without_an_answer_from_every_replica() -> None:
    findings = demo.check_exactly_once(SENT, ACCOUNTS, [_good(r) for r in range(3)])
    assert [f.ok for f in findings] == [True, True, True, False]
    assert demo.problems_of(findings) == ["replica 3: no answer (no answer)"]


def test_findings_table_shows_each_replica() -> None:
    findings = _findings(_answer(1, [SENT[10], SENT[12]]))
    table = demo.findings_table(findings)
    assert table[0].split() == ["replica", "exactly", "once", "missing", "duplicated",
                                "altered", "balances", "debits", "=", "credits"]  # fmt: skip
    assert table[2].split()[:6] == ["1", "2", "1", "0", "0", "add"]


# ---------------------------------------------------------------------- the embedded day


def test_demo_embedded_runs_the_scripted_day() -> None:
    done = _aegis("demo", "--embedded")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    results = dict(re.findall(r"^\d\d:\d\d  (\d+) .*?  (\w+)$", out, re.MULTILINE))
    assert results["1004"] == "exceeds_credits"  # the failing payment
    assert results["1007"] == "linked_event_failed"  # the chain that rolled back
    assert results["1008"] == "exceeds_credits"
    assert results["1011"] == "ok" and results["1012"] == "ok"  # posted, voided
    assert results["1013"] == "pending_transfer_already_posted"
    assert "1003  client retries transfer 1003" in out and re.search(r"1003 .* exists$", out, re.M)
    assert "double entry holds: debits $946.50, credits $946.50, pending $0.00" in out
    assert re.search(r"^bob +\$45\.00 +\$200\.00 +\$0\.00 +\$155\.00$", out, re.MULTILINE)


def test_demo_embedded_is_deterministic() -> None:
    assert _aegis("demo", "--embedded").stdout == _aegis("demo", "--embedded").stdout


def test_demo_help_names_both_modes() -> None:
    done = _aegis("demo", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "kills the BFT leader with SIGKILL" in text and "--embedded" in text
    assert "exactly-once check" in text


def test_demo_refuses_bad_sizes() -> None:
    done = _aegis("demo", "--calls", "2")
    assert done.returncode == 2 and "--calls must be in 4..10000" in done.stderr
