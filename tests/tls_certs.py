"""Throwaway certificate authorities and certificates for TLS tests, made with the
`openssl` binary (as tests/test_http.py does; CI installs it), so the tests need
no extra Python package.

Leaf certificates are valid by default for IP 127.0.0.1 and DNS localhost, and
always for both server and client authentication: in fleet each side both serves
and dials.
"""
import dataclasses
import os
import secrets
import subprocess

# P-256 keys: generated in milliseconds, accepted by OpenSSL, BoringSSL (gRPC) and ssl.
_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_LEAF_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = {sans}
"""
LOCAL = "IP:127.0.0.1, DNS:localhost"


@dataclasses.dataclass(frozen=True)
class Pem:
    """Paths of a certificate and its private key."""
    cert: str
    key: str


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_ca(directory, name: str) -> Pem:
    """A self-signed CA named `name`, valid for a day, written under directory."""
    cert, key = (os.path.join(str(directory), f"{name}.{ext}") for ext in ("pem", "key"))
    _openssl("req", "-x509", *_EC_KEY, "-days", "1", "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             "-keyout", key, "-out", cert)
    return Pem(cert, key)


def issue(directory, ca: Pem, name: str, sans: str = LOCAL) -> Pem:
    """A leaf certificate `name` signed by ca, for `sans` (127.0.0.1 and localhost)."""
    base = os.path.join(str(directory), name)
    extensions = base + ".ext"
    with open(extensions, "w", encoding="ascii") as handle:
        handle.write(_LEAF_EXTENSIONS.format(sans=sans))
    _openssl("req", "-new", *_EC_KEY, "-subj", f"/CN={name}",
             "-keyout", base + ".key", "-out", base + ".csr")
    # A random serial: no .srl file beside the CA, no clash between issues.
    _openssl("x509", "-req", "-in", base + ".csr", "-CA", ca.cert, "-CAkey", ca.key,
             "-set_serial", str(secrets.randbits(63)), "-days", "1", "-sha256",
             "-extfile", extensions, "-out", base + ".pem")
    return Pem(base + ".pem", base + ".key")
