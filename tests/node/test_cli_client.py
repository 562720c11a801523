"""``aegis client`` end to end: the CLI's ``main`` called in process with argv against
four in-process replicas (real gRPC, mutual TLS) run by a thread of their own."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.cli import main
from node.client import Client, ClientError
from node.config import init_cluster, load_client_config, load_node_config
from node.replica import serve

REPLICAS = 4
START_S_MAX = 30.0


class Cluster:
    """Four replicas serving on an event loop in a background thread."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.config = str(directory / "client-0" / "client.toml")
        self.stop = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=asyncio.run, args=(self._serve(),), daemon=True)

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        configs = [load_node_config(self.directory / f"replica-{i}" / "node.toml")
                   for i in range(REPLICAS)]  # fmt: skip
        await asyncio.gather(*(serve(config, self.stop) for config in configs))

    def __enter__(self) -> Cluster:
        self.thread.start()
        with Client(load_client_config(self.config), timeout_s=1) as client:
            for _ in range(int(START_S_MAX * 10)):
                try:
                    [client.status(replica) for replica in range(REPLICAS)]
                    return self
                except ClientError:
                    threading.Event().wait(0.1)
        raise AssertionError(f"the replicas did not answer within {START_S_MAX} s")

    def __exit__(self, *_: object) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("cli") / "cluster"
    init_cluster(directory, replicas=REPLICAS)
    with Cluster(directory) as running:
        yield running


def _client(
    capsys: pytest.CaptureFixture[str], config: str, *args: str
) -> tuple[int, list[str], str]:
    """Run ``aegis client COMMAND --config CONFIG ARGS``: exit code, stdout lines, stderr."""
    command, *rest = args
    status = main(["client", command, "--config", config, *rest])
    out, err = capsys.readouterr()
    return status, out.splitlines(), err


def _usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """argparse's own usage errors exit 2 (SystemExit); ours return 2.  Either way: stderr."""
    try:
        status = main(list(argv))
    except SystemExit as exit:
        status = exit.code  # type: ignore[assignment]
    out, err = capsys.readouterr()
    assert status == 2 and out == "", (status, out, err)
    return err


