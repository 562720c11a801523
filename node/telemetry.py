"""OpenTelemetry for replicas: a trace per client call, a trace per block, and metrics.

Guarantees:

* The cores stay free of it: nothing in ``consensus/`` is traced or timed, and no
  consensus message carries trace context.  The service and the driver tell this
  module what they saw (``ReplicaTelemetry``'s methods); observable instruments read
  the driver from the metric reader's thread between rounds (plain attribute and
  ``len`` reads, atomic under the GIL).
* Off (``exporter = "none"``, ``AEGIS_TELEMETRY=none`` or ``OTEL_SDK_DISABLED=true``)
  costs a flag test per hook: no provider, no thread, nothing recorded.
* On, nothing on the hot path waits for an exporter: spans leave through a
  ``BatchSpanProcessor`` (bounded queue; it drops beyond), metrics are collected by a
  ``PeriodicExportingMetricReader`` in its own thread every ``metrics_interval_ms``.
* Bounded: at most ``TRACKED_MAX`` client calls tracked per replica, ``LINKS_MAX``
  links and ``KEYS_MAX`` request keys on a block span.
* Works before the driver calls its hooks (``decided``, ``replied``, ``wal_appended``,
  ``round_finished``): the client and server spans, the latency of each call for the
  level it waited for and every observable instrument are there; the block spans,
  batch sizes, WAL, round and regency-change metrics come with the hooks.

One set of providers per process (``install``; the first replica to ask installs
them from its config and the environment); several replicas in one process (the
tests) share it and are told apart by the ``aegis.replica.id`` attribute.

What a trace shows.  A create call is one trace: the client's span
(``aegis.v1.Ledger/CreateTransfers``, kind CLIENT) and, at each replica the call
reached (one; every replica for a PROVISIONAL wait), a SERVER span continuing the
``traceparent`` the client put into the gRPC metadata, with the request's attributes
(``aegis.client.id``, ``aegis.request.number``, ``aegis.request.transfers``,
``aegis.finality.wanted``) and events ``submitted`` (queue depths then),
``provisional`` (fallback mode only: BFT answers are FINAL at once) and ``final`` (the
block's height and digest), ended when the answer leaves.  The other replicas never
see that context (the relayed request and the consensus messages are not changed), so
the consensus work is a second trace, one per block, that every replica joins without
talking about it: its trace id is the first 16 bytes of the block digest and its
spans' parent id the next 8 (a span nobody exports: the block itself).  Each replica
adds an ``aegis.block.decide`` span to it (``aegis.block.commit`` for a PROVISIONAL
fallback commit), from the leader's timestamp in the header to the moment it decided,
with the height, digest, regency, mode, sizes and the (client id, request number) keys
of the requests in it.  The two are linked both ways at the replica that received the
call: its server span links to the block's trace, that replica's block span links back
to the server span.  From any other replica, find the block by ``aegis.request.keys``
or by height and digest.

Metrics (each measurement carries ``aegis.replica.id``; "hook": needs the driver's):

* latency: ``aegis.commit.latency`` (s; ``aegis.phase`` submit_to_provisional,
  submit_to_final: at the receiving replica), ``rpc.server.call.duration`` (s; by
  method and status), ``aegis.block.decide.delay`` (s; header timestamp to decided,
  hook), ``aegis.wal.append.duration`` (s; writev + fdatasync per batch, hook),
  ``aegis.driver.round.duration`` (s; ``aegis.phase`` step, persist; hook);
* batch sizes (hook): ``aegis.block.requests``, ``aegis.block.transfers``,
  ``aegis.request.transfers``, ``aegis.wal.append.records``,
  ``aegis.driver.round.inputs``;
* queues (gauges): ``aegis.driver.inbound.depth``, ``aegis.transport.send.depth`` (per
  ``aegis.peer.id``), ``aegis.requests.pending``, ``aegis.requests.waiting``;
* state (gauges): ``aegis.mode`` (1 for the current ``aegis.mode``), ``aegis.regency``,
  ``aegis.height`` (final, provisional), ``aegis.fenced``;
* counters: ``aegis.regency.changes``, ``aegis.mode.changes``,
  ``aegis.blocks.provisional`` (hook), and, read from the driver's and transport's own
  counters, ``aegis.driver.stats`` (``aegis.stat``) and ``aegis.transport.messages``
  (per peer and ``aegis.outcome``).

Configuration: ``settings_of`` (the config's ``[telemetry]`` table when it has one,
``AEGIS_TELEMETRY``, ``OTEL_SDK_DISABLED``, ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_METRIC_EXPORT_INTERVAL``).  "console" writes one line per span and per metric
point to the ``aegis.telemetry`` logger (the replica's log); "otlp" sends OTLP/gRPC.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import os
import threading
import time
import typing
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TextIO

import grpc
from opentelemetry import propagate, trace
from opentelemetry.metrics import (
    CallbackOptions,
    Histogram,
    Meter,
    NoOpMeterProvider,
    Observation,
)
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    HistogramDataPoint,
    MetricExporter,
    MetricReader,
    MetricsData,
    NumberDataPoint,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
)
from opentelemetry.util.types import Attributes, AttributeValue

from consensus.messages import Block, DecidedBlock, Finality, Reply, Request
from consensus.mode import Mode

if TYPE_CHECKING:
    from node.driver import Driver

EXPORTERS: Final = ("console", "otlp", "none")
ENV_EXPORTER: Final = "AEGIS_TELEMETRY"  # console | otlp | none: overrides the config
METRICS_INTERVAL_MS_DEFAULT: Final = 15_000
METRICS_INTERVAL_MS_MIN: Final = 100
METRICS_INTERVAL_MS_MAX: Final = 3_600_000
TRACKED_MAX: Final = 16_384  # client calls tracked per replica (the driver's WAITERS_MAX)
LINKS_MAX: Final = 32  # links from one block span to the server spans of its requests
KEYS_MAX: Final = 32  # request keys listed on one block span
SECONDS_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5, 5.0, 10.0, 30.0)  # fmt: skip
COUNT_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
# gRPC codes that are the server's fault (OpenTelemetry's RPC conventions); the others
# (INVALID_ARGUMENT, PERMISSION_DENIED, ...) are the caller's and leave the span unset.
_CODE = grpc.StatusCode
SERVER_FAULTS: Final = frozenset({_CODE.UNKNOWN, _CODE.DEADLINE_EXCEEDED, _CODE.UNIMPLEMENTED,
                                  _CODE.INTERNAL, _CODE.UNAVAILABLE, _CODE.DATA_LOSS})  # fmt: skip
log = logging.getLogger("aegis.telemetry")


# ------------------------------------------------------------------ settings


class TelemetryError(ValueError):
    """A telemetry setting that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Where traces and metrics go.  ``endpoint``: the OTLP gRPC collector, "" for the
    exporter's own default (``OTEL_EXPORTER_OTLP_ENDPOINT``, else localhost:4317)."""

    exporter: str = "console"
    endpoint: str = ""
    metrics_interval_ms: int = METRICS_INTERVAL_MS_DEFAULT

    def __post_init__(self) -> None:
        if self.exporter not in EXPORTERS:
            raise TelemetryError(f"exporter {self.exporter!r}: must be one of {EXPORTERS}")
        if not METRICS_INTERVAL_MS_MIN <= self.metrics_interval_ms <= METRICS_INTERVAL_MS_MAX:
            raise TelemetryError(
                f"metrics_interval_ms {self.metrics_interval_ms}: must be in "
                f"{METRICS_INTERVAL_MS_MIN}..{METRICS_INTERVAL_MS_MAX}"
            )

    @property
    def enabled(self) -> bool:
        return self.exporter != "none"


