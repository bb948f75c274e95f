"""Review check 2: namespace ownership, proven as in the official MCP registry.

A server's name is ``<namespace>/<server>``; a domain namespace is the reverse-DNS form of a
domain the publisher controls (``com.example`` ↔ ``example.com``). The publisher proves control
by publishing a public key where only the domain's owner can, and signing a challenge with the
matching private key:

* **HTTP** — the file ``https://<domain>/.well-known/mcp-registry-auth``;
* **DNS** — a TXT record on ``<domain>`` itself.

Both hold a proof record in the official registry's format (one per line or per TXT record, so
keys can be rotated)::

    v=MCPv1; k=ed25519; p=<base64 of the 32-byte public key>
    v=MCPv1; k=ecdsap384; p=<base64 of the 49-byte compressed P-384 point>

The signed message is, as in the official registry, either

* an RFC 3339 timestamp (``2025-12-11T10:00:00Z``), accepted within ±15 s of the verifier's
  clock, or
* a challenge issued by :class:`ChallengeIssuer` (``kontor-registry-auth:v1;domain=…;nonce=…;
  issued=…;expires=…;mac=…``), bound to the domain and valid until ``expires``;

and the signature is hex-encoded (Ed25519: 64 bytes; P-384: ``r || s``, 96 bytes, over SHA-384).
A challenge (a timestamp for one domain, or an issued nonce) is accepted once: a second
proof with it is refused as a replay (:class:`ReplayGuard`).

What a proof grants follows the official rules: HTTP proves the exact namespace
(``com.example`` for ``example.com``) — a web server does not imply control of subdomains, as
with ACME HTTP-01; DNS also grants every sub-namespace (``com.example.api``).

The key lookups are pluggable (:class:`ProofVerifier`): :class:`HttpWellKnownVerifier` fetches
through the gateway's SSRF-safe client (4 KiB, no redirects, public addresses only);
:class:`DnsTxtVerifier` queries with dnspython (injectable resolver or name servers).

Finding rules (all ``high`` unless noted): ``namespace.unknown-method``, ``namespace.bad-domain``,
``namespace.mismatch``, ``namespace.challenge-malformed``,
``namespace.challenge-unsupported``, ``namespace.challenge-foreign``,
``namespace.challenge-expired``, ``namespace.challenge-replayed``,
``namespace.signature-malformed``, ``namespace.record-unreachable``, ``namespace.record-missing``,
``namespace.record-malformed`` (``low`` when another record is valid),
``namespace.signature-mismatch``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from kontor.gateway.safehttp import FetchFailed, SafeHttpClient, UnsafeUrl
from kontor.registry.checks.findings import CheckResult, Finding, finding

__all__ = [
    "CHECK_ID",
    "WELL_KNOWN_PATH",
    "Challenge",
    "ChallengeError",
    "ChallengeIssuer",
    "DnsTxtVerifier",
    "HttpWellKnownVerifier",
    "KeyLookup",
    "MemoryReplayGuard",
    "OwnershipChecker",
    "OwnershipProof",
    "ProofVerifier",
    "PublicKey",
    "RecordError",
    "ReplayGuard",
    "domain_for_namespace",
    "grants_for",
    "key_record",
    "namespace_covered",
    "namespace_of",
    "parse_key_record",
    "sign_challenge",
    "timestamp_challenge",
]

CHECK_ID = "namespace"
WELL_KNOWN_PATH = "/.well-known/mcp-registry-auth"
RECORD_PREFIX = "v=MCPv1"
CHALLENGE_PREFIX = "kontor-registry-auth:v1"
#: Clock skew accepted for timestamp challenges (the official registry's window).
TIMESTAMP_WINDOW_S = 15.0

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- namespaces and domains


def namespace_of(name: str) -> str:
    """``com.example/weather`` → ``com.example`` (a bare namespace is returned as is), lower case."""
    return name.split("/", 1)[0].strip().lower()


def normalise_domain(domain: str) -> str:
    """Lower case, no trailing dot; raises ValueError unless a plain multi-label host name."""
    if not isinstance(domain, str):
        raise ValueError("domain must be a string")
    host = domain.strip().lower().removesuffix(".")
    if not host or len(host) > 253:
        raise ValueError(f"invalid domain {domain!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        raise ValueError(f"{domain!r} is an IP address, not a domain")
    labels = host.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"invalid domain {domain!r}: expected a host name such as example.com")
    if labels[-1].isdigit():
        raise ValueError(f"invalid domain {domain!r}: numeric top-level label")
    return host


def domain_for_namespace(namespace: str) -> str:
    """``com.example`` → ``example.com``."""
    return ".".join(reversed(namespace_of(namespace).split(".")))


def grants_for(domain: str, *, subdomains: bool) -> list[str]:
    """The name patterns a proof for ``domain`` lets a publisher use (official registry notation)."""
    reverse = ".".join(reversed(domain.split(".")))
    return [f"{reverse}/*", f"{reverse}.*/*"] if subdomains else [f"{reverse}/*"]


def namespace_covered(namespace: str, domain: str, *, subdomains: bool) -> bool:
    """Whether a proof for ``domain`` covers ``namespace`` (DNS proofs also cover sub-namespaces)."""
    namespace = namespace_of(namespace)
    reverse = ".".join(reversed(domain.lower().removesuffix(".").split(".")))
    return namespace == reverse or (subdomains and namespace.startswith(reverse + "."))


# --------------------------------------------------------------------------- keys and records


class RecordError(ValueError):
    """A proof record that starts with ``v=MCPv1`` but cannot be used."""


@dataclass(frozen=True)
class PublicKey:
    algorithm: str  # "ed25519" | "ecdsap384"
    raw: bytes

    @property
    def fingerprint(self) -> str:
        """``<algorithm>:<first 8 base64 characters>`` as the official registry shows keys in errors."""
        return f"{self.algorithm}:{base64.b64encode(self.raw).decode()[:8]}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            if self.algorithm == "ed25519":
                if len(signature) != 64:
                    return False
                ed25519.Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, message)
                return True
            if len(signature) != 96:
                return False
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), self.raw)
            der = encode_dss_signature(int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big"))
            key.verify(der, message, ec.ECDSA(hashes.SHA384()))
            return True
        except (InvalidSignature, ValueError):
            return False


_RECORD = re.compile(r"^v=MCPv1;\s*k=([^;\s]+);\s*p=([A-Za-z0-9+/=]+)\s*;?$")


def parse_key_record(record: str) -> PublicKey:
    """Parse ``v=MCPv1; k=<algorithm>; p=<base64 key>``; raises :class:`RecordError`."""
    text = record.strip()
    match = _RECORD.match(text)
    if not match:
        raise RecordError(f"malformed proof record {text[:120]!r}: expected 'v=MCPv1; k=ed25519; p=<base64 key>'")
    algorithm, encoded = match.group(1).lower(), match.group(2)
    try:
        raw = base64.b64decode(encoded, validate=True)
    except ValueError:
        raise RecordError(f"proof record key is not valid base64: {encoded[:60]!r}") from None
    if algorithm == "ed25519":
        if len(raw) != 32:
            raise RecordError(f"Ed25519 public key must be 32 bytes, got {len(raw)}")
    elif algorithm == "ecdsap384":
        if len(raw) != 49 or raw[0] not in (2, 3):
            raise RecordError("ECDSA P-384 public key must be a 49-byte compressed point")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), raw)
        except ValueError:
            raise RecordError("ECDSA P-384 public key is not a point on the curve") from None
    else:
        raise RecordError(f"unsupported key algorithm {algorithm!r} (ed25519 or ecdsap384)")
    return PublicKey(algorithm, raw)


def key_record(public_key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey) -> str:
    """The proof record a publisher publishes for ``public_key``."""
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"{RECORD_PREFIX}; k=ed25519; p={base64.b64encode(raw).decode()}"
    raw = public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    return f"{RECORD_PREFIX}; k=ecdsap384; p={base64.b64encode(raw).decode()}"


def sign_challenge(private_key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey, challenge: str) -> str:
    """The publisher's side: the hex signature of ``challenge`` (what ``mcp-publisher`` computes)."""
    message = challenge.encode()
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(message).hex()
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(private_key.sign(message, ec.ECDSA(hashes.SHA384())))
    return (r.to_bytes(48, "big") + s.to_bytes(48, "big")).hex()


