"""Local network fixtures for the registry check tests: a throwaway CA, HTTP(S) servers in a
thread, a tiny authoritative DNS server over UDP, and the SSRF-safe client configured for them.

Loopback is reachable only through :func:`loopback_client`: ``allow_private`` (the helper's
dev/test switch) plus a policy that re-applies the built-in address rules to every address
except exactly ``127.0.0.1`` — so a redirect to a private or metadata address is still refused.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kontor.gateway.safehttp import SafeHttpClient, StaticResolver, address_refusal

LOOPBACK = ipaddress.ip_address("127.0.0.1")


@dataclass
class Tls:
    cert_file: Path
    key_file: Path
    ca_pem: bytes

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem.decode())


def make_tls(directory: Path, names: Iterable[str]) -> Tls:
    """A CA made here and a server certificate for ``names`` (DNS names, wildcards allowed)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kontor registry test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    names = list(names)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = directory / "server.pem", directory / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Tls(cert_file, key_file, ca.public_bytes(serialization.Encoding.PEM))


class ThreadServer:
    """An ASGI app served by uvicorn on 127.0.0.1 in a daemon thread."""

    def __init__(self, app: Any, *, tls: Tls | None = None, lifespan: str = "off") -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        options: dict[str, Any] = {}
        if tls is not None:
            options = {"ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file)}
        config = uvicorn.Config(app, log_level="warning", lifespan=lifespan, timeout_graceful_shutdown=1, **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        self.port = sock.getsockname()[1]
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


def only_test_loopback(host: str, address: Any) -> str | None:
    """Policy for the test client: exactly 127.0.0.1 is allowed, every other address gets the built-in rules."""
    return None if address == LOOPBACK else address_refusal(address)


def loopback_client(names: Iterable[str], *, tls: Tls | None = None, **options: Any) -> SafeHttpClient:
    """The SSRF-safe client as the tests use it: ``names`` resolve to 127.0.0.1, extra names via ``resolve``."""
    table: dict[str, Any] = {name: "127.0.0.1" for name in names}
    table.update(options.pop("resolve", {}))
    return SafeHttpClient(allow_private=True, policy=only_test_loopback, resolver=StaticResolver(table),
                          ssl_context=tls.client_context() if tls else None, **options)


# --------------------------------------------------------------------------- DNS


@dataclass
class DnsServer:
    """Answers TXT queries for ``zone`` (name → TXT strings) on 127.0.0.1 over UDP; NXDOMAIN otherwise."""

    zone: Mapping[str, list[str]]
    queries: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:  # noqa: BLE001 - garbage in, nothing out
                continue
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            question = query.question[0]
            name = question.name.to_text().rstrip(".").lower()
            self.queries.append(name)
            records = self.zone.get(name)
            if records is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.TXT and records:
                rrset = dns.rrset.from_text(question.name, 60, dns.rdataclass.IN, dns.rdatatype.TXT,
                                            *[_txt(r) for r in records])
                response.answer.append(rrset)
            self.sock.sendto(response.to_wire(), peer)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=2)
        self.sock.close()


def _txt(text: str) -> str:
    """Zone-file form of a TXT record: quoted chunks of at most 255 bytes (long keys span several)."""
    chunks = [text[i:i + 255] for i in range(0, len(text), 255)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)
