"""Replica and client configuration: one TOML file each, checked completely on load.

Guarantees:

* ``load_node_config`` / ``load_client_config`` return a fully validated,
  immutable value or raise ``ConfigError`` naming the file, the key and the
  problem; unknown keys are errors too (a misspelt timeout must not be ignored).
  Relative paths are resolved against the file's directory.
* ``init_cluster`` writes everything a local cluster needs: a CA, per replica a
  TLS certificate naming it, an Ed25519 signing key and a config; per client the
  same.  Private keys are created 0600 (never briefly wider), the directory 0700.
  It refuses to overwrite an existing cluster.
* Every replica's config lists every replica's address and signing public key
  and every client's signing public key, so a replica needs nothing else.

Layout written by ``init_cluster(DIR, replicas=n)``::

    DIR/ca.crt ca.key
    DIR/replica-<i>/{node.toml, tls.crt, tls.key, signing.key, data/}
    DIR/client-<c>/{client.toml, tls.crt, tls.key, signing.key}
"""

from __future__ import annotations

import datetime
import os
import socket
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from consensus.crypto import Ed25519Signer
from consensus.quorum import faults_tolerated
from node import certs

REPLICAS_MAX: Final = 1000
CLIENTS_MAX: Final = 1000
TICK_MS_MIN: Final = 1
TICK_MS_MAX: Final = 1000


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Peer:
    id: int
    address: str  # host:port
    public_key: bytes  # Ed25519, 32 bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientKey:
    id: int
    public_key: bytes
    operator: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Tuning:
    """Timeouts (ticks) and bounds; the defaults suit a loopback cluster."""

    request_timeout_ticks: int = 200
    regency_timeout_ticks: int = 200
    # Links are TCP streams: a message is lost only with its stream.  The first
    # retransmission waits longer than a loaded follower takes to execute a block and
    # WRITE (up to about 300 ms in the benchmark), so a whole block is not sent again
    # meanwhile.
    retransmit_ticks: int = 50
    retransmit_ticks_max: int = 200
    checkpoint_interval: int = 16
    fallback: bool = True
    fallback_after_ticks: int = 300
    inbound_frames_max: int = 256  # frames queued for the driver, all peers together
    outbound_messages_max: int = 8192  # per peer, dropped beyond (links are lossy anyway)
    frame_messages_max: int = 1024
    frame_bytes_max: int = 4 * 1024 * 1024  # soft: one larger message still travels alone
    client_wait_ms_max: int = 30_000  # a CreateTransfers call waits at most this long
    # A read asking for FINAL state up to a height (read-your-writes) waits at most this
    # long for this replica to get there, then is refused UNAVAILABLE: another replica
    # may be further.
    read_wait_ms_max: int = 2_000
    wal_snapshot_checkpoints: int = 1  # a WAL snapshot every this many stable checkpoints
    # A checkpoint snapshot larger than this goes to a lagging replica in chunks of it;
    # equal on every replica (a receiver refuses chunks shorter than its own size).
    snapshot_chunk_bytes: int = 4 * 1024 * 1024
    # A log damaged before its tail (acknowledged records unreadable or missing with later
    # ones after them) is cut back to its longest valid prefix, the rest set aside, and the
    # replica starts fenced (node.driver.Fence); false: it refuses to start instead.  A
    # damaged tail is always truncated (and fenced unless it is a mere cut).
    wal_repair: bool = True


_TUNING_KEYS: Final = frozenset(Tuning.__dataclass_fields__)
# Frames must stay well inside gRPC's message bound (node.transport), and a receiver
# refuses frames with more messages than its own frame_messages_max: keep these equal
# on every replica.
_TUNING_MIN: Final = {"snapshot_chunk_bytes": 4096}  # a transfer in 1-byte chunks never ends
_TUNING_MAX: Final = {
    "frame_bytes_max": 16 * 1024 * 1024,
    "frame_messages_max": 4096,
    "snapshot_chunk_bytes": 32 * 1024 * 1024,  # a chunk and its envelope within the wire bound
}