def timestamp_challenge(now: float | None = None) -> str:
    """An official-registry style challenge: the current time in RFC 3339 (UTC, seconds)."""
    return _iso(time.time() if now is None else now)


# --------------------------------------------------------------------------- challenges


class ChallengeError(ValueError):
    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule


@dataclass(frozen=True)
class Challenge:
    domain: str
    nonce: str
    issued_at: float
    expires_at: float
    text: str  # exactly what the publisher signs


class ChallengeIssuer:
    """Issues domain-bound challenges; stateless (an HMAC under ``secret``), single use via a ReplayGuard.

    ``secret`` must be shared by every replica that verifies and survive restarts for challenges
    to stay valid across them; the default is a random per-process secret.
    """

    def __init__(self, secret: bytes | None = None, *, ttl_s: float = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self.ttl_s = ttl_s
        self._clock = clock

    def _mac(self, body: str) -> str:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self, domain: str) -> Challenge:
        domain = normalise_domain(domain)
        issued = int(self._clock())
        expires = issued + int(self.ttl_s)
        nonce = secrets.token_urlsafe(18)
        body = f"{CHALLENGE_PREFIX};domain={domain};nonce={nonce};issued={_iso(issued)};expires={_iso(expires)}"
        return Challenge(domain, nonce, issued, expires, f"{body};mac={self._mac(body)}")

    def parse(self, text: str) -> Challenge:
        """Check an issued challenge's shape and MAC (not its expiry); raises :class:`ChallengeError`."""
        body, sep, mac = text.rpartition(";mac=")
        parts = dict(p.split("=", 1) for p in body.split(";")[1:] if "=" in p) if sep else {}
        if not sep or not body.startswith(CHALLENGE_PREFIX + ";") or set(parts) != {"domain", "nonce", "issued",
                                                                                    "expires"}:
            raise ChallengeError("namespace.challenge-malformed", f"malformed challenge {text[:120]!r}")
        if not hmac.compare_digest(mac, self._mac(body)):
            raise ChallengeError("namespace.challenge-foreign", "challenge was not issued by this registry")
        try:
            issued = _parse_time(parts["issued"])
            expires = _parse_time(parts["expires"])
        except ValueError as exc:
            raise ChallengeError("namespace.challenge-malformed", str(exc)) from None
        return Challenge(parts["domain"], parts["nonce"], issued, expires, text)


