"""``aegis demo``: the replicated ledger at work, and the scripted day it started as.

``run_cluster`` (the default) starts a real 4-replica cluster on loopback in a
temporary directory (``init_cluster``, then one ``aegis node start`` process per
replica, ``node.cluster``), sends a workload of transfers that each wait for FINAL,
kills the BFT leader with SIGKILL halfway through, shows the regency change from
the replicas' ``Admin/Status``, restarts the killed replica, and ends with the
exactly-once check (``check_exactly_once``): every acknowledged transfer is on
every replica once, unaltered, and every account's balances are exactly the sum of
the acknowledged transfers (so debits equal credits).  Guarantees:

* Every process it starts is stopped by its PID before it returns, also on
  Ctrl-C (SIGINT) or SIGTERM; nothing is looked up by name.
* The exit status is 0 only when the check passed on all 4 replicas; 1 when it
  failed (the cluster directory, logs included, is then kept and named); 130 on
  an interrupt.
* Bounded: every wait has a deadline inside ``ClusterDemo.deadline_s``.

``run_embedded`` is the scripted business day on an embedded ledger: no network,
a scripted clock, so every run prints the same table and the same state hash.  It
shows single-phase transfers, a failing transfer, an atomic linked chain (and one
that rolls back), a pending hold that is posted for less, one that is voided, and
an idempotent retry, then checks the double-entry invariants.
"""

from __future__ import annotations

import contextlib
import datetime
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Final, TextIO

from consensus.messages import Finality
from ledger import (
    BATCH_EVENTS_MAX,
    U128_MAX,
    Account,
    AccountFlags,
    CreateAccountResult,
    CreateTransferResult,
    Ledger,
    Transfer,
    TransferFlags,
)
from node.client import Client, ClientError
from node.cluster import start_replicas, stop_replicas
from node.config import ClientConfig, Tuning, init_cluster, load_client_config

USD = 840  # ISO 4217 numeric code as the ledger id
DAY_START = datetime.datetime(2026, 11, 28, 9, 0, tzinfo=datetime.UTC)
NS_PER_S = 1_000_000_000

# ====================================================================== the cluster demo