def settings_of(config: object | None, environ: Mapping[str, str] = os.environ) -> Settings:
    """The settings for a replica: its config's ``[telemetry]`` table (when the config has
    one: ``exporter``, ``endpoint``, ``metrics_interval_ms``), then the environment.

    The exporter is the first of: none if ``OTEL_SDK_DISABLED`` is true; ``AEGIS_TELEMETRY``;
    the config's, unless it is "auto" (or absent); otlp if ``OTEL_EXPORTER_OTLP_ENDPOINT``
    is set; console.  The metrics interval: ``OTEL_METRIC_EXPORT_INTERVAL``, else the
    config's, else 15 s.  The endpoint: the config's, else the OTLP exporter's default."""
    section = getattr(config, "telemetry", None)
    configured = str(getattr(section, "exporter", "auto"))
    endpoint = str(getattr(section, "endpoint", ""))
    interval = getattr(section, "metrics_interval_ms", METRICS_INTERVAL_MS_DEFAULT)
    raw = environ.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
    if raw:
        if not raw.isdigit():
            raise TelemetryError(f"OTEL_METRIC_EXPORT_INTERVAL={raw!r}: must be milliseconds")
        interval = int(raw)
    assert isinstance(interval, int), interval
    chosen = environ.get(ENV_EXPORTER, "").strip().lower()
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        exporter = "none"
    elif chosen:
        if chosen not in EXPORTERS:
            raise TelemetryError(f"{ENV_EXPORTER}={chosen!r}: must be one of {EXPORTERS}")
        exporter = chosen
    elif configured != "auto":
        exporter = configured
    elif environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        exporter = "otlp"
    else:
        exporter = "console"
    return Settings(exporter=exporter, endpoint=endpoint, metrics_interval_ms=interval)


