"""The local stack's TLS material when `stack.security` is tls: a CA, one server certificate for loopback,
and a generated password for the Kafka SCRAM user and for the store's user.

Everything lives in `<state_dir>/stack/tls` (directory 0700, files 0600) and is made once: the broker's
SCRAM credential and the store's user are created with these passwords when their storage is first
formatted, so a new password would lock streamd out of its own data.  Deleting the stack directory as a
whole is the way to start over.  Only the CA certificate leaves this directory's secrets behind: its key is
discarded as soon as the server certificate is signed, so nothing else can ever be signed by it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import shutil
from pathlib import Path

from streamd.credentials import StackCredentials

VALID_DAYS = 3650  # a laptop's stack; a certificate that expires mid-project helps nobody


def ensure(directory: Path) -> StackCredentials:
    """The TLS material in `directory`, made now if it is not there yet.

    Made in a sibling directory and renamed into place, so a reader (or a second `stack up`) never sees
    half of it: whoever renames first wins and the other's copy is dropped.
    """
    credentials = StackCredentials(directory)
    if credentials.exists():
        return credentials
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f"{directory.name}.{os.getpid()}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700)
    _generate(StackCredentials(staging))
    try:
        staging.rename(directory)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)  # another process made it first
        if not credentials.exists():
            raise
    return credentials


def _generate(into: StackCredentials) -> None:
    # Imported here: only a tls-mode stack needs it, and it takes a while to import.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    # P-256: Kafka's PEM keystore, Go's TLS (FerretDB), mongod and OpenSSL all take it, and it signs fast.
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streamd local stack CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    names = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # librdkafka, pymongo and Kafka's inter-broker client all check the address against these names.
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        # clientAuth too: the broker is its own client on the inter-broker listener.
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    # PKCS#8 unencrypted: Kafka's PEM keystore reads that form without a ssl.key.password.
    key_pem = server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem = server_cert.public_bytes(serialization.Encoding.PEM)
    _write_private(into.ca_file, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(into.cert_file, cert_pem)
    _write_private(into.key_file, key_pem)
    _write_private(into.key_and_cert_file, key_pem + cert_pem)
    # token_urlsafe: letters, digits, - and _ only, so the password needs no quoting in Kafka's JAAS line or
    # in the storage tool's --add-scram argument.
    _write_private(into.kafka_password_file, (secrets.token_urlsafe(24) + "\n").encode())
    _write_private(into.store_password_file, (secrets.token_urlsafe(24) + "\n").encode())


def _write_private(path: Path, content: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)


def write_private_text(path: Path, text: str) -> None:
    """Replace `path` with `text`, readable by its owner only (a server's settings that carry a password)."""
    partial = path.with_name(path.name + ".partial")
    partial.unlink(missing_ok=True)
    _write_private(partial, text.encode("utf-8"))
    partial.replace(path)
