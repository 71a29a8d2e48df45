"""The lab's certificate authority: made afresh by every `up`, never reused, and trusted only by
the lab's own nodes (their CA bundles), so that the MXes' TLS listeners and the relaying between
them are checked as on the internet, with certificates a client verifies by name.

ECDSA P-256 throughout: a key is made in well under a millisecond, where RSA would cost the lab's
start-up tens of milliseconds a key; smtpd, swaks and OpenSSL all take it.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# As long as an ACME CA's (Let's Encrypt: 90 days): doctor's expiry warning (doctor.certificateWarnDays)
# then holds of a healthy lab as of a healthy site. A certificate the lab needs expired, or close to
# expiry, is issued with not_after.
LIFETIME = datetime.timedelta(days=90)
# Clocks of the nodes are this machine's, but a certificate valid from "now" may be refused by a
# check made in the same second: valid a little before it was made.
BACKDATE = datetime.timedelta(minutes=5)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailsite lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM, as a host's pki files hold them."""

    certificate: bytes
    key: bytes


@dataclass(frozen=True)
class LabCA:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def new(cls, label: str) -> LabCA:
        """A CA no earlier lab had: a new key, a random serial, `label` in its name (the lab's stack)."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = _name(f"mailsite lab CA {label} {os.urandom(4).hex()}")
        now = _now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, names: Sequence[str], *, not_after: datetime.datetime | None = None) -> Issued:
        """A server certificate for `names` (DNS names, the first also its common name), signed by
        this CA; `not_after` in the past makes an expired one (what a lapsed renewal leaves)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        end = not_after or now + LIFETIME
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0])).issuer_name(self.certificate.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(min(now, end) - BACKDATE).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return Issued(certificate.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def save(self, directory: Path) -> Path:
        """The CA's certificate (ca.pem, public) and key (ca.key, 0600 from its creation) in
        `directory`, which must not hold an earlier CA; returns the certificate's path."""
        directory.mkdir(mode=0o700)
        descriptor = os.open(directory / "ca.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(_key_pem(self.key))
        (directory / "ca.pem").write_bytes(self.pem)
        return directory / "ca.pem"

    @classmethod
    def load(cls, directory: Path) -> LabCA:
        """The CA a lab saved (to issue another certificate while it is up)."""
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{directory / 'ca.key'} is not the lab CA's key")
        return cls(x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes()), key)
