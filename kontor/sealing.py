"""AES-256-GCM sealing of small secrets at rest under one key file.

Used for the registry's tenant secrets and the web chat's OAuth tokens. Each value is sealed with
a fresh 12-byte nonce and bound to a *context* (e.g. tenant, server and secret name) as associated
data, so a ciphertext copied to another row does not decrypt. The key (32 random bytes, base64) is
kept in a file of mode 0600 created atomically when missing: two processes starting at once agree
on one key. ``repr`` shows only the key's id (the first 16 hex digits of its SHA-256).
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path
from typing import Self

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["SealedBox", "Undecryptable"]


class Undecryptable(Exception):
    """A sealed value does not open with this key and context (another key, a moved or edited value)."""


class SealedBox:
    """Seal and open strings under one 32-byte key (see the module docstring)."""

    NONCE_BYTES = 12

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != 32:
            raise ValueError("a sealing key must be 32 bytes")
        self._aead = AESGCM(bytes(key))
        self.key_id = hashlib.sha256(bytes(key)).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key_id={self.key_id!r})"

    @classmethod
    def generate(cls) -> Self:
        return cls(secrets.token_bytes(32))

    @classmethod
    def from_file(cls, path: Path) -> Self:
        """The key in ``path`` (base64), created (mode 0600, atomically) with a random key when missing."""
        path = Path(path)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)  # never replaces a key another process wrote meanwhile
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        return cls(base64.b64decode(path.read_text(encoding="ascii").strip(), validate=True))

    def encrypt(self, value: str, context: str) -> str:
        nonce = secrets.token_bytes(self.NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, value.encode("utf-8"), context.encode("utf-8"))
        return base64.b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, token: str, context: str) -> str:
        try:
            raw = base64.b64decode(token)
            plain = self._aead.decrypt(raw[: self.NONCE_BYTES], raw[self.NONCE_BYTES:], context.encode("utf-8"))
        except (InvalidTag, ValueError):
            raise Undecryptable("the value cannot be opened with the configured key") from None
        return plain.decode("utf-8")