def test_create_and_read_back_print_tables(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = cluster.config
    accounts = tmp_path / "accounts.csv"
    accounts.write_text("id,ledger,code,flags\n1,1,10,\n2,1,10,history\n")
    status, out, err = _client(capsys, config, "create-accounts", "--file", str(accounts))
    assert status == 0, err
    assert out[:3] == ["index  id  result", "    0   1  ok", "    1   2  ok"]
    assert out[3].startswith("2 created, 0 failed; FINAL in block h1 (request ")

    status, out, err = _client(capsys, config, "create-transfers", "--id", "100", "--debit", "1",
                               "--credit", "2", "--amount", "2500", "--ledger", "1",
                               "--code", "7")  # fmt: skip
    assert status == 0, err
    assert out[:2] == ["index   id  result", "    0  100  ok"]
    assert out[2].startswith("1 created, 0 failed; FINAL in block h2 ")

    # A batch from JSON where one transfer fails: its result code is printed, exit 1.
    batch = tmp_path / "transfers.json"
    batch.write_text(json.dumps([
        {"id": 101, "debit": 1, "credit": 2, "amount": 40, "ledger": 1, "code": 7},
        {"id": 102, "debit_account_id": 1, "credit": 99, "amount": 1, "ledger": 1, "code": 7},
    ]))  # fmt: skip
    status, out, err = _client(capsys, config, "create-transfers", "--file", str(batch), "--json")
    assert status == 1, err
    answer = json.loads(out[0])
    assert answer["level"] == "FINAL" and answer["height"] == 3
    assert [(r["id"], r["result"]) for r in answer["results"]] == [
        (101, "ok"), (102, "credit_account_not_found")
    ]  # fmt: skip

    # The same transfer again (a retry by hand) creates nothing: "exists".
    status, out, err = _client(capsys, config, "create-transfers", "--id", "100", "--debit", "1",
                               "--credit", "2", "--amount", "2500", "--ledger", "1",
                               "--code", "7", "--wait", "provisional")  # fmt: skip
    assert status == 1 and out[1] == "    0  100  exists", out

    status, out, err = _client(capsys, config, "lookup-accounts", "1", "2")
    assert status == 0, err
    assert out[0].split() == [
        "id", "ledger", "code", "debits_pending", "debits_posted", "credits_pending",
        "credits_posted", "flags", "timestamp",
    ]  # fmt: skip
    assert [line.split()[:8] for line in out[1:]] == [
        ["1", "1", "10", "0", "2540", "0", "0", "0"],
        ["2", "1", "10", "0", "0", "0", "2540", "8"],
    ]
    assert len({len(line) for line in out}) == 1  # aligned: every line as wide

    status, out, err = _client(capsys, config, "lookup-transfers", "100", "101", "102")
    assert status == 1 and err == "not found: 102\n"
    assert out[0].split()[:4] == ["id", "debit_account_id", "credit_account_id", "amount"]
    assert [line.split()[:4] for line in out[1:]] == [["100", "1", "2", "2500"],
                                                      ["101", "1", "2", "40"]]  # fmt: skip

    # Read-your-writes across invocations: the height a create printed, given back.
    status, out, err = _client(capsys, config, "lookup-transfers", "101", "--min-height", "3")
    assert status == 0 and [line.split()[0] for line in out[1:]] == ["101"], err
    status, out, err = _client(capsys, config, "account-balances", "2", "--min-height", "999",
                               "--timeout", "3")  # fmt: skip
    assert status == 3 and out == []
    assert "below the h999 asked" in err, err

    status, out, err = _client(capsys, config, "account-transfers", "2", "--reversed")
    assert status == 0 and [line.split()[0] for line in out[1:]] == ["101", "100"]
    status, out, err = _client(capsys, config, "account-balances", "2", "--json")
    assert status == 0
    assert [b["credits_posted"] for b in json.loads(out[0])] == [2500, 2540]

    status, out, err = _client(capsys, config, "status")
    assert status == 0, err
    assert out[0].split() == ["replica", "mode", "regency", "height", "leader", "lag", "pending"]
    rows = [line.split() for line in out[1:]]
    assert [row[:2] for row in rows] == [[str(r), "bft"] for r in range(REPLICAS)]
    assert all(row[4] == "0" for row in rows)  # the leader of regency 0

    status, out, err = _client(capsys, config, "watch", "--count", "3", "--replica", "2")
    assert status == 0, err
    assert out[0].split() == ["height", "regency", "requests", "events", "log_size",
                              "timestamp", "digest"]  # fmt: skip
    assert [line.split()[:4] for line in out[1:]] == [
        ["1", "0", "1", "2"], ["2", "0", "1", "1"], ["3", "0", "1", "2"]
    ]  # fmt: skip
    status, out, err = _client(capsys, config, "watch", "--count", "1", "--after", "2", "--json")
    assert status == 0 and json.loads(out[0])["height"] == 3


def test_bad_arguments_exit_2_with_a_message(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = cluster.config
    err = _usage_error(capsys, "client", "lookup-accounts", "--config", config, "0")
    assert "argument ID: id 0 is not in 1..2^128-2" in err
    err = _usage_error(capsys, "client", "lookup-transfers", "--config", config, "x1")
    assert "'x1' is not an integer id" in err
    err = _usage_error(capsys, "client", "create-transfers", "--config", config, "--id", "5")
    assert "give --file, or --debit, --credit, --amount, --ledger, --code" in err
    err = _usage_error(capsys, "client", "create-accounts", "--config", config, "--id", "5",
                       "--ledger", "1", "--code", "1", "--flags", "histroy")  # fmt: skip
    assert "unknown flag 'histroy'; known: linked, " in err
    bad = tmp_path / "bad.csv"
    bad.write_text("id,debit,credit,amount,ledger,code\n7,1,2,ten,1,1\n")
    err = _usage_error(capsys, "client", "create-transfers", "--config", config, "--file", str(bad))
    assert f"{bad}: record 1: amount: 'ten' is not an integer" in err
    err = _usage_error(capsys, "client", "status", "--config", str(tmp_path / "missing.toml"))
    assert "aegis client status: --config: " in err
    err = _usage_error(capsys, "client", "lookup-accounts", "--config", config, "1",
                       "--min-height", str(2**63))  # fmt: skip
    assert f"argument --min-height: {2**63} is over the largest height" in err
    err = _usage_error(capsys, "client", "watch", "--config", config, "--replica", "9")
    assert "--replica must be in 0..3" in err
    assert "the following arguments are required: --config" in _usage_error(
        capsys, "client", "status"
    )


def test_an_unreachable_cluster_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_cluster(tmp_path / "down", replicas=REPLICAS)  # never started
    config = str(tmp_path / "down" / "client-0" / "client.toml")
    status, out, err = _client(capsys, config, "status", "--timeout", "2")
    assert status == 3
    assert [line.split()[:2] for line in out[1:]] == [[str(r), "down"] for r in range(REPLICAS)]
    assert "replica 0: Status: " in err
    status, out, err = _client(capsys, config, "lookup-accounts", "1", "--timeout", "2")
    assert status == 3 and out == []
    assert err.startswith("aegis client lookup-accounts: the cluster did not answer (UNAVAILABLE)")


def test_help_explains_each_command(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("create-accounts", "create-transfers", "lookup-accounts", "lookup-transfers",
                    "account-transfers", "account-balances", "status", "watch"):  # fmt: skip
        with pytest.raises(SystemExit) as exit:
            main(["client", command, "--help"])
        assert exit.value.code == 0
        assert "--config" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["client", "--help"])
    assert "Exit codes: 0 ok, 1 a record failed" in " ".join(capsys.readouterr().out.split())