REPLICAS: Final = 4
PEOPLE: Final = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")
ACCOUNT_CODE: Final = 20
TRANSFER_ID_BASE: Final = 1_000_000
EXISTS: Final = int(CreateTransferResult.EXISTS)  # a retried transfer that had committed
POLL_INTERVAL_S: Final = 0.2
STATUS_TIMEOUT_S: Final = 1.0
CALL_TIMEOUT_S: Final = 10.0  # one create call at one replica; the client then tries the next
RETRY_PAUSE_S: Final = 0.2
ASK_ATTEMPTS_MAX: Final = 3  # lookups for the check, per replica
STOP_WAIT_S: Final = 5.0
BAR_WIDTH: Final = 30
# Faster failure detection than the defaults (1 s instead of 2 s), and fallback only
# after 5 s: three healthy replicas finish a regency change well before that.
DEMO_TUNING: Final = Tuning(request_timeout_ticks=100, fallback_after_ticks=500)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterDemo:
    """What the demo does; the defaults are what ``aegis demo`` runs."""

    batches: int = 100  # create calls, one at a time, each waiting for FINAL
    batch_transfers: int = 50
    deadline_s: float = 55.0  # the whole run, start-up to verdict

    def __post_init__(self) -> None:
        assert 4 <= self.batches <= 10_000, "the leader is killed halfway: need a few batches"
        assert 1 <= self.batch_transfers <= BATCH_EVENTS_MAX
        assert 5.0 <= self.deadline_s <= 3600.0


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived: stop, clean up, exit 130."""


class _Interrupts:
    """SIGINT and SIGTERM raise ``Interrupted`` in the main thread until ``shield()``:
    then they are only noted, so stopping the replicas cannot itself be interrupted."""

    def __init__(self) -> None:
        self.received = ""
        self.shielded = False

    def handle(self, number: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(number).name
        if not self.shielded:
            raise Interrupted(self.received)

    def shield(self) -> None:
        self.shielded = True

    @contextlib.contextmanager
    def held_back(self) -> Iterator[None]:
        """Hold interrupts back for a moment; one that came meanwhile is raised after."""
        before = self.shielded
        self.shielded = True
        try:
            yield
        finally:
            self.shielded = before
        if self.received and not before:
            raise Interrupted(self.received)


@contextlib.contextmanager
def _interrupts() -> Iterator[_Interrupts]:
    """Install ``_Interrupts`` (main thread only; elsewhere the caller owns signals)."""
    guard = _Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    numbers = (signal.SIGINT, signal.SIGTERM)
    previous = {n: signal.signal(n, guard.handle) for n in numbers}
    try:
        yield guard
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def workload(batches: int, batch_transfers: int) -> list[list[Transfer]]:
    """Deterministic transfers between the demo's accounts, never from one to itself."""
    accounts = len(PEOPLE)
    plan = []
    for batch in range(batches):
        transfers = []
        for offset in range(batch_transfers):
            k = batch * batch_transfers + offset
            debit = k % accounts
            credit = (debit + 1 + (k // accounts) % (accounts - 1)) % accounts
            assert debit != credit
            transfers.append(
                Transfer(id=TRANSFER_ID_BASE + k, debit_account_id=1 + debit,
                         credit_account_id=1 + credit, amount=100 + (k * 7_919) % 99_900,
                         ledger=USD, code=1)
            )  # fmt: skip
        plan.append(transfers)
    return plan


# ---------------------------------------------------------------------- the check


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaAnswer:
    """What one replica returned for the check (or why it returned nothing)."""

    replica: int
    transfers: tuple[Transfer, ...] = ()  # LookupTransfers of every acknowledged id
    accounts: tuple[Account, ...] = ()  # LookupAccounts of every demo account
    error: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaFinding:
    replica: int
    found: int  # acknowledged ids present exactly once
    missing: tuple[int, ...] = ()
    duplicated: tuple[int, ...] = ()
    altered: tuple[int, ...] = ()  # present, but not the transfer that was sent
    unexpected: tuple[int, ...] = ()  # ids nobody asked for
    balance_errors: tuple[str, ...] = ()
    debits_posted: int = 0
    credits_posted: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not (
            self.missing or self.duplicated or self.altered or self.unexpected
            or self.balance_errors or self.error
        )  # fmt: skip


def _same_transfer(sent: Transfer, stored: Transfer) -> bool:
    return (sent.debit_account_id, sent.credit_account_id, sent.amount, sent.ledger,
            sent.code, sent.flags) == (stored.debit_account_id, stored.credit_account_id,
                                       stored.amount, stored.ledger, stored.code,
                                       stored.flags)  # fmt: skip


def _expected_balances(acknowledged: Mapping[int, Transfer]) -> dict[int, tuple[int, int]]:
    """account id -> (debits_posted, credits_posted) the acknowledged transfers add up to."""
    debits: Counter[int] = Counter()
    credits: Counter[int] = Counter()
    for transfer in acknowledged.values():
        debits[transfer.debit_account_id] += transfer.amount
        credits[transfer.credit_account_id] += transfer.amount
    return {a: (debits[a], credits[a]) for a in sorted(set(debits) | set(credits))}


def _balance_errors(
    accounts: Sequence[Account],
    account_ids: Sequence[int],
    expected: Mapping[int, tuple[int, int]],
) -> list[str]:
    errors = []
    by_id = {a.id: a for a in accounts}
    if len(by_id) != len(accounts):
        errors.append(f"{len(accounts) - len(by_id)} account(s) returned twice")
    for account_id in account_ids:
        account = by_id.get(account_id)
        if account is None:
            errors.append(f"account {account_id} missing")
            continue
        want = expected.get(account_id, (0, 0))
        have = (account.debits_posted, account.credits_posted)
        if have != want:
            errors.append(f"account {account_id}: debits/credits {have[0]}/{have[1]}, "
                          f"the acknowledged transfers add up to {want[0]}/{want[1]}")  # fmt: skip
        if account.debits_pending or account.credits_pending:
            errors.append(f"account {account_id}: pending amounts where none were sent")
    debits = sum(a.debits_posted for a in accounts)
    credits = sum(a.credits_posted for a in accounts)
    if debits != credits:
        errors.append(f"double entry broken: debits {debits} != credits {credits}")
    return errors


def check_replica(
    acknowledged: Mapping[int, Transfer], account_ids: Sequence[int], answer: ReplicaAnswer
) -> ReplicaFinding:
    """Exactly once: each acknowledged id once, as sent; balances are their sum."""
    if answer.error:
        return ReplicaFinding(replica=answer.replica, found=0, error=answer.error)
    counts = Counter(t.id for t in answer.transfers)
    altered = set()
    for stored in answer.transfers:
        sent = acknowledged.get(stored.id)
        if sent is not None and not _same_transfer(sent, stored):
            altered.add(stored.id)
    balances = _balance_errors(answer.accounts, account_ids, _expected_balances(acknowledged))
    finding = ReplicaFinding(
        replica=answer.replica,
        found=sum(1 for i in acknowledged if counts[i] == 1),
        missing=tuple(sorted(i for i in acknowledged if counts[i] == 0)),
        duplicated=tuple(sorted(i for i, c in counts.items() if c > 1)),
        altered=tuple(altered),
        unexpected=tuple(sorted(i for i in counts if i not in acknowledged)),
        balance_errors=tuple(balances),
        debits_posted=sum(a.debits_posted for a in answer.accounts),
        credits_posted=sum(a.credits_posted for a in answer.accounts),
    )
    assert finding.found + len(finding.missing) + len(
        [i for i in finding.duplicated if i in acknowledged]
    ) == len(acknowledged)
    return finding


def check_exactly_once(
    acknowledged: Mapping[int, Transfer],
    account_ids: Sequence[int],
    answers: Sequence[ReplicaAnswer],
    replicas: int = REPLICAS,
) -> list[ReplicaFinding]:
    """One finding per replica 0..replicas-1; a replica that gave no answer fails."""
    by_replica = {a.replica: a for a in answers}
    findings = []
    for replica in range(replicas):
        answer = by_replica.get(replica, ReplicaAnswer(replica=replica, error="no answer"))
        findings.append(check_replica(acknowledged, account_ids, answer))
    return findings


def ask_replica(
    client: Client, replica: int, transfer_ids: Sequence[int], account_ids: Sequence[int]
) -> ReplicaAnswer:
    """LookupTransfers (in batches of at most ``BATCH_EVENTS_MAX`` ids) and LookupAccounts
    at one replica."""
    transfers: list[Transfer] = []
    try:
        for start in range(0, len(transfer_ids), BATCH_EVENTS_MAX):
            chunk = transfer_ids[start : start + BATCH_EVENTS_MAX]
            transfers += client.lookup_transfers(chunk, replica=replica)
        accounts = client.lookup_accounts(account_ids, replica=replica)
    except ClientError as error:
        return ReplicaAnswer(replica=replica, error=str(error))
    return ReplicaAnswer(replica=replica, transfers=tuple(transfers), accounts=tuple(accounts))


def findings_table(findings: Sequence[ReplicaFinding]) -> list[str]:
    lines = ["replica  exactly once  missing  duplicated  altered  balances  debits = credits"]
    for f in findings:
        if f.error:
            lines.append(f"{f.replica:>7}  no answer: {f.error}")
            continue
        balances = "add up" if not f.balance_errors else "WRONG"
        equal = "=" if f.debits_posted == f.credits_posted else "!="
        lines.append(
            f"{f.replica:>7}  {f.found:>12}  {len(f.missing):>7}  {len(f.duplicated):>10}  "
            f"{len(f.altered):>7}  {balances:>8}  {_money(f.debits_posted)} {equal} "
            f"{_money(f.credits_posted)}"
        )
    return lines


def _ids(ids: Sequence[int], shown_max: int = 5) -> str:
    shown = ", ".join(str(i) for i in ids[:shown_max])
    return shown + (f" and {len(ids) - shown_max} more" if len(ids) > shown_max else "")


def problems_of(findings: Sequence[ReplicaFinding]) -> list[str]:
    """One line per thing that is wrong, replica by replica."""
    lines = []
    for f in findings:
        where = f"replica {f.replica}"
        if f.error:
            lines.append(f"{where}: no answer ({f.error})")
        kinds = (
            ("missing", f.missing),
            ("present more than once", f.duplicated),
            ("altered", f.altered),
            ("never acknowledged", f.unexpected),
        )
        for name, ids in kinds:
            if ids:
                lines.append(f"{where}: {len(ids)} transfer(s) {name}: {_ids(ids)}")
        lines += [f"{where}: {error}" for error in f.balance_errors]
    return lines


# ---------------------------------------------------------------------- the console


class Console:
    """Event lines on ``out``; one progress bar on ``err``, redrawn in place on a
    terminal, printed every 10 % otherwise.  Thread-safe."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out = out
        self.err = err
        self.started = time.monotonic()
        self.tty = err.isatty()
        self.bar = ""
        self.tenth_shown = -1
        self.lock = threading.Lock()

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def line(self, text: str = "", stamped: bool = False) -> None:
        with self.lock:
            self._clear_bar()
            prefix = f"[{self.elapsed_s():5.1f} s] " if stamped else ""
            self.out.write(prefix + text + "\n")
            self.out.flush()
            if self.tty and self.bar:
                self.err.write(self.bar)
                self.err.flush()

    def progress(self, done: int, total: int, detail: str) -> None:
        assert 0 <= done <= total and total > 0
        filled = done * BAR_WIDTH // total
        bar = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done * 100 // total:>3}%  {detail}"
        with self.lock:
            if self.tty:
                self._clear_bar()
                self.bar = bar
                self.err.write(bar)
            elif done * 10 // total != self.tenth_shown:
                self.tenth_shown = done * 10 // total
                self.err.write(bar + "\n")
            self.err.flush()

    def end_progress(self) -> None:
        with self.lock:
            if self.tty and self.bar:
                self.err.write("\n")
                self.err.flush()
            self.bar = ""

    def _clear_bar(self) -> None:
        if self.tty and self.bar:
            self.err.write("\r\x1b[K")
            self.err.flush()


# ---------------------------------------------------------------------- the workload


class Workload(threading.Thread):
    """Sends the batches one at a time, each waiting for FINAL; a failed call is sent
    again (a new request with the same transfer ids: a transfer that did commit then
    answers ``exists``, so nothing is created twice) until ``deadline``."""

    def __init__(
        self, config: ClientConfig, plan: Sequence[Sequence[Transfer]], deadline: float
    ) -> None:
        super().__init__(name="demo-workload", daemon=True)
        self.config = config
        self.plan = plan
        self.deadline = deadline
        self.stopping = threading.Event()
        self.drill_ready = threading.Event()  # the halfway call may go
        self.lock = threading.Lock()
        self.acknowledged: dict[int, Transfer] = {}
        self.batches_done = 0
        self.height = 0  # of the block that held the latest acknowledged batch
        self.retries = 0
        self.latencies_s: list[float] = []
        self.problems: list[str] = []

    def run(self) -> None:
        with Client(self.config, timeout_s=CALL_TIMEOUT_S) as client:
            for number, batch in enumerate(self.plan):
                if number == self.halfway and not self._wait_for_drill():
                    return
                if not self._send(client, batch):
                    return

    @property
    def halfway(self) -> int:
        return len(self.plan) // 2

    def _wait_for_drill(self) -> bool:
        """Halfway, wait until the drill is ready to kill the leader (so the crash falls
        in the middle however fast the calls go); False when stopped or out of time."""
        while not self.drill_ready.wait(RETRY_PAUSE_S):
            if self.stopping.is_set() or time.monotonic() > self.deadline:
                with self.lock:
                    self.problems.append("the crash drill never began")
                return False
        return not self.stopping.is_set()

    def _send(self, client: Client, batch: Sequence[Transfer]) -> bool:
        started = time.monotonic()
        while not self.stopping.is_set():
            try:
                answer = client.create_transfers(batch, Finality.FINAL)
            except ClientError as error:
                if time.monotonic() > self.deadline:
                    with self.lock:
                        self.problems.append(f"a batch was not FINAL in time: {error}")
                    return False
                with self.lock:
                    self.retries += 1
                self.stopping.wait(RETRY_PAUSE_S)
                continue
            assert answer.level == Finality.FINAL and len(answer.codes) == len(batch)
            with self.lock:
                for transfer, code in zip(batch, answer.codes, strict=True):
                    if code in (CreateTransferResult.OK, EXISTS):
                        self.acknowledged[transfer.id] = transfer
                    else:
                        name = CreateTransferResult(code).name.lower()
                        self.problems.append(f"transfer {transfer.id} was refused: {name}")
                self.batches_done += 1
                self.height = answer.height
                self.latencies_s.append(time.monotonic() - started)
            return True
        return False


# ---------------------------------------------------------------------- the cluster


@dataclass(slots=True)
class ReplicaView:
    """One poll of one replica's ``Admin/Status``; ``up`` False when it did not answer."""

    up: bool
    mode: str = ""
    regency: int = -1
    leader: int = -1
    height: int = -1  # decided by BFT
    final_height: int = -1  # applied to the state lookups read
    state_hash: str = ""

    @classmethod
    def of(cls, status: Mapping[str, object]) -> ReplicaView:
        return cls(
            up=True,
            mode=str(status["mode"]),
            regency=int(str(status["regency"])),
            leader=int(str(status["leader"])),
            height=int(str(status["height"])),
            final_height=int(str(status["final_height"])),
            state_hash=str(status["state_hash"]),
        )


@dataclass(slots=True)
class Cluster:
    """The demo's replica processes (by replica id) and what it last saw of them."""

    directory: Path
    configs: tuple[Path, ...]
    interrupts: _Interrupts
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    views: list[ReplicaView] = field(default_factory=list)

    def start(self, replica: int) -> None:
        assert replica not in self.processes or self.processes[replica].poll() is not None
        # No interrupt between the fork and the bookkeeping: a started process that is
        # not in ``processes`` would never be stopped.  (Not by masking the signals: a
        # child inherits the mask and would then ignore our SIGTERM.)
        with self.interrupts.held_back():
            (self.processes[replica],) = start_replicas([self.configs[replica]])

    def kill(self, replica: int) -> None:
        """SIGKILL by PID: no clean stop, no last WAL flush."""
        process = self.processes[replica]
        process.kill()
        process.wait()

    def stop_all(self) -> None:
        stop_replicas(list(self.processes.values()), STOP_WAIT_S)

    def poll(self, client: Client) -> list[ReplicaView]:
        views = []
        for replica in range(len(self.configs)):
            try:
                views.append(ReplicaView.of(client.status(replica)))
            except ClientError:
                views.append(ReplicaView(up=False))
        self.views = views
        return views

    def table(self) -> list[str]:
        lines = ["replica  pid      mode      regency  leader  height"]
        for replica, view in enumerate(self.views):
            process = self.processes.get(replica)
            pid = "-" if process is None or process.poll() is not None else str(process.pid)
            if not view.up:
                lines.append(f"{replica:>7}  {pid:<7}  down")
                continue
            lines.append(f"{replica:>7}  {pid:<7}  {view.mode:<8}  {view.regency:>7}  "
                         f"{view.leader:>6}  {view.height:>6}")  # fmt: skip
        return lines


def changes(before: Sequence[ReplicaView], after: Sequence[ReplicaView]) -> list[str]:
    """What changed between two polls, grouped: 'replicas 1, 2, 3: regency 0 -> 1 ...'."""
    if len(before) != len(after):
        return []  # the first poll: nothing to compare with
    groups: dict[str, list[int]] = {}
    for replica, (old, new) in enumerate(zip(before, after, strict=True)):
        parts = []
        if old.up != new.up:
            parts.append("answers again" if new.up else "stopped answering")
        if old.up and new.up and old.mode != new.mode:
            parts.append(f"mode {old.mode} -> {new.mode}")
        if old.up and new.up and old.regency != new.regency:
            parts.append(f"regency {old.regency} -> {new.regency} (leader {new.leader})")
        if parts:
            groups.setdefault(", ".join(parts), []).append(replica)
    lines = []
    for what, replicas in groups.items():
        label = "replica" if len(replicas) == 1 else "replicas"
        lines.append(f"{label} {', '.join(map(str, replicas))}: {what}")
    return lines


def _leader(views: Sequence[ReplicaView]) -> int | None:
    """The leader most answering replicas name (None before any answers)."""
    votes = Counter(v.leader for v in views if v.up)
    return votes.most_common(1)[0][0] if votes else None


def _all_answer(cluster: Cluster, client: Client, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if all(view.up for view in cluster.poll(client)):
            return True
        time.sleep(POLL_INTERVAL_S)
    return False


def _agreed(views: Sequence[ReplicaView]) -> bool:
    return (
        all(v.up for v in views)
        and len({(v.height, v.final_height, v.state_hash) for v in views}) == 1
        and views[0].height == views[0].final_height
    )


# ---------------------------------------------------------------------- the run


@dataclass(slots=True)
class _Phase:
    """Where the crash drill stands."""

    killed: int | None = None
    killed_regency: int = 0
    killed_height: int = 0
    killed_at_s: float = 0.0
    changed: bool = False
    restarted: bool = False


def _kill_leader(
    console: Console, cluster: Cluster, client: Client, load: Workload, phase: _Phase
) -> None:
    views = cluster.poll(client)  # the workload waits at halfway: this is the state now
    leader = _leader(views)
    if leader is None or not views[leader].up:
        return  # a slow status answer: try again at the next poll
    phase.killed, phase.killed_regency = leader, views[leader].regency
    phase.killed_height, phase.killed_at_s = max(v.height for v in views), console.elapsed_s()
    pid = cluster.processes[leader].pid
    console.line(f"{load.batches_done} of {len(load.plan)} calls FINAL; the cluster now:", True)
    for line in cluster.table():
        console.line("    " + line)
    load.drill_ready.set()  # the next call goes out as the leader dies
    cluster.kill(leader)
    console.line(f"killed the leader, replica {leader} (PID {pid}), with SIGKILL; the "
                 f"workload goes on", stamped=True)  # fmt: skip


def _regency_changed(console: Console, cluster: Cluster, killed: int, phase: _Phase) -> bool:
    """Every other replica is in BFT mode in a newer regency and has decided more."""
    live = [v for i, v in enumerate(cluster.views) if i != killed]
    if not all(v.up and v.mode == "bft" and v.regency > phase.killed_regency
               and v.height > phase.killed_height for v in live):  # fmt: skip
        return False
    took = console.elapsed_s() - phase.killed_at_s
    console.line(f"regency change done {took:.1f} s after the crash: leader {_leader(live)}, "
                 f"blocks decided again:", stamped=True)  # fmt: skip
    for line in cluster.table():
        console.line("    " + line)
    return True


def _drill(
    console: Console, cluster: Cluster, client: Client, load: Workload, phase: _Phase
) -> None:
    """One step of the crash drill, between polls: kill the leader halfway, watch the
    regency change, restart the killed replica at three quarters."""
    done, total = load.batches_done, len(load.plan)
    killed = phase.killed
    if killed is None:
        if done >= load.halfway:
            _kill_leader(console, cluster, client, load, phase)
    elif not phase.changed:
        phase.changed = _regency_changed(console, cluster, killed, phase)
    elif not phase.restarted and done >= total * 3 // 4:
        _restart(console, cluster, killed, phase)


def _restart(console: Console, cluster: Cluster, replica: int, phase: _Phase) -> None:
    phase.restarted = True
    cluster.start(replica)
    console.line(f"restarted replica {replica} (PID {cluster.processes[replica].pid}): it "
                 f"recovers from its WAL and catches up from its peers", stamped=True)  # fmt: skip


def _watch_workload(
    console: Console, cluster: Cluster, client: Client, load: Workload, deadline: float
) -> _Phase:
    """Poll Status while the workload runs: progress, changes, the crash drill."""
    phase = _Phase()
    total = len(load.plan)
    load.start()
    try:
        # After the last call, until the regency change is seen (a short workload
        # can end before it shows in the replicas' status).
        while (load.is_alive() or (phase.killed is not None and not phase.changed)) and (
            time.monotonic() < deadline
        ):
            before = cluster.views
            views = cluster.poll(client)
            for line in changes(before, views):
                console.line(line, stamped=True)
            leader = _leader(views)
            console.progress(load.batches_done, total, f"{load.batches_done}/{total} calls "
                             f"FINAL, {len(load.acknowledged)} transfers, h{load.height}, "
                             f"leader {'?' if leader is None else leader}")  # fmt: skip
            _drill(console, cluster, client, load, phase)
            load.join(POLL_INTERVAL_S)
    finally:
        load.stopping.set()  # a call in flight still ends; then the thread does
    load.join(CALL_TIMEOUT_S)
    console.progress(load.batches_done, total, f"{load.batches_done}/{total} calls FINAL, "
                     f"{len(load.acknowledged)} transfers, h{load.height}")  # fmt: skip
    console.end_progress()
    if load.is_alive():
        load.problems.append("the workload was still running at the deadline")
    return phase


def _open_accounts(client: Client) -> list[int]:
    ids = list(range(1, len(PEOPLE) + 1))
    accounts = [Account(id=i, ledger=USD, code=ACCOUNT_CODE) for i in ids]
    answer = client.create_accounts(accounts, Finality.FINAL)
    if set(answer.codes) - {CreateAccountResult.OK}:
        raise ClientError(f"opening the accounts: codes {answer.codes}")
    return ids


def _ask(
    reader: Client, replica: int, ids: Sequence[int], account_ids: Sequence[int], deadline: float
) -> ReplicaAnswer:
    """``ask_replica``, asked again after a failure (a replica that just caught up may be
    busy) while time is left, at most ``ASK_ATTEMPTS_MAX`` times."""
    answer = ask_replica(reader, replica, ids, account_ids)
    for _ in range(ASK_ATTEMPTS_MAX - 1):
        if not answer.error or time.monotonic() > deadline:
            break
        time.sleep(RETRY_PAUSE_S)
        answer = ask_replica(reader, replica, ids, account_ids)
    return answer


def _final_check(
    console: Console, cluster: Cluster, client: Client, load: Workload, deadline: float
) -> bool:
    """Wait for the replicas to agree, then check every replica; print the verdict.
    ``client`` polls Status; the lookups get a client with the longer call timeout."""
    while time.monotonic() < deadline and not _agreed(cluster.poll(client)):
        time.sleep(POLL_INTERVAL_S)
    views = cluster.views
    if _agreed(views):
        console.line(f"all {len(views)} replicas at final height {views[0].height}, one state "
                     f"hash {views[0].state_hash[:16]}", stamped=True)  # fmt: skip
    else:
        console.line("the replicas did not reach one height and state hash in time:", True)
        for line in cluster.table():
            console.line("    " + line)
    account_ids = list(range(1, len(PEOPLE) + 1))
    ids = sorted(load.acknowledged)
    with Client(client.config, timeout_s=CALL_TIMEOUT_S) as reader:
        answers = [_ask(reader, r, ids, account_ids, deadline) for r in range(len(views))]
    findings = check_exactly_once(load.acknowledged, account_ids, answers, len(views))
    console.line()
    console.line(f"exactly-once check: LookupTransfers of the {len(ids)} acknowledged "
                 f"transfers and LookupAccounts of the {len(account_ids)} accounts, at each "
                 f"replica")  # fmt: skip
    for line in findings_table(findings):
        console.line("  " + line)
    _balances(console, answers[0])
    problems = [*load.problems, *problems_of(findings)]
    if not _agreed(views):
        problems.append("the replicas disagree on the final height or state hash")
    if len(ids) != sum(len(batch) for batch in load.plan):
        problems.append(f"only {len(ids)} of {sum(map(len, load.plan))} transfers acknowledged")
    console.line()
    if problems:
        console.line(f"VERDICT: FAIL ({len(problems)} problem(s))")
        for line in problems:
            console.line("  " + line)
        return False
    console.line(f"VERDICT: PASS: all {len(ids)} acknowledged transfers are on all "
                 f"{len(findings)} replicas exactly once, and every balance is their sum "
                 f"(debits = credits = {_money(findings[0].debits_posted)})")  # fmt: skip
    return True


def _balances(console: Console, answer: ReplicaAnswer) -> None:
    if answer.error or not answer.accounts:
        return
    console.line()
    console.line(f"closing balances at replica {answer.replica}")
    rows = [
        (PEOPLE[a.id - 1], _money(a.debits_posted), _money(a.credits_posted),
         _money(a.credits_posted - a.debits_posted))
        for a in answer.accounts
    ]  # fmt: skip
    lines: list[str] = []
    _table_lines(lines, ("account", "debits", "credits", "net (cr-dr)"), rows)
    for line in lines:
        console.line("  " + line)


def _run_cluster(console: Console, cluster: Cluster, options: ClusterDemo, deadline: float) -> bool:
    client_config = load_client_config(cluster.directory / "client-0" / "client.toml")
    with Client(client_config, timeout_s=STATUS_TIMEOUT_S) as status_client:
        for replica in range(len(cluster.configs)):
            cluster.start(replica)
        pids = ", ".join(str(p.pid) for p in cluster.processes.values())
        console.line(f"started {len(cluster.configs)} replica processes, PIDs {pids}", True)
        if not _all_answer(cluster, status_client, deadline):
            console.line("VERDICT: FAIL: the replicas did not all answer in time; see "
                         f"{cluster.directory}/replica-*/node.log")  # fmt: skip
            return False
        modes = sorted({f"{v.mode}, regency {v.regency}, leader {v.leader}" for v in cluster.views})
        console.line(f"all {len(cluster.views)} answer: {'; '.join(modes)}", stamped=True)
        try:
            with Client(client_config, timeout_s=CALL_TIMEOUT_S) as client:
                account_ids = _open_accounts(client)
        except ClientError as error:
            console.line(f"VERDICT: FAIL: cannot open the accounts: {error}")
            return False
        console.line(f"opened {len(account_ids)} accounts ({', '.join(PEOPLE)}), FINAL")
        plan = workload(options.batches, options.batch_transfers)
        console.line(f"workload: {len(plan)} create calls of {options.batch_transfers} "
                     f"transfers, one at a time, each waiting for FINAL (a certificate of 3 "
                     f"signed ACCEPTs); the leader is killed halfway")  # fmt: skip
        load = Workload(client_config, plan, deadline)
        phase = _watch_workload(console, cluster, status_client, load, deadline)
        slowest = max(load.latencies_s, default=0.0)
        console.line(f"workload done: {load.batches_done}/{len(plan)} calls FINAL, "
                     f"{len(load.acknowledged)} transfers acknowledged, {load.retries} "
                     f"call(s) retried, slowest call {slowest:.1f} s", stamped=True)  # fmt: skip
        if phase.killed is not None and not phase.restarted:
            _restart(console, cluster, phase.killed, phase)
        if phase.killed is not None and not phase.changed:
            load.problems.append("no regency change was seen after the leader was killed")
        return _final_check(console, cluster, status_client, load, deadline)


def run_cluster(out: TextIO, err: TextIO, options: ClusterDemo | None = None) -> int:
    """The cluster demo; the process exit status (0 pass, 1 fail, 130 interrupted)."""
    options = options or ClusterDemo()
    console = Console(out, err)
    deadline = time.monotonic() + options.deadline_s
    directory = Path(tempfile.mkdtemp(prefix="aegis-demo-"))
    passed = False
    with _interrupts() as guard:
        try:
            layout = init_cluster(directory / "cluster", replicas=REPLICAS, tuning=DEMO_TUNING)
            cluster = Cluster(layout.directory, layout.node_configs, guard)
            console.line(f"Aegis Ledger demo: {REPLICAS} replica processes on 127.0.0.1 "
                         f"(BFT, f = 1, quorum 3), mutual TLS, a write-ahead log each, in "
                         f"{layout.directory}")  # fmt: skip
            try:
                passed = _run_cluster(console, cluster, options, deadline)
            finally:
                guard.shield()
                cluster.stop_all()
            codes = ", ".join(str(p.returncode) for p in cluster.processes.values())
            console.line(f"stopped the replica processes (exit codes {codes}); "
                         f"{console.elapsed_s():.1f} s in all")  # fmt: skip
        except Interrupted:
            pass
        except BrokenPipeError:  # ``aegis demo | head``: the replicas are stopped already
            shutil.rmtree(directory, ignore_errors=True)
            raise
    if guard.received:
        console.end_progress()
        console.line(f"interrupted ({guard.received}): stopped every replica process this "
                     f"demo started")  # fmt: skip
        shutil.rmtree(directory, ignore_errors=True)
        return 130
    if passed:
        shutil.rmtree(directory, ignore_errors=True)
        return 0
    console.line(f"the cluster's directory is kept for a look: {directory} (replica-*/node.log)")
    return 1


# ====================================================================== the embedded day

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


def _table_lines(lines: list[str], header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    lines.append(line.format(*header).rstrip())
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(line.format(*row).rstrip() for row in rows)


def _table(out: TextIO, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    lines: list[str] = []
    _table_lines(lines, header, rows)
    out.write("".join(line + "\n" for line in lines))


def run_embedded(out: TextIO) -> int:
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
