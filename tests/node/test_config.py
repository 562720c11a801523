"""``aegis cluster init`` output and the config loaders: everything checked, clear errors."""

from __future__ import annotations

import datetime
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from node import certs
from node.config import (
    ConfigError,
    Tuning,
    init_cluster,
    load_client_config,
    load_node_config,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("cluster") / "c"
    init_cluster(directory, replicas=4, clients=2, ports=[7001, 7002, 7003, 7004])
    return directory


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_keys_private_and_configs_that_load(cluster: Path) -> None:
    assert _mode(cluster) == 0o700
    private = [cluster / "ca.key"]
    for name in ("replica-0", "replica-3", "client-1"):
        private += [cluster / name / "tls.key", cluster / name / "signing.key"]
    assert all(_mode(path) == 0o600 for path in private)
    assert _mode(cluster / "ca.crt") == 0o644
    configs = [load_node_config(cluster / f"replica-{i}" / "node.toml") for i in range(4)]
    assert [c.replica_id for c in configs] == [0, 1, 2, 3]
    assert configs[2].listen == "127.0.0.1:7003"
    assert configs[2].data_dir == (cluster / "replica-2" / "data").resolve()
    assert {c.replicas for c in configs} == {configs[0].replicas}  # one view of the cluster
    assert [(c.id, c.operator) for c in configs[0].clients] == [(0, True), (1, False)]
    assert len({c.genesis_ns for c in configs}) == 1
    client = load_client_config(cluster / "client-1" / "client.toml")
    assert client.client_id == 1 and client.replicas == configs[0].replicas
    assert configs[0].tuning == Tuning()


def test_certificates_name_their_owner_and_the_cluster(cluster: Path) -> None:
    replica = certs.identity_of((cluster / "replica-3" / "tls.crt").read_bytes())
    client = certs.identity_of((cluster / "client-0" / "tls.crt").read_bytes())
    assert replica == certs.Identity("local", "replica", 3)
    assert client == certs.Identity("local", "client", 0)
    with pytest.raises(certs.CertificateError, match="common name"):
        certs.identity_of((cluster / "ca.crt").read_bytes())


def _certificate(common_name: str, uri: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def test_a_common_name_and_uri_that_disagree_are_refused() -> None:
    assert certs.identity_of(_certificate("replica-1", "urn:aegis:x:replica:1")).id == 1
    with pytest.raises(certs.CertificateError, match="name different identities"):
        certs.identity_of(_certificate("replica-1", "urn:aegis:x:client:1"))
    with pytest.raises(certs.CertificateError, match="one urn:aegis: identity"):
        certs.identity_of(_certificate("replica-1", "urn:aegis:x:replica:01"))
    with pytest.raises(certs.CertificateError, match="unreadable"):
        certs.identity_of(b"not a certificate")


def test_the_remembered_identity_is_the_certificates_own(cluster: Path) -> None:
    """peer_identity remembers each certificate's identity: a second call answers the
    same, and a refused certificate stays refused (with the same reason)."""
    from node.transport import _identity_of_pem

    replica = (cluster / "replica-2" / "tls.crt").read_bytes()
    client = (cluster / "client-0" / "tls.crt").read_bytes()
    disagreeing = _certificate("replica-1", "urn:aegis:x:client:1")
    for _ in range(2):
        assert _identity_of_pem(replica) == certs.Identity("local", "replica", 2)
        assert _identity_of_pem(client) == certs.Identity("local", "client", 0)
        refused = _identity_of_pem(disagreeing)
        assert isinstance(refused, str) and "name different identities" in refused
        assert "unreadable" in str(_identity_of_pem(b"not a certificate"))


def test_init_refuses_a_used_directory_and_a_bad_size(tmp_path: Path) -> None:
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        init_cluster(tmp_path / "used")
    with pytest.raises(ConfigError, match="3f \\+ 1"):
        init_cluster(tmp_path / "five", replicas=5)
    with pytest.raises(ConfigError, match="cluster name"):
        init_cluster(tmp_path / "name", name="Bad Name")


def _edited(cluster: Path, tmp_path: Path, old: str, new: str) -> Path:
    source = cluster / "replica-1" / "node.toml"
    text = source.read_text()
    assert old in text
    target = source.parent / f"edited-{abs(hash((old, new)))}.toml"
    target.write_text(text.replace(old, new, 1))
    return target


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "id = 1\nlisten",
            "id = 2\nlisten",
            "tls_cert: names replica 1 of cluster local, expected",
        ),
        ("tick_ms = 10", "tick_ms = 0", "cluster.tick_ms: must be in 1..1000, got 0"),
        ("tick_ms = 10", "tick_ms = '10'", "cluster.tick_ms: must be a int, not str"),
        ("tick_ms = 10", "tick_ms = 10\ntick_sm = 3", "cluster.tick_sm: unknown key"),
        ("replicas = 4", "replicas = 5", "cluster.replicas: must be 3f \\+ 1"),
        (
            'signing_key = "signing.key"',
            'signing_key = "nope.key"',
            "node.signing_key: cannot read",
        ),
        ('listen = "127.0.0.1:7002"', 'listen = "7002"', "node.listen: must be host:port"),
    ],
)
def test_config_errors_name_the_file_and_key(
    cluster: Path, tmp_path: Path, old: str, new: str, message: str
) -> None:
    path = _edited(cluster, tmp_path, old, new)
    with pytest.raises(ConfigError, match=message) as caught:
        load_node_config(path)
    assert str(path.name) in str(caught.value)


def test_a_signing_key_of_another_replica_is_refused(cluster: Path, tmp_path: Path) -> None:
    path = _edited(cluster, tmp_path, '"signing.key"', '"../replica-2/signing.key"')
    with pytest.raises(ConfigError, match=r"does not match replicas\[1\]\.public_key"):
        load_node_config(path)


def test_not_toml_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("[cluster\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_node_config(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_node_config(tmp_path / "missing.toml")


def test_cli_cluster_init(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "node.cli", "cluster", "init", "--dir", str(tmp_path / "c")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "4 replicas, 1 client(s)" in done.stdout
    assert (tmp_path / "c" / "replica-3" / "node.toml").is_file()
    again = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert again.returncode == 2 and "not empty" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("node", "start", "--config", "missing.toml"), "missing.toml: cannot read"),
        (("cluster", "up", "--dir", "."), "no replica-*/node.toml under ."),
        (("cluster", "init", "--dir", "x", "--replicas", "3"), "must be 3f + 1"),
    ],
)
def test_cli_errors_are_one_clear_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    command = [sys.executable, "-m", "node.cli", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_tuning_overrides_are_bounded(cluster: Path) -> None:
    source = cluster / "replica-1" / "node.toml"
    tuned = source.parent / "tuned.toml"
    tuned.write_text(source.read_text() + "\n[tuning]\nrequest_timeout_ticks = 50\n")
    assert load_node_config(tuned).tuning.request_timeout_ticks == 50
    tuned.write_text(source.read_text() + "\n[tuning]\nframe_bytes_max = 999999999\n")
    with pytest.raises(ConfigError, match=r"tuning\.frame_bytes_max: must be in 1\.\.16777216"):
        load_node_config(tuned)
    tuned.write_text(source.read_text() + "\n[tuning]\nfallback = 1\n")
    with pytest.raises(ConfigError, match=r"tuning\.fallback: must be a bool"):
        load_node_config(tuned)