# ------------------------------------------------------------------ console output


class _LogWriter:
    """A text stream whose lines become INFO records of ``aegis.telemetry``: "console"
    output lands where the replica logs (stderr, ``node.log`` under ``aegis cluster``)."""

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line:
                log.info("%s", line)
        return len(text)

    def flush(self) -> None:
        pass


def _value(value: object) -> str:
    if isinstance(value, tuple | list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def _attributes(attributes: Attributes) -> str:
    return " ".join(f"{k}={_value(v)}" for k, v in (attributes or {}).items())


def format_span(span: ReadableSpan) -> str:
    """One line per span: name, ids, duration, status, attributes, events and links."""
    context = span.get_span_context()
    start = span.start_time or 0
    duration_ms = ((span.end_time or start) - start) / 1e6
    parent = f"{span.parent.span_id:016x}" if span.parent is not None else "-"
    events = ", ".join(
        f"{e.name}@+{(e.timestamp - start) / 1e6:.1f}ms" + (f" {_attributes(e.attributes)}"
                                                            if e.attributes else "")
        for e in span.events
    )  # fmt: skip
    links = ", ".join(f"{k.context.trace_id:032x}/{k.context.span_id:016x}" for k in span.links)
    trace_id = f"{context.trace_id:032x}" if context is not None else "-"
    span_id = f"{context.span_id:016x}" if context is not None else "-"
    return (
        f"span {span.name} kind={span.kind.name.lower()} trace={trace_id} span={span_id} "
        f"parent={parent} {duration_ms:.1f}ms status={span.status.status_code.name} "
        f"{_attributes(span.attributes)} events=[{events}] links=[{links}]\n"
    )


def _quantile(point: HistogramDataPoint, q: float) -> str:
    """The upper bound of the bucket holding quantile ``q`` ("<=x"), from the counts."""
    rank = q * point.count
    seen = 0
    for bound, count in zip((*point.explicit_bounds, math.inf), point.bucket_counts, strict=True):
        seen += count
        if seen >= rank and count:
            return f"<={min(bound, point.max):g}"
    return f"<={point.max:g}"


def format_metrics(data: MetricsData) -> str:
    """One line per data point: name, attributes, value (histograms: count, sum, min,
    max and the bucket bounds of p50 and p99)."""
    lines = []
    for resource_metrics in data.resource_metrics:
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                unit = f" {metric.unit}" if metric.unit in ("s", "ms", "By") else ""
                for point in metric.data.data_points:
                    if isinstance(point, HistogramDataPoint):
                        value = (f"count={point.count} sum={point.sum:g}{unit} min={point.min:g} "
                                 f"max={point.max:g} p50{_quantile(point, 0.5)} "
                                 f"p99{_quantile(point, 0.99)}")  # fmt: skip
                    elif isinstance(point, NumberDataPoint):
                        value = f"{point.value:g}{unit}"
                    else:
                        value = type(point).__name__
                    lines.append(f"metric {metric.name} {_attributes(point.attributes)} {value}")
    return "".join(line + "\n" for line in lines)


# ------------------------------------------------------------------ the pipeline


class Pipeline:
    """The process's tracer and meter providers and its instruments (or no-op ones)."""

    def __init__(
        self,
        settings: Settings,
        *,
        resource: Mapping[str, str] | None = None,
        span_exporters: Sequence[SpanExporter] = (),
        metric_readers: Sequence[MetricReader] = (),
        console_out: TextIO | None = None,
    ) -> None:
        self.settings = settings
        self.closed = False
        self._lock = threading.Lock()
        self._replicas: weakref.WeakSet[ReplicaTelemetry] = weakref.WeakSet()
        self.tracer_provider: TracerProvider | None = None
        self.meter_provider: MeterProvider | None = None
        if not settings.enabled:
            self.tracer: Tracer = trace.NoOpTracer()
            self.instruments = Instruments(NoOpMeterProvider().get_meter("aegis"), self)
            return
        attributes = {"service.name": "aegis-replica", **(resource or {})}
        owner = Resource.create(attributes)
        spans, metrics = _exporters(settings, console_out)
        self.tracer_provider = TracerProvider(resource=owner, shutdown_on_exit=False)
        for exporter in spans:
            self.tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        for exporter in span_exporters:  # in-memory ones (tests): synchronous
            self.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
        readers = [
            PeriodicExportingMetricReader(exporter, settings.metrics_interval_ms)
            for exporter in metrics
        ]
        self.meter_provider = MeterProvider(
            [*readers, *metric_readers],
            resource=owner,
            exemplar_filter=AlwaysOffExemplarFilter(),
            shutdown_on_exit=False,
        )
        self.tracer = self.tracer_provider.get_tracer("aegis.node")
        self.instruments = Instruments(self.meter_provider.get_meter("aegis.node"), self)

    @property
    def enabled(self) -> bool:
        return self.settings.enabled and not self.closed

    def add(self, replica: ReplicaTelemetry) -> None:
        with self._lock:
            self._replicas.add(replica)

    def drivers(self) -> Iterator[tuple[ReplicaTelemetry, Driver]]:
        """The live replicas (for observable instruments; any thread)."""
        with self._lock:
            replicas = list(self._replicas)
        for replica in replicas:
            driver = replica.driver()
            if driver is not None:
                yield replica, driver

    def force_flush(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush()
        if self.meter_provider is not None:
            self.meter_provider.force_flush()

    def shutdown(self) -> None:
        """Export what is pending and stop the exporters' threads; hooks then do nothing."""
        if self.closed:
            return
        self.closed = True
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


def _exporters(
    settings: Settings, console_out: TextIO | None
) -> tuple[list[SpanExporter], list[MetricExporter]]:
    if settings.exporter == "otlp":
        # Imported here: the OTLP modules (and their protobuf code) load only when used.
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        endpoint = settings.endpoint or None
        return [OTLPSpanExporter(endpoint=endpoint)], [OTLPMetricExporter(endpoint=endpoint)]
    assert settings.exporter == "console", settings.exporter
    out: TextIO = console_out or typing.cast(TextIO, _LogWriter())

    def wanted() -> bool:  # formatting is skipped while the log drops INFO records
        return console_out is not None or log.isEnabledFor(logging.INFO)

    def spans(span: ReadableSpan) -> str:
        return format_span(span) if wanted() else ""

    def metrics(data: MetricsData) -> str:
        return format_metrics(data) if wanted() else ""

    return [ConsoleSpanExporter(out=out, formatter=spans)], [
        ConsoleMetricExporter(out=out, formatter=metrics)
    ]


class Instruments:
    """Every instrument, created once per process; each measurement names its replica."""

    def __init__(self, meter: Meter, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

        def histogram(name: str, unit: str, buckets: Sequence[float], about: str) -> Histogram:
            return meter.create_histogram(
                name, unit, about, explicit_bucket_boundaries_advisory=buckets
            )

        seconds, count = SECONDS_BUCKETS, COUNT_BUCKETS
        self.commit_latency = histogram(
            "aegis.commit.latency", "s", seconds,
            "submit to PROVISIONAL / FINAL answer at the receiving replica (aegis.phase)",
        )  # fmt: skip
        self.call_duration = histogram(
            "rpc.server.call.duration", "s", seconds,
            "client API calls, by method and gRPC status",
        )  # fmt: skip
        self.decide_delay = histogram(
            "aegis.block.decide.delay", "s", seconds,
            "the leader's timestamp in a block's header to this replica deciding it",
        )  # fmt: skip
        self.block_requests = histogram(
            "aegis.block.requests", "{request}", count, "client requests per decided block"
        )
        self.block_transfers = histogram(
            "aegis.block.transfers", "{transfer}", count,
            "records (transfers, accounts) per decided block",
        )  # fmt: skip
        self.request_transfers = histogram(
            "aegis.request.transfers", "{transfer}", count,
            "records per client request, counted when its block is decided",
        )  # fmt: skip
        self.wal_append = histogram(
            "aegis.wal.append.duration", "s", seconds, "one WAL batch: writev + fdatasync"
        )
        self.wal_records = histogram(
            "aegis.wal.append.records", "{record}", count, "records per WAL batch"
        )
        self.round_duration = histogram(
            "aegis.driver.round.duration", "s", seconds,
            "driver rounds with inputs, by phase (aegis.phase): step (the core), persist "
            "(WAL append, release, stepping Persisted)",
        )  # fmt: skip
        self.round_inputs = histogram(
            "aegis.driver.round.inputs", "{input}", count,
            "frames and client requests stepped in one round",
        )  # fmt: skip
        self.regency_changes = meter.create_counter(
            "aegis.regency.changes", "{change}", "regencies installed (BFT leader changes)"
        )
        self.mode_changes = meter.create_counter(
            "aegis.mode.changes", "{change}", "BFT <-> fallback switches, by the mode entered"
        )
        self.provisional_blocks = meter.create_counter(
            "aegis.blocks.provisional", "{block}", "blocks committed PROVISIONAL (fallback)"
        )
        self._observables(meter)

    def _observables(self, meter: Meter) -> None:
        gauges: list[tuple[str, str, str, Callable[[CallbackOptions], Iterable[Observation]]]] = [
            ("aegis.driver.inbound.depth", "{frame}", "frames and requests queued for the "
             "driver", self._inbound),
            ("aegis.transport.send.depth", "{message}", "messages queued for each peer "
             "(aegis.peer.id)", self._send_depths),
            ("aegis.requests.pending", "{request}", "client requests waiting to be ordered",
             self._pending),
            ("aegis.requests.waiting", "{call}", "client calls waiting for an answer",
             self._waiting),
            ("aegis.mode", "1", "1 for the replica's mode (aegis.mode: bft, fallback), 0 "
             "for the other", self._mode),
            ("aegis.regency", "1", "the installed regency", self._regency),
            ("aegis.height", "{block}", "decided (FINAL) and fallback log heights "
             "(aegis.finality)", self._heights),
            ("aegis.fenced", "1", "1 while the replica is fenced after amnesia", self._fenced),
        ]  # fmt: skip
        for name, unit, description, callback in gauges:
            meter.create_observable_gauge(name, [callback], unit, description)
        counters: list[tuple[str, str, str, Callable[[CallbackOptions], Iterable[Observation]]]] = [
            ("aegis.driver.stats", "1", "the driver's counters (aegis.stat)", self._stats),
            ("aegis.transport.messages", "{message}", "messages per peer (aegis.peer.id) "
             "and outcome (aegis.outcome: sent, dropped, received, rejected)", self._traffic),
        ]  # fmt: skip
        for name, unit, description, callback in counters:
            meter.create_observable_counter(name, [callback], unit, description)

    def _each(self, read: Callable[[Driver], int]) -> list[Observation]:
        return [Observation(read(d), t.attributes) for t, d in self._pipeline.drivers()]

    def _inbound(self, options: CallbackOptions) -> list[Observation]:
        return self._each(lambda d: d.inbound.qsize())

    def _pending(self, options: CallbackOptions) -> list[Observation]:
        return self._each(lambda d: len(d.core.bft.pending))

    def _waiting(self, options: CallbackOptions) -> list[Observation]:
        return self._each(lambda d: d.waiter_count)

    def _regency(self, options: CallbackOptions) -> list[Observation]:
        return self._each(lambda d: d.core.bft.regency)

    def _fenced(self, options: CallbackOptions) -> list[Observation]:
        return self._each(lambda d: int(d.fence is not None))

    def _send_depths(self, options: CallbackOptions) -> list[Observation]:
        observed = []
        for replica, driver in self._pipeline.drivers():
            transport = driver.transport
            for peer, depth in ({} if transport is None else transport.queue_depths()).items():
                observed.append(Observation(depth, {**replica.attributes, "aegis.peer.id": peer}))
        return observed

    def _mode(self, options: CallbackOptions) -> list[Observation]:
        observed = []
        for replica, driver in self._pipeline.drivers():
            current = driver.core.mode
            for mode in Mode:
                attributes = {**replica.attributes, "aegis.mode": mode.value}
                observed.append(Observation(int(mode is current), attributes))
        return observed

    def _heights(self, options: CallbackOptions) -> list[Observation]:
        observed = []
        for replica, driver in self._pipeline.drivers():
            for level, height in (("final", driver.core.bft.decided_height),
                                  ("provisional", driver.core.raft.last_height)):  # fmt: skip
                attributes = {**replica.attributes, "aegis.finality": level}
                observed.append(Observation(height, attributes))
        return observed

    def _stats(self, options: CallbackOptions) -> list[Observation]:
        observed = []
        for replica, driver in self._pipeline.drivers():
            stats = driver.stats
            for name in ("requests_submitted", "messages_stepped", "blocks_decided",
                         "blocks_provisional", "wal_batches", "wal_records", "wal_snapshots",
                         "rounds"):  # fmt: skip
                attributes = {**replica.attributes, "aegis.stat": name}
                observed.append(Observation(getattr(stats, name), attributes))
        return observed

    def _traffic(self, options: CallbackOptions) -> list[Observation]:
        observed = []
        for replica, driver in self._pipeline.drivers():
            transport = driver.transport
            for peer, outbound in ({} if transport is None else transport.peers).items():
                stats = outbound.stats
                for outcome, value in (("sent", stats.messages_sent),
                                       ("dropped", stats.messages_dropped),
                                       ("received", stats.messages_received),
                                       ("rejected", stats.messages_rejected)):  # fmt: skip
                    attributes = {**replica.attributes, "aegis.peer.id": peer,
                                  "aegis.outcome": outcome}  # fmt: skip
                    observed.append(Observation(value, attributes))
        return observed


# ------------------------------------------------------------------ the process's pipeline

_lock = threading.Lock()
_installed: Pipeline | None = None
_replicas: weakref.WeakKeyDictionary[Driver, ReplicaTelemetry] = weakref.WeakKeyDictionary()


def install(
    settings: Settings,
    *,
    resource: Mapping[str, str] | None = None,
    span_exporters: Sequence[SpanExporter] = (),
    metric_readers: Sequence[MetricReader] = (),
    console_out: TextIO | None = None,
) -> Pipeline:
    """Make ``settings`` the process's telemetry (shutting down the previous one).

    Install before building replicas: a replica keeps the pipeline it started with.
    ``span_exporters`` and ``metric_readers`` are added to those the settings choose (for
    tests: in-memory ones); with exporter "none" they get nothing either.  Console output
    goes to ``console_out`` if given, else to the ``aegis.telemetry`` logger (INFO)."""
    global _installed
    pipeline = Pipeline(
        settings,
        resource=resource,
        span_exporters=span_exporters,
        metric_readers=metric_readers,
        console_out=console_out,
    )
    with _lock:
        previous, _installed = _installed, pipeline
    if previous is not None:
        previous.shutdown()
    if settings.enabled:
        log.info("telemetry: %s exporter, metrics every %d ms", settings.exporter,
                 settings.metrics_interval_ms)  # fmt: skip
    return pipeline


def uninstall() -> None:
    """Shut the process's telemetry down (exporting what is pending); the next replica
    to ask installs it again from its settings."""
    global _installed
    with _lock:
        previous, _installed = _installed, None
    if previous is not None:
        previous.shutdown()


atexit.register(uninstall)  # flushes the last spans and metrics at a clean exit


def for_driver(driver: Driver) -> ReplicaTelemetry:
    """The telemetry of ``driver``'s replica (the same object for the driver's hooks and
    its client service), installing the process's pipeline from the replica's config and
    the environment if none is installed yet."""
    with _lock:
        known = _replicas.get(driver)
        pipeline = _installed
    if known is not None and (pipeline is None or known.pipeline is pipeline):
        return known
    if pipeline is None:
        config = driver.config
        pipeline = install(settings_of(config), resource={"service.namespace": config.cluster})
    telemetry = ReplicaTelemetry(pipeline, driver)
    with _lock:
        _replicas[driver] = telemetry
    return telemetry


# ------------------------------------------------------------------ one replica


def block_span_context(digest: bytes) -> SpanContext:
    """The span every replica's block span hangs under: the block itself, by its digest."""
    assert len(digest) >= 24, digest
    return SpanContext(
        trace_id=int.from_bytes(digest[:16], "big") or 1,
        span_id=int.from_bytes(digest[16:24], "big") or 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )


class ServerCall:
    """One client API call's SERVER span; ``NO_CALL`` (no span) when telemetry is off."""

    __slots__ = ("code", "method", "span", "started_ns", "telemetry")

    def __init__(self, telemetry: ReplicaTelemetry | None, span: Span | None, method: str) -> None:
        self.telemetry = telemetry
        self.span = span
        self.method = method
        self.started_ns = time.monotonic_ns()
        self.code = grpc.StatusCode.OK

    def request(self, request: Request, level: Finality) -> None:
        if self.span is not None:
            self.span.set_attributes({
                "aegis.client.id": request.client_id,
                "aegis.request.number": request.request_number,
                "aegis.request.transfers": request.events,
                "aegis.request.operation": request.operation,
                "aegis.finality.wanted": level.name,
            })  # fmt: skip

    def event(self, name: str, attributes: Attributes = None) -> None:
        if self.span is not None:
            self.span.add_event(name, attributes)

    def refused(self, code: grpc.StatusCode, details: str) -> None:
        """The call ends with ``code``: the server's fault or the caller's (see
        ``SERVER_FAULTS``), the details either way as an event."""
        self.code = code
        if self.span is not None:
            self.span.add_event("refused", {"rpc.grpc.status_code": code.value[0],
                                            "details": details})  # fmt: skip
            if code in SERVER_FAULTS:
                self.span.set_status(Status(StatusCode.ERROR, f"{code.name}: {details}"))

    def end(self, failure: BaseException | None) -> None:
        span, telemetry = self.span, self.telemetry
        if span is None or telemetry is None:
            return
        if isinstance(failure, asyncio.CancelledError):
            self.code = grpc.StatusCode.CANCELLED  # the caller went away
        elif failure is not None:  # our bug: the call ends with UNKNOWN
            self.code = grpc.StatusCode.UNKNOWN
            span.record_exception(failure)
            span.set_status(Status(StatusCode.ERROR, repr(failure)))
        span.set_attribute("rpc.grpc.status_code", self.code.value[0])
        span.end()
        attributes = {**telemetry.attributes, "rpc.method": self.method,
                      "rpc.grpc.status_code": self.code.value[0]}  # fmt: skip
        elapsed_s = (time.monotonic_ns() - self.started_ns) / 1e9
        telemetry.pipeline.instruments.call_duration.record(elapsed_s, attributes)


NO_CALL: Final = ServerCall(None, None, "")


@dataclass(slots=True, eq=False)
class Tracked:
    """A create call waiting at this replica: when it was submitted, what it reached."""

    key: tuple[int, int]
    call: ServerCall
    submitted_ns: int
    registered: bool = False
    provisional: bool = False
    final: bool = False


class ReplicaTelemetry:
    """What one replica's service and driver report; every method is a no-op when off.

    ``replied``, ``decided``, ``committed``, ``round_finished`` run on the event loop;
    ``wal_appended`` in the WAL's thread (it only records a histogram)."""

    def __init__(self, pipeline: Pipeline, driver: Driver) -> None:
        self.pipeline = pipeline
        self.instruments = pipeline.instruments
        self.replica_id = driver.config.replica_id
        self.attributes: dict[str, AttributeValue] = {"aegis.replica.id": self.replica_id}
        self.driver = weakref.ref(driver)
        self._tracked: dict[tuple[int, int], list[Tracked]] = {}
        self._tracked_count = 0
        self._regency = driver.core.bft.regency
        self._mode = driver.core.mode
        self._phases = {
            phase: {**self.attributes, "aegis.phase": phase}
            for phase in ("submit_to_provisional", "submit_to_final", "step", "persist")
        }
        pipeline.add(self)

    @property
    def enabled(self) -> bool:
        return self.pipeline.enabled

    # ---------------------------------------------------------------- client calls

    def server_call(
        self, service: str, method: str, metadata: Iterable[tuple[str, str | bytes]] | None
    ) -> ServerCall:
        """Start the SERVER span of a call, continuing the caller's ``traceparent``."""
        if not self.enabled:
            return NO_CALL
        carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
        span = self.pipeline.tracer.start_span(
            f"{service}/{method}",
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": service,
                "rpc.method": method,
                **self.attributes,
            },
        )
        return ServerCall(self, span, method)

    def submitted(self, call: ServerCall, request: Request) -> Tracked | None:
        """``request`` went to the driver; its answers are timed from now."""
        if call.span is None or not self.enabled:
            return None
        tracked = Tracked(request.key, call, time.monotonic_ns())
        driver = self.driver()
        if driver is not None:
            depths = {
                "aegis.driver.inbound.depth": driver.inbound.qsize(),
                "aegis.requests.pending": len(driver.core.bft.pending),
            }
            call.event("submitted", depths)
        if self._tracked_count < TRACKED_MAX:
            self._tracked.setdefault(tracked.key, []).append(tracked)
            self._tracked_count += 1
            tracked.registered = True
        return tracked

    def answered(self, tracked: Tracked | None, reply: Reply) -> None:
        """The call's answer: recorded unless the driver's ``replied`` already did."""
        if tracked is not None:
            self._reached(tracked, reply)

    def forget(self, tracked: Tracked | None) -> None:
        if tracked is None or not tracked.registered:
            return
        tracked.registered = False
        waiting = self._tracked.get(tracked.key, [])
        waiting.remove(tracked)
        self._tracked_count -= 1
        if not waiting:
            self._tracked.pop(tracked.key, None)
        assert self._tracked_count >= 0

    # ---------------------------------------------------------------- driver hooks

    def replied(self, reply: Reply) -> None:
        """The driver released ``reply``: every call here waiting on its request reached
        its level (PROVISIONAL answers come in fallback mode only)."""
        if not self._tracked:
            return
        for tracked in self._tracked.get((reply.client_id, reply.request_number), ()):
            self._reached(tracked, reply)

    def _reached(self, tracked: Tracked, reply: Reply) -> None:
        if reply.level >= Finality.FINAL:
            if tracked.final:
                return
            tracked.final = True
            phase, event = "submit_to_final", "final"
        else:
            if tracked.provisional or tracked.final:
                return
            tracked.provisional = True
            phase, event = "submit_to_provisional", "provisional"
        elapsed_s = (time.monotonic_ns() - tracked.submitted_ns) / 1e9
        self.instruments.commit_latency.record(elapsed_s, self._phases[phase])
        span = tracked.call.span
        if span is None:
            return
        header = reply.header
        attributes: dict[str, AttributeValue] = {
            "aegis.block.height": header.height,
            "aegis.block.digest": header.digest.hex(),
            "aegis.finality": reply.level.name,
        }
        span.add_event(event, attributes)
        span.set_attributes(attributes)
        span.add_link(block_span_context(header.digest), {"aegis.link": "block"})

    def decided(self, decided: DecidedBlock) -> None:
        """A FINAL block: its sizes and delay, and this replica's span in its trace."""
        if self.enabled:
            self._block(decided.block, "aegis.block.decide", Finality.FINAL)

    def committed(self, blocks: Sequence[Block]) -> None:
        """Blocks committed PROVISIONAL by a fallback majority."""
        if not self.enabled or not blocks:
            return
        self.instruments.provisional_blocks.add(len(blocks), self.attributes)
        for block in blocks:
            self._block(block, "aegis.block.commit", Finality.PROVISIONAL)

    def _block(self, block: Block, name: str, level: Finality) -> None:
        header = block.header
        now_ns = time.time_ns()
        stamped_ns = min(header.timestamp, now_ns)  # the leader's clock may run ahead
        instruments = self.instruments
        if level is Finality.FINAL:
            instruments.decide_delay.record((now_ns - stamped_ns) / 1e9, self.attributes)
            instruments.block_requests.record(len(block.requests), self.attributes)
            instruments.block_transfers.record(block.events, self.attributes)
            for request in block.requests:
                instruments.request_transfers.record(request.events, self.attributes)
        links = [
            Link(t.call.span.get_span_context(), {"aegis.link": "request"})
            for request in block.requests
            for t in self._tracked.get(request.key, ())
            if t.call.span is not None
        ][:LINKS_MAX]
        driver = self.driver()
        attributes: dict[str, AttributeValue] = {
            **self.attributes,
            "aegis.block.height": header.height,
            "aegis.block.digest": header.digest.hex(),
            "aegis.block.requests": len(block.requests),
            "aegis.block.transfers": block.events,
            "aegis.block.fallback_term": header.fallback_term,
            "aegis.finality": level.name,
            "aegis.request.keys": [f"{r.client_id}:{r.request_number}"
                                   for r in block.requests[:KEYS_MAX]],
        }  # fmt: skip
        if driver is not None:
            attributes["aegis.mode"] = driver.core.mode.value
            attributes["aegis.regency"] = driver.core.bft.regency
        parent = trace.set_span_in_context(NonRecordingSpan(block_span_context(header.digest)))
        span = self.pipeline.tracer.start_span(
            name, context=parent, attributes=attributes, links=links, start_time=stamped_ns
        )
        span.end(end_time=now_ns)

    def wal_appended(self, duration_s: float, records: int) -> None:
        """One WAL batch (``WriteAheadLog.append``: writev + fdatasync) took ``duration_s``."""
        if self.enabled:
            self.instruments.wal_append.record(duration_s, self.attributes)
            self.instruments.wal_records.record(records, self.attributes)

    def round_finished(self, inputs: int, step_s: float, persist_s: float) -> None:
        """A driver round: ``inputs`` stepped in ``step_s``, then persisted and released
        in ``persist_s``; counts regency and mode changes since the last round."""
        if not self.enabled:
            return
        instruments = self.instruments
        if inputs:
            instruments.round_inputs.record(inputs, self.attributes)
            instruments.round_duration.record(step_s, self._phases["step"])
            instruments.round_duration.record(persist_s, self._phases["persist"])
        driver = self.driver()
        if driver is None:
            return
        core = driver.core
        if core.bft.regency != self._regency:
            self._regency = core.bft.regency
            instruments.regency_changes.add(1, self.attributes)
        if core.mode is not self._mode:
            self._mode = core.mode
            instruments.mode_changes.add(1, {**self.attributes, "aegis.mode": core.mode.value})
