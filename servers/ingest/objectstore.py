"""Object store for raw uploads: local disk (embedded default) or any S3-compatible service.

Objects are content-addressed per tenant: ``tenants/<tenant>/raw/<sha256>/<name>``, where
``name`` is the original file name reduced by :func:`~kontor.paths.safe_name` (NFC-normalised,
so the same name typed on macOS and Linux gives the same key). Storing the same content under
the same name again is a no-op, which makes ingestion idempotent by content hash.

Keys come back from clients (tool arguments, job records), so every key is parsed and
validated before use, and callers pass the tenant from their verified context: a key of another
tenant, a ``..`` segment, an absolute path or any other shape raises :class:`InvalidKey`.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import threading
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO, cast
from urllib.parse import urlsplit

from kontor.paths import TenantPaths, UnsafePath, safe_join, safe_name
from kontor.tenancy import InvalidTenant, validate_tenant

if TYPE_CHECKING:
    from minio import Minio

    from kontor.settings import Settings

READ_BLOCK = 1024 * 1024
DEFAULT_PART_SIZE = 8 * 1024 * 1024  # S3 multipart part size (minimum 5 MiB); one part is buffered
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound", "NotFound"})


class ObjectStoreError(Exception):
    """The object store failed (unreachable, refused, inconsistent)."""


class ObjectNotFound(ObjectStoreError):
    def __init__(self, key: str) -> None:
        super().__init__(f"object not found: {key}")
        self.key = key


class ChecksumMismatch(ObjectStoreError):
    """The bytes do not hash to the sha256 they were stored under."""


class InvalidKey(ValueError):
    """A malformed object key, or one that names another tenant."""


class TenantMismatch(InvalidKey):
    pass


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class ParsedKey:
    tenant: str
    sha256: str
    name: str

    @property
    def key(self) -> str:
        return f"tenants/{self.tenant}/raw/{self.sha256}/{self.name}"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str
    name: str


def normalize_name(name: str) -> str:
    """The name part of a key for an original file name (last component, NFC, no odd characters)."""
    return safe_name(unicodedata.normalize("NFC", name))


def _check_sha256(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256.match(sha256.lower()):
        raise InvalidKey(f"invalid sha256 {sha256!r}: expected 64 hexadecimal characters")
    return sha256.lower()


def _valid_tenant(tenant: str) -> str:
    """``tenant`` if valid; else :class:`InvalidKey`, so that callers catch one error for bad input."""
    try:
        return validate_tenant(tenant)
    except InvalidTenant as exc:
        raise InvalidKey(str(exc)) from exc


def key_for(tenant: str, sha256: str, name: str) -> str:
    """The key under which ``tenant`` stores content ``sha256`` uploaded as ``name``."""
    return ParsedKey(_valid_tenant(tenant), _check_sha256(sha256), normalize_name(name)).key


def parse_key(key: str, tenant: str | None = None) -> ParsedKey:
    """Validate ``key`` (and, when given, that it belongs to ``tenant``) and split it."""
    if not isinstance(key, str) or not key:
        raise InvalidKey("object key must be a non-empty string")
    shown = key if len(key) <= 300 else key[:300] + "..."
    if "\x00" in key or "\\" in key:
        raise InvalidKey(f"invalid object key {shown!r}: NUL bytes and backslashes are not allowed")
    if key.startswith("/") or re.match(r"^[A-Za-z]:", key):
        raise InvalidKey(f"invalid object key {shown!r}: absolute paths are not allowed")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidKey(f"invalid object key {shown!r}: empty, '.' and '..' segments are not allowed")
    if len(parts) != 5 or parts[0] != "tenants" or parts[2] != "raw":
        raise InvalidKey(f"invalid object key {shown!r}: expected tenants/<tenant>/raw/<sha256>/<name>")
    _, key_tenant, _, sha256, name = parts
    try:
        validate_tenant(key_tenant)
    except InvalidTenant as exc:
        raise InvalidKey(f"invalid object key {shown!r}: {exc}") from exc
    if not _SHA256.match(sha256):
        raise InvalidKey(f"invalid object key {shown!r}: the sha256 part must be 64 lowercase hex characters")
    if name != normalize_name(name):
        raise InvalidKey(f"invalid object key {shown!r}: {name!r} is not a safe file name")
    if tenant is not None and key_tenant != _valid_tenant(tenant):
        raise TenantMismatch(f"object key {shown!r} does not belong to tenant {tenant!r}")
    return ParsedKey(key_tenant, sha256, name)


def check_tenant(key: str, tenant: str) -> ParsedKey:
    """Refuse ``key`` unless it is a valid key of ``tenant`` (who comes from a verified context)."""
    return parse_key(key, _valid_tenant(tenant))


def _list_prefix(tenant: str, prefix: str) -> str:
    _valid_tenant(tenant)
    if "\x00" in prefix or "\\" in prefix or prefix.startswith("/") or ".." in prefix.split("/"):
        raise InvalidKey(f"invalid list prefix {prefix!r}")
    return f"tenants/{tenant}/raw/{prefix}"


def _hash_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while block := fh.read(READ_BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


# --------------------------------------------------------------------------- interface


class ObjectStore(ABC):
    """Raw uploads, content-addressed per tenant. Methods that take a key also take an optional
    ``tenant``; when given, a key of any other tenant is refused with :class:`TenantMismatch`."""

    key_for = staticmethod(key_for)
    check_tenant = staticmethod(check_tenant)

    @abstractmethod
    def put(self, tenant: str, sha256: str, name: str, data: bytes) -> str:
        """Store ``data`` and return its key; a no-op when the key already exists.
        Raises :class:`ChecksumMismatch` if ``data`` does not hash to ``sha256``."""

    @abstractmethod
    def put_file(
        self, tenant: str, path: str | os.PathLike[str], *, name: str | None = None
    ) -> tuple[str, str, int]:
        """Stream a local file into the store (hashing while reading); returns ``(key, sha256, size)``.
        ``name`` defaults to the file's own name."""

    @abstractmethod
    def open(self, key: str, *, tenant: str | None = None) -> AbstractContextManager[IO[bytes]]:
        """A readable binary stream of the object, as a context manager."""

    @abstractmethod
    def stat(self, key: str, *, tenant: str | None = None) -> ObjectInfo: ...

    @abstractmethod
    def exists(self, key: str, *, tenant: str | None = None) -> bool: ...

    @abstractmethod
    def delete(self, key: str, *, tenant: str | None = None) -> None:
        """Remove the object; deleting a missing object is a no-op (as in S3)."""

    @abstractmethod
    def list(self, tenant: str, prefix: str = "") -> Iterator[ObjectInfo]:
        """The tenant's objects in key order; ``prefix`` is relative to ``tenants/<tenant>/raw/``."""

    def get(self, key: str, *, tenant: str | None = None) -> bytes:
        with self.open(key, tenant=tenant) as stream:
            return stream.read()

    @staticmethod
    def _verify(sha256: str, data: bytes) -> str:
        sha256 = _check_sha256(sha256)
        actual = hashlib.sha256(data).hexdigest()
        if actual != sha256:
            raise ChecksumMismatch(f"data hashes to {actual}, not to the given sha256 {sha256}")
        return sha256