TELEMETRY_EXPORTERS: Final = ("auto", "console", "otlp", "none")


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryConfig:
    """``[telemetry]``: where the replica's traces and metrics go (``node.telemetry``).

    ``exporter``: "auto" (OTLP if ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, else console),
    "console" (the replica's log), "otlp" (gRPC to ``endpoint``) or "none" (off).  The
    environment variable ``AEGIS_TELEMETRY`` overrides it."""

    exporter: str = "auto"
    endpoint: str = ""  # OTLP collector, e.g. "http://127.0.0.1:4317"; "": the OTLP default
    metrics_interval_ms: int = 15_000


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    ca_cert: bytes
    cert: bytes
    key: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    path: Path
    cluster: str
    replica_id: int
    replicas: tuple[Peer, ...]  # by id, this replica included
    clients: tuple[ClientKey, ...]
    genesis_ns: int
    tick_ms: int
    listen: str
    data_dir: Path
    signing_key: Ed25519PrivateKey
    tls: TlsFiles
    tuning: Tuning
    telemetry: TelemetryConfig = TelemetryConfig()

    @property
    def n(self) -> int:
        return len(self.replicas)

    def signer(self) -> Ed25519Signer:
        return Ed25519Signer(self.signing_key)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    path: Path
    cluster: str
    client_id: int
    replicas: tuple[Peer, ...]
    signing_key: Ed25519PrivateKey
    tls: TlsFiles


# ------------------------------------------------------------------ reading