def _parse_time(text: str) -> float:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an RFC 3339 timestamp: {text[:60]!r}") from None
    if value.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {text[:60]!r}")
    return value.timestamp()


@runtime_checkable
class ReplayGuard(Protocol):
    def claim(self, key: str, until: float) -> bool:
        """Record ``key`` as used until ``until`` (epoch seconds); False if it was already used."""
        ...


class MemoryReplayGuard:
    """Used challenges in memory (one process). A database-backed guard replaces it for replicas."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._used: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def claim(self, key: str, until: float) -> bool:
        now = self._clock()
        with self._lock:
            for old in [k for k, t in self._used.items() if t < now]:
                del self._used[old]
            if key in self._used:
                return False
            self._used[key] = until
            return True


# --------------------------------------------------------------------------- verifiers


@dataclass
class KeyLookup:
    """What a verifier found at the domain: the candidate records, or why none could be read."""

    records: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@runtime_checkable
class ProofVerifier(Protocol):
    """Where a method's proof records live. ``covers_subdomains``: the proof also grants sub-namespaces."""

    method: str
    covers_subdomains: bool

    async def published_keys(self, domain: str) -> KeyLookup: ...


class HttpWellKnownVerifier:
    """Records from ``https://<domain>/.well-known/mcp-registry-auth`` through the SSRF-safe client.

    ``url_template`` exists for tests (a local server on another port); production keeps the default.
    """

    method = "http"
    covers_subdomains = False

    def __init__(self, client: SafeHttpClient | None = None, *,
                 url_template: str = "https://{domain}" + WELL_KNOWN_PATH) -> None:
        self.client = client or SafeHttpClient(max_bytes=4096, timeout_s=10.0, max_redirects=0)
        self.url_template = url_template

    async def published_keys(self, domain: str) -> KeyLookup:
        url = self.url_template.format(domain=domain)
        started = time.monotonic()
        evidence: dict[str, Any] = {"url": url, "max_bytes": self.client.max_bytes}
        try:
            response = await self.client.get(url, headers={"accept": "text/plain"})
        except UnsafeUrl as exc:
            evidence["fetch_ms"] = _ms(started)
            return KeyLookup([], evidence | {"refused": exc.reason}, f"{url} refused: {exc.reason}")
        except FetchFailed as exc:
            evidence["fetch_ms"] = _ms(started)
            return KeyLookup([], evidence, f"{url}: {exc.reason}")
        evidence.update({"fetch_ms": _ms(started), "status": response.status, "final_url": response.url,
                         "bytes": len(response.content)})
        if response.status == 404:
            return KeyLookup([], evidence)  # no file: the record is missing
        if response.status != 200:
            return KeyLookup([], evidence, f"HTTP {response.status} from {url}")
        lines = [line.strip() for line in response.text.splitlines()]
        evidence["body"] = response.text[:1024]
        return KeyLookup([line for line in lines if line], evidence)


