"""Telemetry of four in-process replicas (real gRPC, mutual TLS, WAL on disk) and of
``node.telemetry`` alone: one trace from the client into the replica, the block's
trace across replicas, the metrics, the console output and the off switch.

The block spans and the driver's metrics (batch sizes, WAL, rounds) need the driver to
call the telemetry hooks; until it does, those tests are skipped (``DRIVER_HOOKS``)."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_service
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as metrics_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_service
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as trace_grpc
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricsData,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import node.config
import node.driver
from consensus.messages import Finality
from consensus.mode import Mode
from ledger import Account, AccountFlags, Transfer
from node import telemetry
from node.client import Answer, Client, ClientError
from node.config import init_cluster, load_client_config, load_node_config
from node.driver import Driver
from node.replica import serve
from node.telemetry import Settings

DRIVER_HOOKS = hasattr(node.driver, "for_driver")  # node/driver.py calls the hooks
needs_hooks = pytest.mark.skipif(not DRIVER_HOOKS, reason="the driver calls no hooks yet")
Point = HistogramDataPoint | NumberDataPoint
TRANSFERS = (2, 3, 1)  # transfers per FINAL create call
QUIET = Settings(exporter="console", metrics_interval_ms=3_600_000)  # exports when flushed


@dataclass
class Run:
    answers: list[Answer]  # accounts, the FINAL transfer calls, the PROVISIONAL one
    spans: tuple[ReadableSpan, ...]
    metrics: dict[str, list[Point]]
    console: str
    records: int = field(init=False)  # accounts and transfers created

    def __post_init__(self) -> None:
        self.records = sum(len(a.codes) for a in self.answers)

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name]


def _points(data: MetricsData | None) -> dict[str, list[Point]]:
    assert data is not None
    points: dict[str, list[Point]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    assert isinstance(point, HistogramDataPoint | NumberDataPoint)
                    points.setdefault(metric.name, []).append(point)
    return points


def _wait_ready(app: Client, replicas: int) -> None:
    deadline = time.monotonic() + 20
    for replica in range(replicas):
        while True:
            try:
                app.status(replica)
                break
            except ClientError:
                assert time.monotonic() < deadline, f"replica {replica} did not come up"
                time.sleep(0.05)


def _workload(app: Client) -> list[Answer]:
    _wait_ready(app, 4)
    accounts = [Account(id=i, ledger=1, code=1, flags=AccountFlags.HISTORY) for i in (1, 2)]
    answers = [app.create_accounts(accounts)]
    next_id = 100
    for count in TRANSFERS:
        transfers = []
        for _ in range(count):
            next_id += 1
            transfers.append(Transfer(id=next_id, debit_account_id=1, credit_account_id=2,
                                      amount=5, ledger=1, code=1))  # fmt: skip
        answers.append(app.create_transfers(transfers))
    last = Transfer(id=999, debit_account_id=2, credit_account_id=1, amount=1, ledger=1, code=1)
    answers.append(app.create_transfers([last], Finality.PROVISIONAL))  # asks every replica
    assert all(set(a.codes) == {0} for a in answers), [a.codes for a in answers]
    return answers


async def _cluster(cluster: Path, pipeline: telemetry.Pipeline, reader: InMemoryMetricReader,
                   workload: bool = True) -> tuple[list[Answer], MetricsData | None]:  # fmt: skip
    stop = asyncio.Event()
    configs = [load_node_config(cluster / f"replica-{i}" / "node.toml") for i in range(4)]
    replicas = [asyncio.create_task(serve(config, stop)) for config in configs]
    client_config = load_client_config(cluster / "client-0" / "client.toml")
    try:
        with Client(client_config, 10, tracer_provider=pipeline.tracer_provider) as app:
            if workload:
                answers = await asyncio.to_thread(_workload, app)
            else:
                await asyncio.to_thread(_wait_ready, app, 4)
                one = Account(id=7, ledger=1, code=1)
                answers = [await asyncio.to_thread(app.create_accounts, [one])]
        await asyncio.sleep(0.2)  # the other replicas decide the last block too
        data = reader.get_metrics_data()  # while the drivers live (observable instruments)
        pipeline.force_flush()
        return answers, data
    finally:
        stop.set()
        await asyncio.gather(*replicas)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    cluster = tmp_path_factory.mktemp("telemetry") / "c"
    init_cluster(cluster, replicas=4)
    spans, reader, console = InMemorySpanExporter(), InMemoryMetricReader(), io.StringIO()
    pipeline = telemetry.install(
        QUIET, span_exporters=[spans], metric_readers=[reader], console_out=console
    )
    try:
        answers, data = asyncio.run(asyncio.wait_for(_cluster(cluster, pipeline, reader), 60))
        yield Run(answers, spans.get_finished_spans(), _points(data), console.getvalue())
    finally:
        telemetry.uninstall()


# ------------------------------------------------------------------ traces


def _server_spans(run: Run, client_span: ReadableSpan) -> list[ReadableSpan]:
    context = client_span.get_span_context()
    assert context is not None
    return [
        s
        for s in run.spans
        if s.kind is SpanKind.SERVER
        and s.parent is not None
        and s.parent.trace_id == context.trace_id
        and s.parent.span_id == context.span_id
    ]


def _client_span(run: Run, answer: Answer) -> ReadableSpan:
    (span,) = [
        s
        for s in run.spans
        if s.kind is SpanKind.CLIENT
        and (s.attributes or {}).get("aegis.request.number") == answer.request_number
    ]
    return span


def test_a_create_call_is_one_trace_from_the_client_into_the_replica(run: Run) -> None:
    for answer in run.answers[:-1]:  # the FINAL calls: one replica answers each
        client = _client_span(run, answer)
        attributes = client.attributes or {}
        assert client.name in ("aegis.v1.Ledger/CreateTransfers", "aegis.v1.Ledger/CreateAccounts")
        assert attributes["aegis.client.id"] == 0
        assert attributes["aegis.request.transfers"] == len(answer.codes)
        assert attributes["aegis.block.height"] == answer.height
        assert attributes["aegis.replica.id"] == answer.replica
        (server,) = [s for s in _server_spans(run, client)
                     if (s.attributes or {})["aegis.replica.id"] == answer.replica]  # fmt: skip
        assert server.name == client.name
        served = server.attributes or {}
        assert served["aegis.request.number"] == answer.request_number
        assert served["aegis.request.transfers"] == len(answer.codes)
        assert served["aegis.finality.wanted"] == "FINAL"
        assert served["rpc.grpc.status_code"] == 0
        assert served["aegis.block.digest"] == answer.header.digest.hex()
        events = {e.name: e for e in server.events}
        assert list(events) == ["submitted", "final"]
        assert (events["final"].attributes or {})["aegis.block.height"] == answer.height
        assert events["submitted"].timestamp <= events["final"].timestamp
        # The server span points into the block's trace, which every replica joins.
        block = telemetry.block_span_context(answer.header.digest)
        assert [(k.context.trace_id, k.context.span_id) for k in server.links] == [
            (block.trace_id, block.span_id)
        ]


def test_a_provisional_wait_reaches_every_replica_in_one_trace(run: Run) -> None:
    answer = run.answers[-1]
    client = _client_span(run, answer)
    assert (client.attributes or {})["aegis.finality.wanted"] == "PROVISIONAL"
    servers = _server_spans(run, client)
    replicas = {(s.attributes or {})["aegis.replica.id"] for s in servers}
    assert answer.replica in replicas and replicas <= {0, 1, 2, 3}
    for server in servers:  # answered, or cancelled once the client had its answer
        assert (server.attributes or {})["rpc.grpc.status_code"] in (0, 1)


@needs_hooks
def test_every_replica_adds_its_decision_to_the_block_trace(run: Run) -> None:
    decided = run.named("aegis.block.decide")
    for answer in run.answers:
        block = telemetry.block_span_context(answer.header.digest)
        spans = [s for s in decided if (s.attributes or {})["aegis.block.height"] == answer.height]
        replicas = [(s.attributes or {})["aegis.replica.id"] for s in spans]
        assert sorted(cast(list[int], replicas)) == [0, 1, 2, 3]
        for span in spans:
            attributes = span.attributes or {}
            context = span.get_span_context()
            assert context is not None and context.trace_id == block.trace_id
            assert span.parent is not None and span.parent.span_id == block.span_id
            assert attributes["aegis.block.digest"] == answer.header.digest.hex()
            keys = cast(tuple[str, ...], attributes["aegis.request.keys"])
            assert f"0:{answer.request_number}" in keys
            assert attributes["aegis.mode"] == "bft" and attributes["aegis.finality"] == "FINAL"
            assert span.start_time is not None and span.end_time is not None
            assert span.start_time <= span.end_time
        # The replica that served the call links its decision back to the call.
        client = _client_span(run, answer)
        (server,) = [s for s in _server_spans(run, client)
                     if (s.attributes or {})["aegis.replica.id"] == answer.replica]  # fmt: skip
        (own,) = [s for s in spans if (s.attributes or {})["aegis.replica.id"] == answer.replica]
        assert server.context is not None
        assert server.context.span_id in {k.context.span_id for k in own.links}


# ------------------------------------------------------------------ metrics


def _by_replica(points: list[Point]) -> dict[int, Point]:
    return {cast(int, (p.attributes or {})["aegis.replica.id"]): p for p in points}


def test_latency_queue_depths_mode_and_heights_are_measured(run: Run) -> None:
    final = [p for p in run.metrics["aegis.commit.latency"]
             if (p.attributes or {})["aegis.phase"] == "submit_to_final"]  # fmt: skip
    assert all(isinstance(p, HistogramDataPoint) for p in final)
    histograms = cast(list[HistogramDataPoint], final)
    assert sum(p.count for p in histograms) >= len(run.answers)
    assert min(p.min for p in histograms) > 0 and max(p.max for p in histograms) < 30
    calls = cast(list[HistogramDataPoint], run.metrics["rpc.server.call.duration"])
    assert sum(p.count for p in calls) >= len(run.answers)
    top = max(a.height for a in run.answers)
    for name in ("aegis.driver.inbound.depth", "aegis.requests.pending", "aegis.regency"):
        points = _by_replica(run.metrics[name])
        assert sorted(points) == [0, 1, 2, 3], name
        assert all(0 <= cast(NumberDataPoint, p).value < 1000 for p in points.values()), name
    depths = run.metrics["aegis.transport.send.depth"]
    pairs = {((p.attributes or {})["aegis.replica.id"], (p.attributes or {})["aegis.peer.id"])
             for p in depths}  # fmt: skip
    assert len(pairs) == 12 and all(r != p for r, p in pairs)
    modes = {((p.attributes or {})["aegis.replica.id"], (p.attributes or {})["aegis.mode"]):
             cast(NumberDataPoint, p).value for p in run.metrics["aegis.mode"]}  # fmt: skip
    assert modes == {(r, m.value): int(m is Mode.BFT) for r in range(4) for m in Mode}
    heights = [cast(NumberDataPoint, p).value for p in run.metrics["aegis.height"]
               if (p.attributes or {})["aegis.finality"] == "final"]  # fmt: skip
    assert len(heights) == 4 and min(heights) >= top


@needs_hooks
def test_batch_sizes_wal_and_rounds_are_measured_at_every_replica(run: Run) -> None:
    top = max(a.height for a in run.answers)  # one request per block in this workload
    requests = _by_replica(run.metrics["aegis.block.requests"])
    transfers = _by_replica(run.metrics["aegis.request.transfers"])
    delays = _by_replica(run.metrics["aegis.block.decide.delay"])
    wal = _by_replica(run.metrics["aegis.wal.append.duration"])
    assert sorted(requests) == sorted(transfers) == sorted(delays) == sorted(wal) == [0, 1, 2, 3]
    for replica in range(4):
        decided = cast(HistogramDataPoint, requests[replica])
        assert decided.count == top and decided.sum == len(run.answers)
        assert cast(HistogramDataPoint, transfers[replica]).sum == run.records
        delay = cast(HistogramDataPoint, delays[replica])
        assert delay.count == top and delay.min >= 0 and delay.max < 30
        appended = cast(HistogramDataPoint, wal[replica])
        assert appended.count > 0 and appended.min > 0 and appended.max < 10
    phases = {
        (p.attributes or {})["aegis.phase"] for p in run.metrics["aegis.driver.round.duration"]
    }
    assert phases == {"step", "persist"}
    assert "aegis.regency.changes" not in run.metrics  # a calm run: the leader stayed


def test_console_output_holds_the_spans_and_metrics(run: Run) -> None:
    lines = run.console.splitlines()
    assert any(
        line.startswith("span aegis.v1.Ledger/CreateTransfers kind=server") for line in lines
    )
    assert any(
        line.startswith("span aegis.v1.Ledger/CreateTransfers kind=client") for line in lines
    )
    assert any(line.startswith("metric aegis.commit.latency ") and "count=" in line
               for line in lines)  # fmt: skip
    assert any(line.startswith("metric aegis.mode ") for line in lines)


# ------------------------------------------------------------------ the module alone


class _Core:
    def __init__(self) -> None:
        self.mode = Mode.BFT
        self.bft = type("Bft", (), {"regency": 0, "pending": {}, "decided_height": 0})()
        self.raft = type("Raft", (), {"last_height": 0})()


class _Driver:
    """What telemetry reads of a driver."""

    def __init__(self) -> None:
        self.config = type("Config", (), {"replica_id": 2, "cluster": "t"})()
        self.core = _Core()
        self.inbound: asyncio.Queue[object] = asyncio.Queue()
        self.transport = None
        self.waiter_count = 0
        self.fence = None
        self.stats = node.driver.DriverStats()


def _replica(pipeline: telemetry.Pipeline) -> tuple[telemetry.ReplicaTelemetry, _Driver]:
    driver = _Driver()
    return telemetry.ReplicaTelemetry(pipeline, cast(Driver, driver)), driver


def test_regency_and_mode_changes_are_counted_once_each() -> None:
    reader = InMemoryMetricReader()
    pipeline = telemetry.install(QUIET, metric_readers=[reader], console_out=io.StringIO())
    try:
        replica, driver = _replica(pipeline)
        replica.round_finished(0, 0.0, 0.0)
        driver.core.bft.regency = 1
        replica.round_finished(0, 0.0, 0.0)
        replica.round_finished(0, 0.0, 0.0)
        driver.core.mode = Mode.FALLBACK
        replica.round_finished(3, 0.001, 0.002)
        points = _points(reader.get_metrics_data())
        assert [cast(NumberDataPoint, p).value for p in points["aegis.regency.changes"]] == [1]
        (mode,) = points["aegis.mode.changes"]
        assert (mode.attributes or {})["aegis.mode"] == "fallback"
        assert cast(HistogramDataPoint, points["aegis.driver.round.inputs"][0]).sum == 3
        assert cast(NumberDataPoint, _by_replica(points["aegis.regency"])[2]).value == 1
    finally:
        telemetry.uninstall()


def test_console_output_goes_to_the_log_by_default(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aegis.telemetry")
    pipeline = telemetry.install(QUIET)
    try:
        replica, _ = _replica(pipeline)
        call = replica.server_call("aegis.v1.Ledger", "LookupAccounts", ())
        call.end(None)
        pipeline.force_flush()
    finally:
        telemetry.uninstall()
    messages = [r.getMessage() for r in caplog.records if r.name == "aegis.telemetry"]
    assert any(m.startswith("span aegis.v1.Ledger/LookupAccounts kind=server") for m in messages)
    assert any(m.startswith("metric rpc.server.call.duration ") for m in messages)


def _otel_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("Otel")]


def test_the_off_switch_records_nothing(tmp_path: Path) -> None:
    cluster = tmp_path / "c"
    init_cluster(cluster, replicas=4)
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry.uninstall()
    before = _otel_threads()
    pipeline = telemetry.install(
        Settings(exporter="none"), span_exporters=[spans], metric_readers=[reader]
    )
    try:
        assert not pipeline.enabled and pipeline.tracer_provider is None
        assert _otel_threads() == before
        answers, data = asyncio.run(
            asyncio.wait_for(_cluster(cluster, pipeline, reader, workload=False), 60)
        )
        assert answers[0].codes == (0,) and answers[0].level is Finality.FINAL
        assert data is None  # the reader was never attached to a provider
        assert spans.get_finished_spans() == ()
        replica, _ = _replica(pipeline)
        assert replica.server_call("aegis.v1.Ledger", "LookupAccounts", ()) is telemetry.NO_CALL
        replica.wal_appended(0.001, 3)
        replica.round_finished(1, 0.001, 0.001)
        assert spans.get_finished_spans() == () and _otel_threads() == before
    finally:
        telemetry.uninstall()


class _Collector(trace_grpc.TraceServiceServicer, metrics_grpc.MetricsServiceServicer):
    """An OTLP/gRPC collector that keeps the names of what it is sent."""

    def __init__(self) -> None:
        self.spans: list[str] = []
        self.metrics: list[str] = []

    def Export(self, request: Any, context: Any) -> Any:
        if isinstance(request, trace_service.ExportTraceServiceRequest):
            for resource in request.resource_spans:
                self.spans += [s.name for scope in resource.scope_spans for s in scope.spans]
            return trace_service.ExportTraceServiceResponse()
        for resource in request.resource_metrics:
            self.metrics += [m.name for scope in resource.scope_metrics for m in scope.metrics]
        return metrics_service.ExportMetricsServiceResponse()


def test_otlp_sends_spans_and_metrics_to_a_collector() -> None:
    collector = _Collector()
    server = grpc.server(ThreadPoolExecutor(2))
    trace_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    metrics_grpc.add_MetricsServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        settings = Settings(exporter="otlp", endpoint=f"http://127.0.0.1:{port}")
        pipeline = telemetry.install(settings)
        try:
            replica, _ = _replica(pipeline)
            replica.server_call("aegis.v1.Ledger", "LookupAccounts", ()).end(None)
            pipeline.force_flush()
        finally:
            telemetry.uninstall()
    finally:
        server.stop(None)
    assert collector.spans == ["aegis.v1.Ledger/LookupAccounts"]
    assert {"rpc.server.call.duration", "aegis.mode", "aegis.regency"} <= set(collector.metrics)


@pytest.mark.parametrize(
    ("environ", "configured", "exporter"),
    [
        ({}, None, "console"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, None, "otlp"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, "console", "console"),
        ({"AEGIS_TELEMETRY": "none"}, "otlp", "none"),
        ({"AEGIS_TELEMETRY": "console", "OTEL_SDK_DISABLED": "true"}, None, "none"),
        ({}, "none", "none"),
    ],
)
def test_settings_come_from_the_environment_then_the_config(
    environ: dict[str, str], configured: str | None, exporter: str
) -> None:
    config = None
    if configured is not None:
        section = type("Telemetry", (), {"exporter": configured, "endpoint": "",
                                         "metrics_interval_ms": 20_000})()  # fmt: skip
        config = type("Config", (), {"telemetry": section})()
    assert telemetry.settings_of(config, environ).exporter == exporter


def test_bad_settings_are_refused_with_their_name() -> None:
    with pytest.raises(telemetry.TelemetryError, match="AEGIS_TELEMETRY='off'"):
        telemetry.settings_of(None, {"AEGIS_TELEMETRY": "off"})
    with pytest.raises(telemetry.TelemetryError, match="metrics_interval_ms 5"):
        Settings(metrics_interval_ms=5)
    with pytest.raises(telemetry.TelemetryError, match="OTEL_METRIC_EXPORT_INTERVAL='5s'"):
        telemetry.settings_of(None, {"OTEL_METRIC_EXPORT_INTERVAL": "5s"})
    assert (
        telemetry.settings_of(None, {"OTEL_METRIC_EXPORT_INTERVAL": "2000"}).metrics_interval_ms
        == 2000
    )


@pytest.mark.skipif(
    not hasattr(node.config, "TelemetryConfig"), reason="node/config.py has no [telemetry] yet"
)
def test_the_telemetry_table_of_a_node_config_is_read(tmp_path: Path) -> None:
    cluster = tmp_path / "c"
    init_cluster(cluster, replicas=4)
    path = cluster / "replica-0" / "node.toml"
    plain = path.read_text()
    assert telemetry.settings_of(load_node_config(path), {}).exporter == "console"
    path.write_text(plain + '\n[telemetry]\nexporter = "none"\nmetrics_interval_ms = 20000\n')
    settings = telemetry.settings_of(load_node_config(path), {})
    assert settings.exporter == "none" and settings.metrics_interval_ms == 20_000
    path.write_text(plain + '\n[telemetry]\nexporter = "otlp"\nendpoint = "http://c:4317"\n')
    settings = telemetry.settings_of(load_node_config(path), {"AEGIS_TELEMETRY": "console"})
    assert settings.exporter == "console" and settings.endpoint == "http://c:4317"
    path.write_text(plain + '\n[telemetry]\nexporter = "stdout"\n')
    with pytest.raises(node.config.ConfigError, match=r"telemetry\.exporter: must be one of"):
        load_node_config(path)
