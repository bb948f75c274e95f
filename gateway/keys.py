"""The gateway's signing keys for internal tokens: persisted, rotated, published as JWKS.

Each key is one JSON file ``<kid>.json`` in the store's folder (mode 0600, folder 0700),
holding the private JWK (EC P-256, ES256) and its creation time. The key created last is the
active one; a key stops signing when a newer one exists and stays published until every
token it can have signed has expired (``max_token_lifetime_s`` + ``grace_s`` after it was
superseded), then it is pruned.

Files are written to a temporary name and renamed into place, and creation, rotation and
pruning hold an exclusive ``flock`` on ``.lock``, so several threads, processes or gateway
replicas sharing the folder never see a half-written key and never lose one. Readers
reload when the folder's modification time changes, so a key rotated by another process is
published (and used) here too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey

log = logging.getLogger(__name__)

ALGORITHM = "ES256"
CURVE = "P-256"
_FORMAT = 1
_LOCK_NAME = ".lock"


class KeyStoreError(RuntimeError):
    pass


@dataclass(frozen=True, repr=False)
class SigningKey:
    """One signing key. ``repr`` shows the kid only, never key material."""

    kid: str
    created_at: float
    key: ECKey = field(compare=False)

    def public_jwk(self) -> dict[str, Any]:
        """The public JWK with ``kid``, ``alg`` and ``use``: safe to publish."""
        public = self.key.as_dict(private=False)
        public.pop("d", None)  # as_dict(private=False) already leaves it out; belt and braces
        return {**public, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r}, created_at={self.created_at:.3f})"


class KeyStore:
    """Persistent, rotating ES256 signing keys under ``directory``.

    ``max_token_lifetime_s`` is the longest lifetime a token signed with these keys may
    have (the minter refuses longer ones); with ``grace_s`` it bounds how long a superseded
    key stays published. ``rotate_after_s`` (optional) makes :meth:`current` rotate a key
    once it is that old.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_token_lifetime_s: int = 900,
        grace_s: int = 300,
        rotate_after_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_token_lifetime_s <= 0 or grace_s < 0:
            raise ValueError("max_token_lifetime_s must be positive and grace_s not negative")
        if rotate_after_s is not None and rotate_after_s <= 0:
            raise ValueError("rotate_after_s must be positive")
        self.directory = Path(directory)
        self.max_token_lifetime_s = max_token_lifetime_s
        self.grace_s = grace_s
        self.rotate_after_s = rotate_after_s
        self._clock = clock
        self._lock = threading.RLock()
        self._keys: list[SigningKey] = []  # oldest first
        self._names: frozenset[str] = frozenset()
        self._loaded_mtime: int | None = None
        self._racy = False

    # -- public API ---------------------------------------------------------------------

    def current(self) -> SigningKey:
        """The active signing key, created on first use (and rotated when due)."""
        with self._lock:
            self._refresh()
            if self._keys and not self._due(self._keys[-1]):
                return self._keys[-1]
            with self._file_lock():
                self._refresh(force=True)  # another process may have just created one
                if self._keys and not self._due(self._keys[-1]):
                    return self._keys[-1]
                return self._create_locked()

    def rotate(self) -> SigningKey:
        """Create a new active key; older keys stay published until they can be pruned."""
        with self._lock, self._file_lock():
            self._refresh(force=True)
            return self._create_locked()

    def prune(self) -> list[str]:
        """Delete superseded keys whose tokens have all expired; return their kids."""
        with self._lock, self._file_lock():
            self._refresh(force=True)
            return self._prune_locked()

    def keys(self) -> list[SigningKey]:
        """All keys still published, oldest first (the last one is active)."""
        with self._lock:
            self._refresh()
            return [k for k in self._keys if not self._expired(k)]

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set (newest key first). Never contains private key material."""
        with self._lock:
            self._refresh()
            return {"keys": [k.public_jwk() for k in reversed(self._keys) if not self._expired(k)]}

    # -- lifetime rules -----------------------------------------------------------------

    def retention_s(self) -> float:
        return float(self.max_token_lifetime_s + self.grace_s)

    def _superseded_at(self, key: SigningKey) -> float | None:
        newer = [k.created_at for k in self._keys if k.created_at > key.created_at]
        return min(newer) if newer else None

    def _expired(self, key: SigningKey) -> bool:
        superseded = self._superseded_at(key)
        return superseded is not None and self._clock() >= superseded + self.retention_s()

    def _due(self, key: SigningKey) -> bool:
        return self.rotate_after_s is not None and self._clock() - key.created_at >= self.rotate_after_s

    # -- files ----------------------------------------------------------------------------

    def _ensure_dir(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        mode = self.directory.stat().st_mode & 0o777
        if mode & 0o077:
            os.chmod(self.directory, 0o700)

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        self._ensure_dir()
        fd = os.open(self.directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _refresh(self, force: bool = False) -> None:
        """Reload the keys when the folder changed (a file was added, renamed or removed).

        Key files are written once under their final name and never changed, so the set of
        names is the state. File times have a coarse granularity (a clock tick): a change
        made by another process within the tick of the last load leaves the folder's mtime
        unchanged, so while that mtime is recent the names are listed again (git's "racy" rule).
        """
        try:
            mtime = self.directory.stat().st_mtime_ns
        except FileNotFoundError:
            self._keys, self._names, self._loaded_mtime = [], frozenset(), None
            return
        if not force and mtime == self._loaded_mtime and not self._racy:
            return
        names = frozenset(n for n in os.listdir(self.directory) if n.endswith(".json") and not n.startswith("."))
        if force or names != self._names:
            keys = [k for k in (self._load(self.directory / n) for n in names) if k is not None]
            keys.sort(key=lambda k: (k.created_at, k.kid))
            self._keys, self._names = keys, names
        self._loaded_mtime = mtime
        self._racy = time.time_ns() - mtime < 2_000_000_000

    def _load(self, path: Path) -> SigningKey | None:
        try:
            st = path.stat()
            if st.st_mode & 0o077:
                log.warning("signing key file %s was readable by others; restricting it to 0600", path.name)
                os.chmod(path, 0o600)
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("format") != _FORMAT:
                raise ValueError("unknown format")
            key = ECKey.import_key(doc["jwk"])
            if not key.is_private or key.curve_name != CURVE:
                raise ValueError("not a private P-256 key")
            kid = key.thumbprint()
            if path.stem != kid:
                raise ValueError("file name does not match the key's thumbprint")
            return SigningKey(kid=kid, created_at=float(doc["created_at"]), key=key)
        except FileNotFoundError:
            return None  # pruned by another process between listing and reading
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # The message names the file and the kind of problem, never the file's content.
            log.warning("ignoring unreadable signing key file %s: %s", path.name, type(exc).__name__)
            return None

    def _create_locked(self) -> SigningKey:
        key = ECKey.generate_key(CURVE, private=True)
        kid = key.thumbprint()  # RFC 7638: stable, derived from the public key only
        newest = self._keys[-1].created_at if self._keys else 0.0
        created_at = max(self._clock(), newest + 0.001)  # strictly newer even if the clock steps back
        doc = {"format": _FORMAT, "created_at": created_at,
               "jwk": key.as_dict(private=True, kid=kid, alg=ALGORITHM, use="sig")}
        self._write_atomic(self.directory / f"{kid}.json", json.dumps(doc).encode())
        log.info("created signing key kid=%s", kid)
        self._refresh(force=True)
        self._prune_locked()
        for k in self._keys:
            if k.kid == kid:
                return k
        raise KeyStoreError("the new signing key could not be read back")

    def _prune_locked(self) -> list[str]:
        gone = [k for k in self._keys[:-1] if self._expired(k)]
        for k in gone:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"{k.kid}.json").unlink()
            log.info("pruned signing key kid=%s", k.kid)
        if gone:
            self._fsync_dir()
            self._refresh(force=True)
        return [k.kid for k in gone]

    def _write_atomic(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=self.directory)  # created 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