class DnsTxtVerifier:
    """TXT records of ``<domain>`` through dnspython; inject ``resolver`` or ``nameservers``/``port`` for tests."""

    method = "dns"
    covers_subdomains = True

    def __init__(self, resolver: dns.asyncresolver.Resolver | None = None, *,
                 nameservers: Sequence[str] | None = None, port: int = 53, timeout_s: float = 5.0) -> None:
        if resolver is None:
            if nameservers:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = list(nameservers)
                resolver.port = port
            else:
                try:
                    resolver = dns.asyncresolver.Resolver()  # the system's /etc/resolv.conf
                except dns.resolver.NoResolverConfiguration:
                    resolver = dns.asyncresolver.Resolver(configure=False)  # lookups fail with a clear error
        resolver.lifetime = timeout_s
        resolver.timeout = timeout_s
        self.resolver = resolver

    async def published_keys(self, domain: str) -> KeyLookup:
        started = time.monotonic()
        evidence: dict[str, Any] = {"query": f"{domain}. TXT",
                                    "nameservers": [str(ns) for ns in self.resolver.nameservers],
                                    "port": self.resolver.port}
        try:
            answer = await self.resolver.resolve(domain + ".", dns.rdatatype.TXT, search=False)
        except dns.resolver.NXDOMAIN:
            return KeyLookup([], evidence | {"rcode": "NXDOMAIN", "lookup_ms": _ms(started)})
        except dns.resolver.NoAnswer:
            return KeyLookup([], evidence | {"rcode": "NOERROR", "answers": 0, "lookup_ms": _ms(started)})
        except dns.exception.DNSException as exc:
            evidence["lookup_ms"] = _ms(started)
            return KeyLookup([], evidence, f"DNS lookup of {domain} TXT failed: {type(exc).__name__}: {exc}")
        records = [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]
        evidence.update({"rcode": "NOERROR", "answers": len(records), "ttl": answer.rrset.ttl if answer.rrset else None,
                         "records": records[:20], "lookup_ms": _ms(started)})
        return KeyLookup(records, evidence)


