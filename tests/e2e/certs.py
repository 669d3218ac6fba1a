"""Test certificates: a CA, a server certificate for 127.0.0.1 / localhost, and client
certificates (mTLS) with a chosen subject, all signed by that CA (with the `cryptography`
package). The CA's key is kept next to its certificate so client certificates can be made
later."""

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_PEM = serialization.Encoding.PEM


def _validity(builder):
    now = datetime.datetime.now(datetime.timezone.utc)
    return (builder.not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)))


def _write_key(path: Path, key):
    path.write_bytes(key.private_bytes(_PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def make_certs(d: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost it signed, in `d`:
    (ca.pem, server.pem, server.key). The CA key is `d / "ca.key"`."""
    d = Path(d)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "strata test CA")])
    ca = (_validity(x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
                    .public_key(ca_key.public_key()).serial_number(x509.random_serial_number()))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_validity(x509.CertificateBuilder()
                      .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
                      .issuer_name(ca_name).public_key(key.public_key())
                      .serial_number(x509.random_serial_number()))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    d.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = d / "ca.pem", d / "server.pem", d / "server.key"
    ca_path.write_bytes(ca.public_bytes(_PEM))
    _write_key(d / "ca.key", ca_key)
    cert_path.write_bytes(cert.public_bytes(_PEM))
    _write_key(key_path, key)
    return ca_path, cert_path, key_path


def make_client_cert(ca_dir: Path, name: str, cn: str, ou: str | None = None,
                     o: str | None = None) -> tuple[Path, Path, str]:
    """A client certificate (`clientAuth`) signed by the CA `make_certs` left in `ca_dir`,
    subject `O=o, OU=ou, CN=cn` (encoding order): (name.pem, name.key, the subject as Kafka
    prints it, RFC 2253 — `CN=cn,OU=ou,O=o`)."""
    ca_dir = Path(ca_dir)
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    attrs = []
    if o is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, o))
    if ou is not None:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    subject = x509.Name(attrs)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_validity(x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject)
                      .public_key(key.public_key()).serial_number(x509.random_serial_number()))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = ca_dir / f"{name}.pem", ca_dir / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(_PEM))
    _write_key(key_path, key)
    return cert_path, key_path, subject.rfc4514_string()


def make_crl(ca_dir: Path, revoked: list[Path], name: str = "crl.pem") -> Path:
    """A CRL signed by the CA `make_certs` left in `ca_dir`, revoking the certificates in the PEM
    files `revoked`; written to `ca_dir / name` (replacing it atomically)."""
    ca_dir = Path(ca_dir)
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
               .last_update(now - datetime.timedelta(minutes=1))
               .next_update(now + datetime.timedelta(days=1))
               # RFC 5280 requires a CRL number (webpki refuses a CRL without one).
               .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    for path in revoked:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
            .revocation_date(now - datetime.timedelta(minutes=1)).build())
    crl = builder.sign(ca_key, hashes.SHA256())
    out = ca_dir / name
    tmp = ca_dir / f".{name}.tmp"
    tmp.write_bytes(crl.public_bytes(_PEM))
    tmp.replace(out)
    return out