# --------------------------------------------------------------------------- local disk


def _fsync_dir(path: Path) -> None:
    with suppress(OSError):  # not supported everywhere (Windows); the data itself is synced
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LocalObjectStore(ObjectStore):
    """Objects as files under ``<data_root>/tenants/<tenant>/raw/<sha256>/<name>``.

    Writes go to a temporary file in the same file system, are fsynced and then renamed into
    place, so a reader never sees a partial object and a crash leaves at most a ``.tmp-*`` file
    (temporary names start with a dot, which no valid object name does).
    """

    def __init__(self, data_root: str | os.PathLike[str]) -> None:
        self.data_root = Path(data_root)

    def _raw(self, tenant: str) -> Path:
        return TenantPaths(self.data_root, _valid_tenant(tenant)).raw

    def _path(self, parsed: ParsedKey) -> Path:
        try:
            return safe_join(self._raw(parsed.tenant), parsed.sha256, parsed.name)
        except UnsafePath as exc:  # e.g. a symlink planted under raw/ pointing elsewhere
            raise ObjectStoreError(f"refusing to follow {parsed.key}: {exc}") from exc

    def _write(self, target: Path, blocks: Iterable[bytes]) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                for block in blocks:
                    fh.write(block)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(target.parent)

    def put(self, tenant: str, sha256: str, name: str, data: bytes) -> str:
        sha256 = self._verify(sha256, data)
        parsed = parse_key(key_for(tenant, sha256, name))
        target = self._path(parsed)
        if target.is_file() and target.stat().st_size == len(data):
            return parsed.key
        self._write(target, [data])
        return parsed.key

    def put_file(
        self, tenant: str, path: str | os.PathLike[str], *, name: str | None = None
    ) -> tuple[str, str, int]:
        source = Path(path)
        raw = self._raw(tenant)
        raw.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, tmp = tempfile.mkstemp(dir=raw, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                while block := src.read(READ_BLOCK):
                    digest.update(block)
                    size += len(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            parsed = parse_key(key_for(tenant, digest.hexdigest(), name or source.name))
            target = self._path(parsed)
            if target.is_file() and target.stat().st_size == size:
                os.unlink(tmp)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, target)
                _fsync_dir(target.parent)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return parsed.key, parsed.sha256, size

    @contextmanager
    def _open(self, parsed: ParsedKey) -> Iterator[IO[bytes]]:
        try:
            fh = open(self._path(parsed), "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound(parsed.key) from exc
        with fh:
            yield fh

    def open(self, key: str, *, tenant: str | None = None) -> AbstractContextManager[IO[bytes]]:
        return self._open(parse_key(key, tenant))  # a bad key fails here, not at ``with``

    def stat(self, key: str, *, tenant: str | None = None) -> ObjectInfo:
        parsed = parse_key(key, tenant)
        path = self._path(parsed)
        if not path.is_file():
            raise ObjectNotFound(key)
        return ObjectInfo(parsed.key, path.stat().st_size, parsed.sha256, parsed.name)

    def exists(self, key: str, *, tenant: str | None = None) -> bool:
        return self._path(parse_key(key, tenant)).is_file()

    def delete(self, key: str, *, tenant: str | None = None) -> None:
        # The (possibly empty) sha256 folder stays: removing it could race with a concurrent put.
        self._path(parse_key(key, tenant)).unlink(missing_ok=True)

    def list(self, tenant: str, prefix: str = "") -> Iterator[ObjectInfo]:
        full_prefix = _list_prefix(tenant, prefix)
        raw = self._raw(tenant)
        if not raw.is_dir():
            return
        for sha_dir in sorted(raw.iterdir(), key=lambda p: p.name):
            if not _SHA256.match(sha_dir.name) or sha_dir.is_symlink() or not sha_dir.is_dir():
                continue
            for entry in sorted(sha_dir.iterdir(), key=lambda p: p.name):
                name = entry.name
                if name != normalize_name(name) or entry.is_symlink() or not entry.is_file():
                    continue  # temporary files and anything not written by this store
                key = ParsedKey(tenant, sha_dir.name, name).key
                if not key.startswith(full_prefix):
                    continue
                try:
                    size = entry.stat().st_size
                except FileNotFoundError:  # deleted meanwhile
                    continue
                yield ObjectInfo(key, size, sha_dir.name, name)


# --------------------------------------------------------------------------- S3


class _HashingReader:
    """Wraps a binary file for an upload, hashing and counting what the uploader reads."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data


class S3ObjectStore(ObjectStore):
    """Objects in one bucket of an S3-compatible service (MinIO, AWS S3, ...), via ``minio``.

    The bucket is created on first write if it is missing. Each object carries its sha256 as
    user metadata (``x-amz-meta-sha256``). ``put_file`` hashes the file first (the key needs the
    hash), then streams it up in ``part_size`` parts, hashing again while uploading, and removes
    the object if the file changed in between.
    """

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = False,
        region: str | None = None,
        *,
        part_size: int = DEFAULT_PART_SIZE,
        client: Minio | None = None,
    ) -> None:
        from minio import Minio

        if part_size < 5 * 1024 * 1024:
            raise ValueError("part_size must be at least 5 MiB (an S3 limit)")
        if "://" in endpoint:  # accept "http://host:port" too; minio wants host:port and a flag
            parts = urlsplit(endpoint)
            if parts.path.strip("/"):
                raise ValueError(f"S3 endpoint {endpoint!r} must not contain a path")
            secure = parts.scheme == "https"
            endpoint = parts.netloc
        self.endpoint = endpoint
        self.bucket = bucket
        self.region = region
        self.part_size = part_size
        self._client = client or Minio(
            endpoint,
            access_key=access_key or None,
            secret_key=secret_key or None,
            secure=secure,
            region=region,
        )
        self._bucket_ready = False
        self._lock = threading.Lock()

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Map minio/urllib3 errors to :class:`ObjectNotFound` / :class:`ObjectStoreError`."""
        from minio.error import MinioException, S3Error
        from urllib3.exceptions import HTTPError

        try:
            yield
        except S3Error as exc:
            if exc.code in _NOT_FOUND:
                raise ObjectNotFound(what) from exc
            raise ObjectStoreError(f"S3 request for {what} failed: {exc.code}: {exc.message}") from exc
        except (MinioException, HTTPError) as exc:
            raise ObjectStoreError(f"S3 endpoint {self.endpoint} failed for {what}: {exc}") from exc

    def ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        from minio.error import S3Error

        with self._lock, self._errors(f"bucket {self.bucket}"):
            if self._bucket_ready:
                return
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket, location=self.region)
                except S3Error as exc:  # created meanwhile by another replica
                    if exc.code != "BucketAlreadyOwnedByYou":
                        raise
            self._bucket_ready = True

    def put(self, tenant: str, sha256: str, name: str, data: bytes) -> str:
        sha256 = self._verify(sha256, data)
        key = key_for(tenant, sha256, name)
        self.ensure_bucket()
        if self.exists(key):
            return key
        with self._errors(key):
            self._client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), metadata={"sha256": sha256}
            )
        return key

    def put_file(
        self, tenant: str, path: str | os.PathLike[str], *, name: str | None = None
    ) -> tuple[str, str, int]:
        source = Path(path)
        sha256, size = _hash_file(source)
        key = key_for(tenant, sha256, name or source.name)
        self.ensure_bucket()
        if self.exists(key):
            return key, sha256, size
        with open(source, "rb") as fh:
            reader = _HashingReader(fh)
            with self._errors(key):
                self._client.put_object(
                    self.bucket,
                    key,
                    cast(BinaryIO, reader),
                    size,
                    metadata={"sha256": sha256},
                    part_size=self.part_size,
                )
        if reader.size != size or reader.digest.hexdigest() != sha256:
            with suppress(ObjectStoreError):
                self.delete(key)
            raise ObjectStoreError(f"{source} changed while it was uploaded; nothing was stored")
        return key, sha256, size

    @contextmanager
    def _open(self, parsed: ParsedKey) -> Iterator[IO[bytes]]:
        with self._errors(parsed.key):
            response = self._client.get_object(self.bucket, parsed.key)
        try:
            yield cast(IO[bytes], response)
        finally:
            response.close()
            response.release_conn()

    def open(self, key: str, *, tenant: str | None = None) -> AbstractContextManager[IO[bytes]]:
        return self._open(parse_key(key, tenant))  # a bad key fails here, not at ``with``

    def get(self, key: str, *, tenant: str | None = None) -> bytes:
        with self.open(key, tenant=tenant) as response, self._errors(key):
            return response.read()

    def stat(self, key: str, *, tenant: str | None = None) -> ObjectInfo:
        parsed = parse_key(key, tenant)
        with self._errors(key):
            obj = self._client.stat_object(self.bucket, key)
        return ObjectInfo(parsed.key, obj.size or 0, parsed.sha256, parsed.name)

    def exists(self, key: str, *, tenant: str | None = None) -> bool:
        try:
            self.stat(key, tenant=tenant)
        except ObjectNotFound:
            return False
        return True

    def delete(self, key: str, *, tenant: str | None = None) -> None:
        parse_key(key, tenant)
        try:
            with self._errors(key):
                self._client.remove_object(self.bucket, key)
        except ObjectNotFound:  # a missing bucket: nothing to delete
            pass

    def list(self, tenant: str, prefix: str = "") -> Iterator[ObjectInfo]:
        full_prefix = _list_prefix(tenant, prefix)
        try:
            with self._errors(f"list {full_prefix}"):
                for obj in self._client.list_objects(self.bucket, prefix=full_prefix, recursive=True):
                    name = obj.object_name or ""
                    try:
                        parsed = parse_key(name, tenant)
                    except InvalidKey:
                        continue  # not written by this store
                    yield ObjectInfo(parsed.key, obj.size or 0, parsed.sha256, parsed.name)
        except ObjectNotFound:  # no bucket yet: no objects
            return


def object_store_from_settings(settings: Settings | None = None) -> ObjectStore:
    """The configured object store (``KONTOR_OBJECT_STORE=local|s3``)."""
    if settings is None:
        from kontor.settings import get_settings

        settings = get_settings()
    if settings.object_store == "s3":
        return S3ObjectStore(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
    return LocalObjectStore(settings.data_root)