# --------------------------------------------------------------------------- the check


@dataclass(frozen=True)
class OwnershipProof:
    """A publisher's proof: the method, the domain, the signed challenge and its hex signature."""

    method: str  # "http" | "dns"
    domain: str
    challenge: str
    signature: str

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OwnershipProof:
        """Accepts our field names and the official ones (``timestamp``, ``signed_timestamp``)."""
        return cls(str(data.get("method", "")), str(data.get("domain", "")),
                   str(data.get("challenge", data.get("timestamp", ""))),
                   str(data.get("signature", data.get("signed_timestamp", ""))))


class OwnershipChecker:
    """Verifies :class:`OwnershipProof` s; keep one instance (it holds the replay guard)."""

    def __init__(self, verifiers: Mapping[str, ProofVerifier] | Iterable[ProofVerifier] | None = None, *,
                 issuer: ChallengeIssuer | None = None, replay: ReplayGuard | None = None,
                 timestamp_window_s: float = TIMESTAMP_WINDOW_S, clock: Callable[[], float] = time.time) -> None:
        if verifiers is None:
            verifiers = [HttpWellKnownVerifier(), DnsTxtVerifier()]
        if not isinstance(verifiers, Mapping):
            verifiers = {v.method: v for v in verifiers}
        self.verifiers: dict[str, ProofVerifier] = dict(verifiers)
        self.issuer = issuer
        self.replay: ReplayGuard = replay if replay is not None else MemoryReplayGuard(clock)
        self.timestamp_window_s = timestamp_window_s
        self._clock = clock

    async def check(self, name: str, proof: OwnershipProof) -> CheckResult:
        """Whether ``proof`` shows control of the namespace of ``name`` (a server name or a namespace)."""
        started = time.monotonic()
        namespace = namespace_of(name)
        evidence: dict[str, Any] = {"namespace": namespace, "method": proof.method, "domain": proof.domain}

        def fail(rule: str, message: str, severity: str = "high", **more: Any) -> CheckResult:
            evidence.update(more)
            evidence["timings"] = {**evidence.get("timings", {}), "total_ms": _ms(started)}
            return CheckResult.of(CHECK_ID, evidence, [finding(rule, severity, message, field="$.name")])

        verifier = self.verifiers.get(proof.method)
        if verifier is None:
            return fail("namespace.unknown-method",
                        f"unknown proof method {proof.method!r}; use one of {sorted(self.verifiers)}")
        try:
            domain = normalise_domain(proof.domain)
        except ValueError as exc:
            return fail("namespace.bad-domain", str(exc))
        evidence["domain"] = domain
        grants = grants_for(domain, subdomains=verifier.covers_subdomains)
        evidence["grants"] = grants
        if not namespace_covered(namespace, domain, subdomains=verifier.covers_subdomains):
            expected = ".".join(reversed(domain.split(".")))
            scope = f"{expected} or {expected}.*" if verifier.covers_subdomains else expected
            hint = "" if verifier.covers_subdomains else " (an HTTP proof covers the exact namespace only)"
            return fail("namespace.mismatch",
                        f"namespace {namespace} is not covered by a {proof.method} proof for {domain}: "
                        f"that proof grants {scope}{hint}")

        # The challenge: an issued one, or an official-style timestamp.
        now = self._clock()
        challenge_text = proof.challenge.strip()
        if challenge_text.startswith(CHALLENGE_PREFIX):
            if self.issuer is None:
                return fail("namespace.challenge-unsupported", "this registry does not issue challenges")
            try:
                issued = self.issuer.parse(challenge_text)
            except ChallengeError as exc:
                return fail(exc.rule, str(exc))
            evidence["challenge"] = {"kind": "issued", "nonce": issued.nonce, "issued_at": _iso(issued.issued_at),
                                     "expires_at": _iso(issued.expires_at), "age_s": round(now - issued.issued_at, 1)}
            if issued.domain != domain:
                return fail("namespace.challenge-foreign",
                            f"challenge was issued for {issued.domain}, not for {domain}")
            if now > issued.expires_at or now < issued.issued_at - self.timestamp_window_s:
                return fail("namespace.challenge-expired",
                            f"challenge expired at {_iso(issued.expires_at)} (now {_iso(now)})")
            replay_key, replay_until = f"nonce:{issued.nonce}", issued.expires_at + self.timestamp_window_s
        else:
            try:
                stamp = _parse_time(challenge_text)
            except ValueError as exc:
                return fail("namespace.challenge-malformed",
                            f"challenge must be an RFC 3339 timestamp or a challenge issued by this registry: {exc}")
            age = now - stamp
            evidence["challenge"] = {"kind": "timestamp", "timestamp": challenge_text, "age_s": round(age, 1),
                                     "window_s": self.timestamp_window_s}
            if abs(age) > self.timestamp_window_s:
                return fail("namespace.challenge-expired",
                            f"signed timestamp {challenge_text} is {abs(age):.0f} s "
                            f"{'old' if age > 0 else 'in the future'}; it must be within "
                            f"±{self.timestamp_window_s:g} s of the registry's clock")
            replay_key, replay_until = f"ts:{domain}:{challenge_text}", stamp + self.timestamp_window_s * 2

        try:
            signature = bytes.fromhex(proof.signature.strip())
        except ValueError:
            return fail("namespace.signature-malformed", "signature must be hex-encoded")
        if len(signature) not in (64, 96):
            return fail("namespace.signature-malformed",
                        f"signature is {len(signature)} bytes; Ed25519 signatures are 64, P-384 (r||s) 96")

        lookup_started = time.monotonic()
        lookup = await verifier.published_keys(domain)
        evidence["lookup"] = lookup.evidence
        evidence["timings"] = {"lookup_ms": _ms(lookup_started)}
        if lookup.error is not None:
            return fail("namespace.record-unreachable", f"{proof.method} proof for {domain}: {lookup.error}")
        keys: list[PublicKey] = []
        malformed: list[str] = []
        candidates = [r for r in lookup.records if r.strip().startswith(RECORD_PREFIX)]
        for record in candidates:
            try:
                keys.append(parse_key_record(record))
            except RecordError as exc:
                malformed.append(str(exc))
        evidence.update({"records": candidates[:20], "keys": [k.fingerprint for k in keys], "malformed": malformed})
        where = str(lookup.evidence.get("url") or lookup.evidence.get("query") or domain)
        if not candidates:
            return fail("namespace.record-missing", f"no '{RECORD_PREFIX}; k=…; p=…' proof record at {where}")
        if not keys:
            return fail("namespace.record-malformed", f"no usable proof record at {where}: {'; '.join(malformed)}")
        findings: list[Finding] = []
        if malformed:
            findings.append(finding("namespace.record-malformed", "low",
                                    f"ignored {len(malformed)} malformed proof record(s) at {where}: "
                                    f"{'; '.join(malformed)}", field="$.name"))
        message = challenge_text.encode()
        matched = next((k for k in keys if k.verify(message, signature)), None)
        if matched is None:
            tried = ", ".join(k.fingerprint for k in keys)
            return fail("namespace.signature-mismatch",
                        f"signature does not verify against the published key(s) {tried} at {where}; "
                        "if you rotated keys, the record may be stale")
        if not self.replay.claim(replay_key, replay_until):
            return fail("namespace.challenge-replayed", "this signed challenge was already used; sign a fresh one")
        evidence["matched_key"] = matched.fingerprint
        evidence["timings"]["total_ms"] = _ms(started)
        return CheckResult.of(CHECK_ID, evidence, findings)
