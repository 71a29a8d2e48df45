"""The lab's CA, pure: a new one each time, whose certificates verify for their names only, against
it only, while valid; its key private on disk. (Verified with cryptography's X.509 path
validation, the way a TLS client checks a server; the lab's tests check smtpd and swaks.)"""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from mailsite.lab.ca import LabCA

NAME = "mx1.example.org"


def verifies(ca: LabCA, certificate: bytes, name: str) -> bool:
    verifier = PolicyBuilder().store(Store([ca.certificate])).build_server_verifier(x509.DNSName(name))
    try:
        verifier.verify(x509.load_pem_x509_certificate(certificate), [])
    except VerificationError:
        return False
    return True


def test_a_certificate_verifies_for_its_mx_name_against_its_own_ca_only():
    ca, earlier = LabCA.new("example"), LabCA.new("example")
    issued = ca.issue([NAME])
    assert verifies(ca, issued.certificate, NAME)
    assert not verifies(ca, issued.certificate, "mx2.example.org")
    assert not verifies(earlier, issued.certificate, NAME), "a certificate of one up verified against another up's CA"
    assert ca.certificate.subject != earlier.certificate.subject and ca.pem != earlier.pem


def test_an_expired_certificate_does_not_verify():
    ca = LabCA.new("example")
    lapsed = ca.issue([NAME], not_after=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1))
    assert not verifies(ca, lapsed.certificate, NAME)


def test_ca_key_is_saved_private_and_never_over_an_earlier_ca(tmp_path):
    ca = LabCA.new("example")
    certificate = ca.save(tmp_path / "ca")
    assert certificate.read_bytes() == ca.pem
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ca").stat().st_mode & 0o777 == 0o700
    again = LabCA.load(tmp_path / "ca")
    assert verifies(ca, again.issue([NAME]).certificate, NAME)
    with pytest.raises(FileExistsError):
        LabCA.new("example").save(tmp_path / "ca")
