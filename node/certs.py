"""The cluster's X.509 material: one CA, a TLS certificate per replica and per client.

Guarantees:

* Every certificate names exactly one identity, written twice: the common name
  (``replica-3``, ``client-0``) and a URI SAN ``urn:aegis:<cluster>:<kind>:<id>``
  that also binds the cluster's name.  ``identity_of`` reads it back and refuses
  a certificate whose two names disagree or that names none.
* A replica's certificate also carries the DNS SAN ``replica-<id>``: peers and
  clients dial with that name as the TLS target, so the TLS handshake itself
  proves the server is the replica they meant.
* Keys are ECDSA P-256 (every TLS 1.3 stack speaks it); private keys are written
  0600 by ``node.config``.  The CA's validity is ten years, a leaf's two.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Kind = Literal["replica", "client"]
CA_DAYS: Final = 3650
LEAF_DAYS: Final = 730
_URI = re.compile(r"urn:aegis:([a-z0-9][a-z0-9-]{0,62}):(replica|client):(0|[1-9][0-9]{0,5})")
_COMMON_NAME = re.compile(r"(replica|client)-(0|[1-9][0-9]{0,5})")
CLUSTER_NAME: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


class CertificateError(ValueError):
    """A certificate that names no Aegis identity, or names it inconsistently."""


@dataclass(frozen=True, slots=True)
class Identity:
    cluster: str
    kind: Kind
    id: int

    def __str__(self) -> str:
        return f"{self.kind} {self.id} of cluster {self.cluster}"


@dataclass(frozen=True, slots=True)
class Issued:
    certificate_pem: bytes
    key_pem: bytes  # PKCS#8, unencrypted: the file's mode protects it


def server_name(replica_id: int) -> str:
    """The TLS name a replica's certificate carries and its dialers expect."""
    return f"replica-{replica_id}"


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(cluster: str, now: datetime.datetime) -> Issued:
    """A self-signed CA for ``cluster``; it signs leaves only (path length 0)."""
    if not CLUSTER_NAME.fullmatch(cluster):
        raise CertificateError(f"cluster name {cluster!r} must match {CLUSTER_NAME.pattern}")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"aegis {cluster} CA")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(
    ca: Issued, identity: Identity, now: datetime.datetime, hosts: tuple[str, ...] = ()
) -> Issued:
    """A leaf certificate for ``identity`` signed by ``ca``.

    ``hosts`` (replicas only) are extra DNS names or IP addresses to list; the
    ``replica-<id>`` name is always there."""
    if not CLUSTER_NAME.fullmatch(identity.cluster) or identity.id < 0:
        raise CertificateError(f"not a valid identity: {identity}")
    ca_certificate = x509.load_pem_x509_certificate(ca.certificate_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = f"{identity.kind}-{identity.id}"
    names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(
            f"urn:aegis:{identity.cluster}:{common_name.replace('-', ':')}"
        )
    ]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if identity.kind == "replica":
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        names.append(x509.DNSName(server_name(identity.id)))
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def identity_of(certificate_pem: bytes) -> Identity:
    """The identity a (chain-verified) certificate names; ``CertificateError`` if none."""
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError as error:
        raise CertificateError(f"unreadable certificate: {error}") from None
    common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(common_names) != 1 or not isinstance(common_names[0].value, str):
        raise CertificateError("the certificate must have exactly one common name")
    common = _COMMON_NAME.fullmatch(common_names[0].value)
    if common is None:
        raise CertificateError(f"common name {common_names[0].value!r} names no Aegis identity")
    try:
        alternative = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise CertificateError("the certificate has no subject alternative names") from None
    uris = [u for u in alternative.value.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith("urn:aegis:")]  # fmt: skip
    if len(uris) != 1 or (uri := _URI.fullmatch(uris[0])) is None:
        raise CertificateError("the certificate must carry one urn:aegis: identity")
    if (uri.group(2), uri.group(3)) != (common.group(1), common.group(2)):
        raise CertificateError(
            f"common name {common.group(0)} and {uris[0]} name different identities"
        )
    kind: Kind = "replica" if uri.group(2) == "replica" else "client"
    return Identity(cluster=uri.group(1), kind=kind, id=int(uri.group(3)))
