"""The ``aegis`` command line.

Sub-commands are added as the packages behind them are built; each one's
``--help`` says what it does and what it needs.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import enum
import functools
import io
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from consensus.messages import DecidedBlock
    from node.client import Client


def _demo(args: argparse.Namespace) -> int:
    from node import demo

    if args.embedded:
        return demo.run_embedded(sys.stdout)
    if not 4 <= args.calls <= 10_000 or not 1 <= args.batch <= 8189:
        print("aegis demo: --calls must be in 4..10000 and --batch in 1..8189", file=sys.stderr)
        return 2
    options = demo.ClusterDemo(batches=args.calls, batch_transfers=args.batch)
    return demo.run_cluster(sys.stdout, sys.stderr, options)


def _cluster_init(args: argparse.Namespace) -> int:
    from node.config import ConfigError, init_cluster

    try:
        layout = init_cluster(
            args.dir, replicas=args.replicas, clients=args.clients, name=args.name, host=args.host
        )
    except ConfigError as error:
        print(f"aegis cluster init: {error}", file=sys.stderr)
        return 2
    replicas, clients = len(layout.node_configs), len(layout.client_configs)
    print(f"cluster {args.name!r} in {layout.directory}: {replicas} replicas, {clients} client(s)")
    for path in (*layout.node_configs, *layout.client_configs):
        print(f"  {path}")
    print(f"start it with: aegis cluster up --dir {layout.directory}")
    return 0


def _cluster_up(args: argparse.Namespace) -> int:
    from node import cluster
    from node.config import ConfigError

    try:
        return cluster.up(Path(args.dir), args.interval, sys.stdout)
    except (ConfigError, FileNotFoundError) as error:
        print(f"aegis cluster up: {error}", file=sys.stderr)
        return 2


def _node_start(args: argparse.Namespace) -> int:
    from node import replica
    from node.config import ConfigError, load_node_config

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        config = load_node_config(args.config)
    except ConfigError as error:
        print(f"aegis node start: {error}", file=sys.stderr)
        return 2
    return replica.run(config)


def _add_cluster_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cluster = commands.add_parser(
        "cluster",
        help="create a local cluster's keys and configs, run its replicas",
        description="Manage a cluster of replica processes on this machine.",
    )
    sub = cluster.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)
    init = sub.add_parser(
        "init",
        help="write a CA, certificates, signing keys and TOML configs for a loopback cluster",
        description="Writes DIR/ca.crt, DIR/replica-<i>/node.toml (+ TLS certificate, key, "
        "Ed25519 signing key, data/) and DIR/client-<c>/client.toml. Keys are 0600. "
        "Ports are free ones picked now. Client 0 is an operator (may set limits).",
    )
    init.add_argument("--dir", required=True, help="a new or empty directory")
    init.add_argument("--replicas", type=int, default=4, help="3f + 1 replicas (default 4)")
    init.add_argument("--clients", type=int, default=1, help="client identities (default 1)")
    init.add_argument("--name", default="local", help="the cluster's name (default local)")
    init.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    init.set_defaults(handler=_cluster_init)
    up = sub.add_parser(
        "up",
        help="start every replica of DIR as a process, show status, stop them on Ctrl-C",
        description="Starts 'aegis node start' for each DIR/replica-*/node.toml (logs in "
        "node.log beside it), prints mode, regency, height and lag of each replica every "
        "INTERVAL seconds, and on Ctrl-C (SIGINT) or SIGTERM stops the replicas by PID.",
    )
    up.add_argument("--dir", required=True, help="a directory made by 'aegis cluster init'")
    up.add_argument("--interval", type=float, default=2.0, help="seconds between status tables")
    up.set_defaults(handler=_cluster_up)

    node = commands.add_parser(
        "node",
        help="run one replica of a cluster",
        description="Run one replica process of the replicated ledger.",
    )
    node_sub = node.add_subparsers(dest="node_command", metavar="COMMAND", required=True)
    start = node_sub.add_parser(
        "start",
        help="run the replica a node.toml describes until SIGINT/SIGTERM",
        description="Recovers from the write-ahead log in the config's data_dir, then serves "
        "peers and clients over mutual TLS gRPC on its listen address until SIGINT/SIGTERM.",
    )
    start.add_argument("--config", required=True, help="the replica's node.toml")
    start.add_argument("--verbose", action="store_true", help="log every protocol trace line")
    start.set_defaults(handler=_node_start)


# ------------------------------------------------------------------ aegis client

CLIENT_TIMEOUT_S_DEFAULT = 10.0
RECORDS_FILE_BYTES_MAX = 16 * 1024 * 1024  # a file larger than this is refused unread
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
# Field names a records file may use, with short aliases for the transfer columns.
_TRANSFER_ALIASES = {"debit": "debit_account_id", "credit": "credit_account_id"}
_ACCOUNT_FIELDS = ("id", "ledger", "code", "flags", "user_data_128", "user_data_64", "user_data_32")
_TRANSFER_FIELDS = (
    "id",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "ledger",
    "code",
    "flags",
    "pending_id",
    "user_data_128",
    "user_data_64",
    "user_data_32",
    "timeout",
)


class _Usage(Exception):
    """Bad input from the user: exit 2 with this message."""


def _record_id(text: str) -> int:
    """An account or transfer id: an integer in 1 .. 2^128 - 2 (argparse type)."""
    from ledger import U128_MAX

    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer id") from None
    if not 0 < value < U128_MAX:
        raise argparse.ArgumentTypeError(f"id {text} is not in 1..2^128-2")
    return value


def _natural(text: str) -> int:
    """A non-negative integer (argparse type)."""
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _height(text: str) -> int:
    """A block height (argparse type): 0 .. the largest the replicas accept."""
    from node.service import HEIGHT_MAX

    value = _natural(text)
    if value > HEIGHT_MAX:
        raise argparse.ArgumentTypeError(f"{value} is over the largest height {HEIGHT_MAX}")
    return value


def _flags(names: str, kind: type[enum.IntFlag]) -> int:
    """``history,linked`` or an integer, as a flags value of ``kind``."""
    if not names.strip():
        return 0
    if names.strip()[0].isdigit():
        try:
            return _natural(names)
        except argparse.ArgumentTypeError as error:
            raise _Usage(f"flags: {error}") from None
    value = 0
    for name in names.split(","):
        member = kind.__members__.get(name.strip().upper().replace("-", "_"))
        if member is None:
            known = ", ".join(n.lower() for n in kind.__members__ if n != "NONE")
            raise _Usage(f"unknown flag {name!r}; known: {known}")
        value |= int(member)
    return value


def _format_cell(value: object) -> str:
    if isinstance(value, enum.Enum):
        return value.name.lower()
    return str(value)


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], widths_min: Sequence[int] = ()
) -> list[str]:
    """Rows under headers, columns padded to their widest cell (at least ``widths_min``,
    so rows printed one at a time still line up); integer columns right-aligned."""
    cells = [[_format_cell(v) for v in row] for row in rows]
    widths = [
        max([len(h), *(len(row[i]) for row in cells), *widths_min[i : i + 1]])
        for i, h in enumerate(headers)
    ]
    numeric = [
        bool(rows) and all(isinstance(row[i], int) for row in rows) for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        padded = (
            v.rjust(w) if right else v.ljust(w)
            for v, w, right in zip(values, widths, numeric, strict=True)
        )
        return "  ".join(padded).rstrip()

    return [line(headers), *(line(row) for row in cells)]


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    print("\n".join(_table(headers, rows)), flush=True)


def _print_json(value: object) -> None:
    print(json.dumps(value, sort_keys=True, default=_format_cell), flush=True)


def _read_records(
    path: str, fields: Sequence[str], flag_kind: type[enum.IntFlag]
) -> list[dict[str, int]]:
    """The rows of a CSV (with a header line) or JSON (a list of objects) file."""
    from ledger import BATCH_EVENTS_MAX

    file = Path(path)
    try:
        if file.stat().st_size > RECORDS_FILE_BYTES_MAX:
            raise _Usage(f"{path}: larger than {RECORDS_FILE_BYTES_MAX} bytes")
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeError) as error:
        raise _Usage(f"{path}: {error}") from None
    if file.suffix.lower() == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as error:
            raise _Usage(f"{path}: not JSON: {error}") from None
        if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
            raise _Usage(f"{path}: must hold a JSON list of objects")
        rows: list[dict[str, object]] = raw
    else:
        rows = [dict(row) for row in csv.DictReader(io.StringIO(text))]
    if not 1 <= len(rows) <= BATCH_EVENTS_MAX:
        raise _Usage(f"{path}: holds {len(rows)} records; one call takes 1..{BATCH_EVENTS_MAX}")
    return [
        _record_fields(path, number, row, fields, flag_kind) for number, row in enumerate(rows, 1)
    ]


def _record_fields(
    path: str,
    number: int,
    row: dict[str, object],
    fields: Sequence[str],
    flag_kind: type[enum.IntFlag],
) -> dict[str, int]:
    where = f"{path}: record {number}"
    values: dict[str, int] = {}
    for key, value in row.items():
        name = _TRANSFER_ALIASES.get(str(key).strip(), str(key).strip())
        if name not in fields:
            raise _Usage(f"{where}: unknown field {key!r}; fields: {', '.join(fields)}")
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise _Usage(f"{where}: {name} must be an integer, not {value!r}")
        try:
            if isinstance(value, int):
                values[name] = value
            elif name == "flags":
                values[name] = _flags(value, flag_kind)
            else:
                values[name] = int(value.strip() or "0", 0)
        except ValueError:
            raise _Usage(f"{where}: {name}: {value!r} is not an integer") from None
    return values


def _records(args: argparse.Namespace, kind: str) -> list[Any]:
    """The accounts or transfers a create command names: --file, or the single one in
    its options; every problem is a ``_Usage``."""
    from ledger import Account, AccountFlags, RecordError, Transfer, TransferFlags

    record_type: type[Account] | type[Transfer] = Account if kind == "accounts" else Transfer
    fields = _ACCOUNT_FIELDS if kind == "accounts" else _TRANSFER_FIELDS
    flag_kind = AccountFlags if kind == "accounts" else TransferFlags
    if args.file is not None:
        given = [name for name in fields if getattr(args, name, None) is not None]
        if given:
            raise _Usage(f"--file cannot be combined with --{given[0].replace('_', '-')}")
        rows = _read_records(args.file, fields, flag_kind)
    else:
        required = ("id", "ledger", "code") if kind == "accounts" else fields[:6]
        missing = [name for name in required if getattr(args, name) is None]
        if missing:
            options = ", ".join("--" + _OPTION_OF.get(name, name) for name in missing)
            raise _Usage(f"give --file, or {options} for a single record")
        rows = [{name: getattr(args, name) for name in required}]
        rows[0]["flags"] = _flags(args.flags or "", flag_kind)
    records = []
    for number, row in enumerate(rows, 1):
        try:
            records.append(record_type(**row))
        except (RecordError, TypeError, ValueError) as error:
            where = f"{args.file}: record {number}" if args.file else "the record"
            raise _Usage(f"{where}: {error}") from None
    return records


_OPTION_OF = {"debit_account_id": "debit", "credit_account_id": "credit"}


def _open_client(args: argparse.Namespace) -> Client:
    from node.client import Client
    from node.config import ConfigError, load_client_config

    try:
        config = load_client_config(args.config)
    except (ConfigError, OSError) as error:
        raise _Usage(f"--config: {error}") from None
    return Client(config, timeout_s=args.timeout_s)


def _client_command(args: argparse.Namespace) -> int:
    """Run one ``aegis client`` command: usage problems exit 2, an unreachable cluster
    (or an answer that does not verify) exits 3, a failed record exits 1."""
    from node.client import ClientError

    name = f"aegis client {args.client_command}"
    try:
        with _open_client(args) as client:
            status: int = args.client_handler(args, client)
            return status
    except _Usage as error:
        print(f"{name}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except ClientError as error:
        code = "" if error.code is None else f" ({error.code.name})"
        print(f"{name}: the cluster did not answer{code}: {error}", file=sys.stderr)
        return EXIT_UNREACHABLE


def _create(args: argparse.Namespace, client: Client, kind: str) -> int:
    from consensus.messages import Finality
    from ledger import CreateAccountResult, CreateTransferResult

    records = _records(args, kind)
    level = Finality.PROVISIONAL if args.wait == "provisional" else Finality.FINAL
    create = client.create_accounts if kind == "accounts" else client.create_transfers
    answer = create(records, level)
    result_kind: type[enum.IntEnum] = (
        CreateAccountResult if kind == "accounts" else CreateTransferResult
    )
    results = [
        (index, record.id, _result_name(result_kind, code), code)
        for index, (record, code) in enumerate(zip(records, answer.codes, strict=True))
    ]
    failed = sum(1 for *_, code in results if code)
    if args.json:
        _print_json(
            {
                "level": answer.level.name,
                "height": answer.height,
                "replica": answer.replica,
                "request_number": answer.request_number,
                "results": [
                    {"index": i, "id": r, "result": n, "code": c} for i, r, n, c in results
                ],
            }
        )
    else:
        _print_table(("index", "id", "result"), [row[:3] for row in results])
        print(
            f"{len(results) - failed} created, {failed} failed; {answer.level.name} in block "
            f"h{answer.height} (request {answer.request_number}, replica {answer.replica})"
        )
    return EXIT_FAILED if failed else EXIT_OK


def _result_name(kind: type[enum.IntEnum], code: int) -> str:
    try:
        return kind(code).name.lower()
    except ValueError:
        return f"code {code}"


_ACCOUNT_COLUMNS = (
    "id",
    "ledger",
    "code",
    "debits_pending",
    "debits_posted",
    "credits_pending",
    "credits_posted",
    "flags",
    "timestamp",
)
_TRANSFER_COLUMNS = (
    "id",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "ledger",
    "code",
    "flags",
    "pending_id",
    "timestamp",
)
_BALANCE_COLUMNS = (
    "timestamp",
    "debits_pending",
    "debits_posted",
    "credits_pending",
    "credits_posted",
)


def _print_records(args: argparse.Namespace, columns: Sequence[str], found: Sequence[Any]) -> None:
    rows = [[int(getattr(record, column)) for column in columns] for record in found]
    if args.json:
        _print_json([dict(zip(columns, row, strict=True)) for row in rows])
    else:
        _print_table(columns, rows)


def _read_at_least(args: argparse.Namespace, client: Client) -> None:
    if args.min_height:
        client.checker.read_at_least(args.min_height)


def _lookup(args: argparse.Namespace, client: Client, kind: str) -> int:
    ids: list[int] = args.ids
    _read_at_least(args, client)
    lookup = client.lookup_accounts if kind == "accounts" else client.lookup_transfers
    found: Sequence[Any] = lookup(ids)
    _print_records(args, _ACCOUNT_COLUMNS if kind == "accounts" else _TRANSFER_COLUMNS, found)
    missing = sorted(set(ids) - {record.id for record in found})
    if missing:
        print(f"not found: {' '.join(map(str, missing))}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _account_query(args: argparse.Namespace, client: Client, kind: str) -> int:
    from ledger import AccountFilter, AccountFilterFlags

    flags = AccountFilterFlags.DEBITS | AccountFilterFlags.CREDITS
    if args.reversed:
        flags |= AccountFilterFlags.REVERSED
    query = AccountFilter(account_id=args.account_id, limit=args.limit, flags=flags)
    _read_at_least(args, client)
    if kind == "transfers":
        _print_records(args, _TRANSFER_COLUMNS, client.get_account_transfers(query))
    else:
        _print_records(args, _BALANCE_COLUMNS, client.get_account_balances(query))
    return EXIT_OK


def _status(args: argparse.Namespace, client: Client) -> int:
    from node.client import ClientError

    statuses: list[dict[str, object]] = []
    for replica in range(len(client.channels)):
        try:
            statuses.append(client.status(replica))
        except ClientError as error:
            statuses.append({"replica": replica, "mode": "down", "error": str(error)})
    heights = [int(str(s["height"])) for s in statuses if "height" in s]
    top = max(heights, default=0)
    for status in statuses:
        if "height" in status:
            status["lag"] = top - int(str(status["height"]))
    columns = ("replica", "mode", "regency", "height", "leader", "lag", "pending_requests")
    if args.json:
        _print_json(statuses)
    else:
        rows = [[s.get(c, "-") for c in columns] for s in statuses]
        _print_table(["pending" if c == "pending_requests" else c for c in columns], rows)
        for status in statuses:
            if "error" in status:
                print(f"replica {status['replica']}: {status['error']}", file=sys.stderr)
    return EXIT_OK if heights else EXIT_UNREACHABLE


_WATCH_COLUMNS = ("height", "regency", "requests", "events", "log_size", "timestamp", "digest")
_WATCH_WIDTHS_MIN = (6, 7, 8, 6, 8, 19, 16)  # rows are printed one by one: fixed columns


def _watch(args: argparse.Namespace, client: Client) -> int:
    """Print FINAL blocks as they are decided; when the replica watched fails (or ends
    the stream) the next one takes over from the last height printed."""
    from node.client import RETRYABLE, ClientError

    after, replica, shown, failures = args.after, args.replica, 0, 0
    count = len(client.channels)
    if not 0 <= replica < count:
        raise _Usage(f"--replica must be in 0..{count - 1}")
    if not args.json:
        typed_like_rows = [(0, 0, 0, 0, 0, 0, "")]
        print(_table(_WATCH_COLUMNS, typed_like_rows, _WATCH_WIDTHS_MIN)[0], flush=True)
    try:
        while args.count is None or shown < args.count:
            try:
                with contextlib.closing(client.watch_commits(after, replica)) as blocks:
                    for decided in blocks:
                        failures = 0
                        after = _print_block(args, decided)
                        shown += 1
                        if shown == args.count:
                            return EXIT_OK
                problem = f"replica {replica}: the stream ended"
            except ClientError as error:
                if error.code not in RETRYABLE:
                    raise
                problem = str(error)
            failures += 1
            if failures >= count:
                raise ClientError(f"no replica can be watched; last: {problem}")
            replica = (replica + 1) % count
            print(f"{problem}; watching replica {replica} above h{after}", file=sys.stderr)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends
    return EXIT_OK


def _print_block(args: argparse.Namespace, decided: DecidedBlock) -> int:
    """Print one block as a row (or a JSON line); its height."""
    header = decided.block.header
    row = (
        header.height,
        decided.certificate.regency,
        len(decided.block.requests),
        sum(request.events for request in decided.block.requests),
        header.log_size,
        header.timestamp,
        header.digest.hex()[: _WATCH_WIDTHS_MIN[-1]],
    )
    if args.json:
        _print_json(dict(zip(_WATCH_COLUMNS, row, strict=True)))
    else:
        print(_table(_WATCH_COLUMNS, [row], _WATCH_WIDTHS_MIN)[1], flush=True)
    return header.height


def _add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        required=True,
        help="the client.toml written by 'aegis cluster init' (client-<c>/)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        help="print JSON (one document, or one line per block) instead of a table",
    )
    common.add_argument(
        "--timeout",
        dest="timeout_s",
        type=float,
        default=CLIENT_TIMEOUT_S_DEFAULT,
        help=f"seconds per call to one replica (default {CLIENT_TIMEOUT_S_DEFAULT:g})",
    )
    client = commands.add_parser(
        "client",
        help="create and look up accounts and transfers, show replica status, watch blocks",
        description="Talk to a running cluster as one of its clients (mutual TLS, signed "
        "requests). A create call is retried unchanged (same request number) on the next "
        "replica when one is down or slow, so it never creates anything twice, and a FINAL "
        "answer is accepted only with a commit certificate that verifies. Exit codes: 0 ok, "
        "1 a record failed (its result code is printed) or an id was not found, 2 bad usage "
        "(arguments, config, records file), 3 the cluster did not answer (or its answer "
        "did not verify): the outcome is unknown, so send the same ids again.",
    )
    sub = client.add_subparsers(dest="client_command", metavar="COMMAND", required=True)

    def command(name: str, help: str, description: str, handler: Any) -> argparse.ArgumentParser:
        parser = sub.add_parser(name, parents=[common], help=help, description=description)
        parser.set_defaults(handler=_client_command, client_handler=handler)
        return parser

    def wait_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--wait",
            choices=("final", "provisional"),
            default="final",
            help="final (default): a certified block; provisional: f + 1 "
            "replicas agree (or one FINAL answer)",
        )
        parser.add_argument(
            "--file",
            help="a .csv (header line of field names) or .json "
            "(list of objects) file of records, instead of the options",
        )

    def min_height_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--min-height",
            type=_height,
            default=0,
            metavar="H",
            help="answer from FINAL state at height H or above, e.g. the block hH a "
            "create command printed, so a read sees what an earlier command wrote "
            "(read-your-writes across invocations); a replica still below H waits up to "
            "read_wait_ms_max, then the next one is asked; exit 3 if none gets there",
        )

    accounts = command(
        "create-accounts",
        "create accounts (one from options, or many from --file)",
        "Creates accounts and prints each one's result (ok, exists, ...). Fields in a file: "
        + ", ".join(_ACCOUNT_FIELDS)
        + ".",
        functools.partial(_create, kind="accounts"),
    )
    accounts.add_argument("--id", type=_record_id, help="the account's id (1..2^128-2)")
    accounts.add_argument("--ledger", type=_natural, help="the ledger (currency) number")
    accounts.add_argument("--code", type=_natural, help="the account's type code")
    accounts.add_argument(
        "--flags",
        help="comma-separated: linked, history, "
        "debits_must_not_exceed_credits, credits_must_not_exceed_debits",
    )
    wait_option(accounts)

    transfers = command(
        "create-transfers",
        "create transfers (one from options, or many from --file)",
        "Creates transfers and prints each one's result (ok, exists, exceeds_credits, ...). "
        "Amounts are integers in the ledger's smallest unit. Fields in a file: "
        + ", ".join(_TRANSFER_FIELDS)
        + " (debit and credit are accepted for the account ids).",
        functools.partial(_create, kind="transfers"),
    )
    transfers.add_argument("--id", type=_record_id, help="the transfer's id (1..2^128-2)")
    transfers.add_argument(
        "--debit",
        dest="debit_account_id",
        metavar="ID",
        type=_record_id,
        help="the account debited",
    )
    transfers.add_argument(
        "--credit",
        dest="credit_account_id",
        metavar="ID",
        type=_record_id,
        help="the account credited",
    )
    transfers.add_argument("--amount", type=_natural, help="integer amount, smallest unit")
    transfers.add_argument("--ledger", type=_natural, help="the ledger of both accounts")
    transfers.add_argument("--code", type=_natural, help="the transfer's reason code")
    transfers.add_argument(
        "--flags",
        help="comma-separated: linked, pending, "
        "post_pending_transfer, void_pending_transfer, balancing_debit, ...",
    )
    wait_option(transfers)

    for kind in ("accounts", "transfers"):
        lookup = command(
            f"lookup-{kind}",
            f"print {kind} by id",
            f"Prints the {kind} with these ids (FINAL state of one replica); ids not found "
            "are named on stderr and exit 1.",
            functools.partial(_lookup, kind=kind),
        )
        lookup.add_argument("ids", nargs="+", type=_record_id, metavar="ID", help="an id")
        min_height_option(lookup)
    for kind, what in (
        ("transfers", "transfers"),
        ("balances", "balance history (HISTORY accounts)"),
    ):
        query = command(
            f"account-{kind}",
            f"print an account's {what}",
            f"Prints the {what} of account ID, oldest first (--reversed: newest first).",
            functools.partial(_account_query, kind=kind),
        )
        query.add_argument("account_id", type=_record_id, metavar="ID", help="the account's id")
        query.add_argument("--limit", type=_natural, default=100, help="at most this many rows")
        query.add_argument("--reversed", action="store_true", help="newest first")
        min_height_option(query)

    command(
        "status",
        "print every replica's mode, regency, height, leader and lag",
        "Asks each replica for its status; a replica that does not answer is shown as "
        "down. Exit 3 if none answers.",
        _status,
    )
    watch = command(
        "watch",
        "print FINAL blocks as they are decided (Ctrl-C ends)",
        "Streams certified blocks above --after from --replica, each checked (certificate, "
        "body, parent) before it is printed; when that replica fails the next one takes "
        "over from the last height printed. Ends on Ctrl-C or after --count blocks.",
        _watch,
    )
    watch.add_argument("--after", type=_natural, default=0, help="start above this height")
    watch.add_argument("--replica", type=_natural, default=0, help="the replica to watch first")
    watch.add_argument("--count", type=_natural, help="stop after this many blocks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aegis",
        description=(
            "Aegis Ledger: a consensus-replicated double-entry payment ledger. "
            "Run 'aegis COMMAND --help' for each command."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="run a 4-replica cluster on this machine, crash its leader, check every transfer",
        description=(
            "Starts 4 replica processes on 127.0.0.1 (a fresh cluster in a temporary "
            "directory), opens 8 accounts and sends CALLS create calls of BATCH transfers "
            "one at a time, each waiting for FINAL, with a progress bar on stderr. Halfway "
            "it kills the BFT leader with SIGKILL and shows the regency change from each "
            "replica's status (mode, regency, height) while the transfers go on; then it "
            "restarts that replica. It ends with the exactly-once check: every acknowledged "
            "transfer is on every replica once, unaltered, and every balance is their sum "
            "(debits = credits). Prints a verdict; exits 0 if it passed, 1 if not (the "
            "cluster directory and logs are kept), 130 on Ctrl-C. Every process it starts "
            "is stopped before it exits. Takes about 20 s; needs no services."
        ),
        epilog="--embedded instead runs the scripted business day of the first version: "
        "one in-process ledger, no network, the same output on every run.",
    )
    demo.add_argument(
        "--embedded", action="store_true", help="the scripted day on an embedded ledger instead"
    )
    demo.add_argument(
        "--calls", type=int, default=100, help="create calls in the workload (default 100)"
    )
    demo.add_argument("--batch", type=int, default=50, help="transfers per call (default 50)")
    demo.set_defaults(handler=_demo)

    from sim import cli as sim_cli

    sim = commands.add_parser(
        "sim",
        help="deterministic BFT simulations: run a seed, fuzz many, list scenarios",
        description="Run the real replica cores under a seeded, faulty network with "
        "Byzantine replicas; every run checks agreement, validity, ledger invariants, "
        "state hashes, exactly-once and liveness.",
    )
    sim_cli.add_commands(sim.add_subparsers(dest="sim_command", metavar="COMMAND", required=True))
    _add_cluster_commands(commands)
    _add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "sim":
        from sim import cli as sim_cli

        return sim_cli.dispatch(args)
    status: int = args.handler(args)
    return status


def console_main() -> None:
    """Entry point of the ``aegis`` console script."""
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (``aegis demo | head``): not an error of ours.
        # Point stdout at devnull so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 0
    sys.exit(status)


if __name__ == "__main__":
    console_main()