class _Table:
    """Typed access to one TOML table; every problem names file and key."""

    def __init__(self, file: Path, prefix: str, data: Mapping[str, object]) -> None:
        self.file = file
        self.prefix = prefix
        self.data = data
        self.used: set[str] = set()

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.file}: {self.prefix}{key}: {problem}")

    def _get(self, key: str, kind: type, default: object = None) -> object:
        self.used.add(key)
        if key not in self.data:
            if default is None:
                raise self.error(key, "missing")
            return default
        value = self.data[key]
        if type(value) is not kind:
            raise self.error(key, f"must be a {kind.__name__}, not {type(value).__name__}")
        return value

    def text(self, key: str, default: str | None = None) -> str:
        value = self._get(key, str, default)
        assert isinstance(value, str)
        return value

    def integer(self, key: str, low: int, high: int, default: int | None = None) -> int:
        value = self._get(key, int, default)
        assert isinstance(value, int)
        if not low <= value <= high:
            raise self.error(key, f"must be in {low}..{high}, got {value}")
        return value

    def flag(self, key: str, default: bool | None = None) -> bool:
        value = self._get(key, bool, default)
        assert isinstance(value, bool)
        return value

    def table(self, key: str) -> _Table:
        value = self._get(key, dict)
        assert isinstance(value, dict)
        return _Table(self.file, f"{self.prefix}{key}.", value)

    def tables(self, key: str) -> list[_Table]:
        value = self._get(key, list)
        assert isinstance(value, list)
        tables = []
        for index, item in enumerate(value):
            if type(item) is not dict:
                raise self.error(f"{key}[{index}]", "must be a table")
            tables.append(_Table(self.file, f"{self.prefix}{key}[{index}].", item))
        return tables

    def path(self, key: str) -> Path:
        return (self.file.parent / self.text(key)).resolve()

    def address(self, key: str) -> str:
        value = self.text(key)
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise self.error(key, f"must be host:port, got {value!r}")
        return value

    def public_key(self, key: str) -> bytes:
        value = self.text(key)
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise self.error(key, "must be 64 hex digits (an Ed25519 public key)")
        return raw

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def _read_toml(path: Path) -> _Table:
    try:
        with path.open("rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return _Table(path.resolve(), "", data)


def _read_file(table: _Table, key: str) -> bytes:
    path = table.path(key)
    try:
        return path.read_bytes()
    except OSError as error:
        raise table.error(key, f"cannot read {path}: {error.strerror}") from None


def _signing_key(table: _Table, key: str) -> Ed25519PrivateKey:
    data = _read_file(table, key)
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except ValueError as error:
        raise table.error(key, f"not a PEM private key: {error}") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise table.error(key, "must be an Ed25519 private key")
    return loaded


def _tls(table: _Table, ca: _Table) -> TlsFiles:
    files = TlsFiles(
        ca_cert=_read_file(ca, "ca_cert"),
        cert=_read_file(table, "tls_cert"),
        key=_read_file(table, "tls_key"),
    )
    for key, data in (("tls_cert", files.cert), ("tls_key", files.key)):
        if b"-----BEGIN " not in data:
            raise table.error(key, "not a PEM file")
    return files


def _replicas(top: _Table, count: int) -> tuple[Peer, ...]:
    peers = []
    for table in top.tables("replicas"):
        peers.append(
            Peer(
                id=table.integer("id", 0, REPLICAS_MAX - 1),
                address=table.address("address"),
                public_key=table.public_key("public_key"),
            )
        )
        table.finish()
    if [p.id for p in peers] != list(range(count)):
        raise top.error("replicas", f"must list replicas 0..{count - 1} in order, once each")
    return tuple(peers)


def _checked_identity(table: _Table, cluster: str, kind: certs.Kind, number: int) -> None:
    """The TLS certificate must name the identity the config claims."""
    try:
        identity = certs.identity_of(_read_file(table, "tls_cert"))
    except certs.CertificateError as error:
        raise table.error("tls_cert", str(error)) from None
    expected = certs.Identity(cluster=cluster, kind=kind, id=number)
    if identity != expected:
        raise table.error("tls_cert", f"names {identity}, expected {expected}")


def load_node_config(path: str | os.PathLike[str]) -> NodeConfig:
    top = _read_toml(Path(path))
    cluster = top.table("cluster")
    name = cluster.text("name")
    if not certs.CLUSTER_NAME.fullmatch(name):
        raise cluster.error("name", f"must match {certs.CLUSTER_NAME.pattern}")
    count = cluster.integer("replicas", 1, REPLICAS_MAX)
    try:
        faults_tolerated(count)
    except ValueError:
        raise cluster.error("replicas", f"must be 3f + 1 (4, 7, 10, ...), got {count}") from None
    genesis_ns = cluster.integer("genesis_ns", 1, 2**63 - 1)
    tick_ms = cluster.integer("tick_ms", TICK_MS_MIN, TICK_MS_MAX)
    node = top.table("node")
    replica_id = node.integer("id", 0, count - 1)
    _checked_identity(node, name, "replica", replica_id)
    replicas = _replicas(top, count)
    clients = []
    for table in top.tables("clients"):
        clients.append(
            ClientKey(
                id=table.integer("id", 0, 2**63 - 1),
                public_key=table.public_key("public_key"),
                operator=table.flag("operator", False),
            )
        )
        table.finish()
    if len({c.id for c in clients}) != len(clients) or len(clients) > CLIENTS_MAX:
        raise top.error("clients", f"client ids must be unique, at most {CLIENTS_MAX} clients")
    signing_key = _signing_key(node, "signing_key")
    own = replicas[replica_id].public_key
    if Ed25519Signer(signing_key).public_key_bytes() != own:
        raise node.error("signing_key", f"does not match replicas[{replica_id}].public_key")
    tuning = _tuning(top)
    config = NodeConfig(
        path=top.file,
        cluster=name,
        replica_id=replica_id,
        replicas=replicas,
        clients=tuple(clients),
        genesis_ns=genesis_ns,
        tick_ms=tick_ms,
        listen=node.address("listen"),
        data_dir=node.path("data_dir"),
        signing_key=signing_key,
        tls=_tls(node, cluster),
        tuning=tuning,
        telemetry=_telemetry(top),
    )
    for table in (cluster, node, top):
        table.finish()
    return config


def _tuning(top: _Table) -> Tuning:
    if "tuning" not in top.data:
        top.used.add("tuning")
        return Tuning()
    table = top.table("tuning")
    values: dict[str, object] = {}
    defaults = Tuning()
    for key in sorted(_TUNING_KEYS):
        default = getattr(defaults, key)
        if isinstance(default, bool):
            values[key] = table.flag(key, default)
        else:
            values[key] = table.integer(
                key, _TUNING_MIN.get(key, 1), _TUNING_MAX.get(key, 2**31), default
            )
    table.finish()
    return Tuning(**values)  # type: ignore[arg-type]  # keys and types come from Tuning


def _telemetry(top: _Table) -> TelemetryConfig:
    if "telemetry" not in top.data:
        top.used.add("telemetry")
        return TelemetryConfig()
    table = top.table("telemetry")
    defaults = TelemetryConfig()
    exporter = table.text("exporter", defaults.exporter)
    if exporter not in TELEMETRY_EXPORTERS:
        raise table.error("exporter", f"must be one of {', '.join(TELEMETRY_EXPORTERS)}")
    config = TelemetryConfig(
        exporter=exporter,
        endpoint=table.text("endpoint", defaults.endpoint),
        metrics_interval_ms=table.integer(
            "metrics_interval_ms", 100, 3_600_000, defaults.metrics_interval_ms
        ),
    )
    table.finish()
    return config


def load_client_config(path: str | os.PathLike[str]) -> ClientConfig:
    top = _read_toml(Path(path))
    cluster = top.table("cluster")
    name = cluster.text("name")
    count = cluster.integer("replicas", 1, REPLICAS_MAX)
    client = top.table("client")
    client_id = client.integer("id", 0, 2**63 - 1)
    _checked_identity(client, name, "client", client_id)
    config = ClientConfig(
        path=top.file,
        cluster=name,
        client_id=client_id,
        replicas=_replicas(top, count),
        signing_key=_signing_key(client, "signing_key"),
        tls=_tls(client, cluster),
    )
    for table in (cluster, client, top):
        table.finish()
    return config


# ------------------------------------------------------------------ writing


@contextmanager
def _private_umask() -> Iterator[None]:
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def _write(path: Path, data: bytes, private: bool) -> None:
    mode = 0o600 if private else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as file:
        os.fchmod(fd, mode)  # public files stay readable whatever the umask
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _ed25519_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports free right now on ``host`` (the kernel's choice; a race is possible)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True, slots=True)
class ClusterLayout:
    directory: Path
    node_configs: tuple[Path, ...]
    client_configs: tuple[Path, ...]


def init_cluster(
    directory: str | os.PathLike[str],
    *,
    replicas: int = 4,
    clients: int = 1,
    name: str = "local",
    host: str = "127.0.0.1",
    ports: list[int] | None = None,
    tick_ms: int = 10,
    tuning: Tuning | None = None,
    now: datetime.datetime | None = None,
) -> ClusterLayout:
    """Write a loopback cluster's keys, certificates and configs (client 0 is an operator)."""
    try:
        faults_tolerated(replicas)
    except ValueError:
        raise ConfigError(f"--replicas must be 3f + 1 (4, 7, 10, ...), got {replicas}") from None
    if not 1 <= clients <= CLIENTS_MAX:
        raise ConfigError(f"--clients must be in 1..{CLIENTS_MAX}")
    if not certs.CLUSTER_NAME.fullmatch(name):
        raise ConfigError(f"cluster name {name!r} must match {certs.CLUSTER_NAME.pattern}")
    ports = ports if ports is not None else free_ports(replicas, host)
    if len(ports) != replicas:
        raise ConfigError(f"{len(ports)} ports for {replicas} replicas")
    root = Path(directory)
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"{root} is not empty; refusing to overwrite a cluster")
    now = now or datetime.datetime.now(datetime.UTC)
    with _private_umask():
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        ca = certs.make_ca(name, now)
        _write(root / "ca.crt", ca.certificate_pem, private=False)
        _write(root / "ca.key", ca.key_pem, private=True)
        replica_keys = [Ed25519PrivateKey.generate() for _ in range(replicas)]
        client_keys = [Ed25519PrivateKey.generate() for _ in range(clients)]
        peers = [
            {
                "id": i,
                "address": f"{host}:{ports[i]}",
                "public_key": Ed25519Signer(k).public_key_bytes().hex(),
            }
            for i, k in enumerate(replica_keys)
        ]
        cluster = {
            "name": name,
            "replicas": replicas,
            "genesis_ns": int(now.timestamp()) * 10**9,
            "tick_ms": tick_ms,
            "ca_cert": "../ca.crt",
        }
        node_paths = []
        for i, key in enumerate(replica_keys):
            folder = root / f"replica-{i}"
            folder.mkdir(mode=0o700)
            (folder / "data").mkdir(mode=0o700)
            issued = certs.issue(ca, certs.Identity(name, "replica", i), now, (host,))
            _write(folder / "tls.crt", issued.certificate_pem, private=False)
            _write(folder / "tls.key", issued.key_pem, private=True)
            _write(folder / "signing.key", _ed25519_pem(key), private=True)
            document: dict[str, object] = {
                "cluster": cluster,
                "node": {
                    "id": i,
                    "listen": f"{host}:{ports[i]}",
                    "data_dir": "data",
                    "signing_key": "signing.key",
                    "tls_cert": "tls.crt",
                    "tls_key": "tls.key",
                },
                "replicas": peers,
                "clients": [
                    {
                        "id": c,
                        "public_key": Ed25519Signer(k).public_key_bytes().hex(),
                        "operator": c == 0,
                    }
                    for c, k in enumerate(client_keys)
                ],
            }
            if tuning is not None:
                document["tuning"] = {key: getattr(tuning, key) for key in sorted(_TUNING_KEYS)}
            node_paths.append(folder / "node.toml")
            _write(node_paths[-1], tomli_w.dumps(document).encode(), private=False)
        client_paths = []
        for c, key in enumerate(client_keys):
            folder = root / f"client-{c}"
            folder.mkdir(mode=0o700)
            issued = certs.issue(ca, certs.Identity(name, "client", c), now)
            _write(folder / "tls.crt", issued.certificate_pem, private=False)
            _write(folder / "tls.key", issued.key_pem, private=True)
            _write(folder / "signing.key", _ed25519_pem(key), private=True)
            client_document = {
                "cluster": {"name": name, "replicas": replicas, "ca_cert": "../ca.crt"},
                "client": {
                    "id": c,
                    "signing_key": "signing.key",
                    "tls_cert": "tls.crt",
                    "tls_key": "tls.key",
                },
                "replicas": peers,
            }
            client_paths.append(folder / "client.toml")
            _write(client_paths[-1], tomli_w.dumps(client_document).encode(), private=False)
    return ClusterLayout(root, tuple(node_paths), tuple(client_paths))
