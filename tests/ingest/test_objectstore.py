"""Object store: the same behaviour on local disk and on a real S3-compatible server (moto)."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import unicodedata
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kontor.paths import TenantPaths
from kontor.servers.ingest.objectstore import (
    ChecksumMismatch,
    InvalidKey,
    LocalObjectStore,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    ParsedKey,
    S3ObjectStore,
    TenantMismatch,
    check_tenant,
    key_for,
    object_store_from_settings,
    parse_key,
)
from kontor.settings import Settings

if TYPE_CHECKING:
    from .conftest import S3Server  # the s3_server fixture's value

MiB = 1024 * 1024
PART_SIZE = 5 * MiB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def s3_store(server: S3Server, bucket: str | None = None) -> S3ObjectStore:
    return S3ObjectStore(
        server.endpoint,
        server.access_key,
        server.secret_key,
        bucket or f"kontor-{uuid.uuid4().hex[:12]}",
        secure=False,
        region=server.region,
        part_size=PART_SIZE,
    )


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalObjectStore(tmp_path / "data")
    else:
        yield s3_store(request.getfixturevalue("s3_server"))


# --------------------------------------------------------------------------- keys


SHA = "ab" * 32

BAD_KEYS = [
    "",
    f"tenants/acme/raw/../../other/raw/{SHA}/x.pdf",
    f"tenants/acme/raw/{SHA}/../x.pdf",
    f"tenants/acme/raw/{SHA}/..",
    f"tenants/acme/raw/{SHA}/./x.pdf",
    f"/tenants/acme/raw/{SHA}/x.pdf",
    "/etc/passwd",
    "C:/Windows/win.ini",
    f"tenants\\acme\\raw\\{SHA}\\x.pdf",
    f"tenants/acme//raw/{SHA}/x.pdf",
    f"tenants/acme/raw/{SHA}/",
    f"tenants/acme/raw/{SHA}",
    f"tenants/acme/raw/{SHA}/dir/x.pdf",
    f"tenants/acme/lance/{SHA}/x.pdf",
    f"tenant/acme/raw/{SHA}/x.pdf",
    f"tenants/ACME/raw/{SHA}/x.pdf",
    f"tenants/-acme/raw/{SHA}/x.pdf",
    f"tenants/acme/raw/{SHA.upper()}/x.pdf",
    f"tenants/acme/raw/{SHA[:-1]}/x.pdf",
    f"tenants/acme/raw/{SHA[:-1]}g/x.pdf",
    f"tenants/acme/raw/{SHA}/.hidden",
    f"tenants/acme/raw/{SHA}/.tmp-abc",
    f"tenants/acme/raw/{SHA}/x\x00.pdf",
    f"tenants/acme/raw/{SHA}/a:b.pdf",
    f"tenants/acme/raw/{SHA}/x.pdf ",
    f"tenants/acme/raw/{SHA}/{unicodedata.normalize('NFD', 'Prüfung.pdf')}",
]


def test_key_layout_and_normalised_names() -> None:
    assert key_for("acme", SHA, "Angebot 2025.pdf") == f"tenants/acme/raw/{SHA}/Angebot 2025.pdf"
    assert key_for("acme", SHA.upper(), "a.pdf") == f"tenants/acme/raw/{SHA}/a.pdf"
    # Path tricks in the original name are reduced to the last component.
    assert key_for("acme", SHA, "../../other/raw/x.pdf") == f"tenants/acme/raw/{SHA}/x.pdf"
    assert key_for("acme", SHA, "C:\\Users\\me\\Bericht.docx").endswith("/Bericht.docx")
    assert key_for("acme", SHA, "..").endswith("/unnamed")
    # NFD (macOS) and NFC spellings of the same name give the same key.
    nfd = unicodedata.normalize("NFD", "Prüfbericht März.pdf")
    assert key_for("acme", SHA, nfd) == key_for("acme", SHA, "Prüfbericht März.pdf")
    assert parse_key(key_for("acme", SHA, nfd)) == ParsedKey("acme", SHA, "Prüfbericht März.pdf")
    with pytest.raises(InvalidKey, match="sha256"):
        key_for("acme", "abc", "a.pdf")
    with pytest.raises(InvalidKey, match="tenant"):
        key_for("../acme", SHA, "a.pdf")


@pytest.mark.parametrize("key", BAD_KEYS)
def test_malformed_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidKey):
        parse_key(key)
    with pytest.raises(ValueError):  # InvalidKey is a ValueError
        check_tenant(key, "acme")


def test_check_tenant() -> None:
    key = key_for("acme", SHA, "a.pdf")
    assert check_tenant(key, "acme") == ParsedKey("acme", SHA, "a.pdf")
    with pytest.raises(TenantMismatch, match="does not belong to tenant 'evil'"):
        check_tenant(key, "evil")
    with pytest.raises(InvalidKey):
        check_tenant(key, "../acme")
    assert issubclass(TenantMismatch, InvalidKey) and issubclass(InvalidKey, ValueError)


# --------------------------------------------------------------------------- behaviour, both stores


def test_put_get_round_trip(store: ObjectStore) -> None:
    data = b"%PDF-1.7 Angebot\x00\xff" * 100
    key = store.put("acme", sha(data), "Angebot.pdf", data)
    assert key == f"tenants/acme/raw/{sha(data)}/Angebot.pdf"
    assert store.key_for("acme", sha(data), "Angebot.pdf") == key
    assert store.exists(key) and store.exists(key, tenant="acme")
    assert store.get(key) == data
    assert store.get(key, tenant="acme") == data
    assert store.stat(key) == ObjectInfo(key, len(data), sha(data), "Angebot.pdf")
    with store.open(key) as stream:
        assert stream.read(10) == data[:10]
        assert stream.read() == data[10:]
    empty = store.put("acme", sha(b""), "leer.txt", b"")
    assert store.get(empty) == b""


def test_put_refuses_wrong_checksum(store: ObjectStore) -> None:
    with pytest.raises(ChecksumMismatch):
        store.put("acme", sha(b"other"), "a.txt", b"data")
    with pytest.raises(InvalidKey):
        store.put("acme", "not-a-hash", "a.txt", b"data")
    with pytest.raises(InvalidKey):
        store.put("Evil Tenant", sha(b"data"), "a.txt", b"data")
    assert list(store.list("acme")) == []


def _forbid_writes(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("an idempotent put wrote again")

    if isinstance(store, S3ObjectStore):
        monkeypatch.setattr(store._client, "put_object", boom)
    else:
        monkeypatch.setattr(store, "_write", boom)
        monkeypatch.setattr("kontor.servers.ingest.objectstore.os.replace", boom)


def test_put_is_idempotent(store: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"Rechnung 4711"
    key = store.put("acme", sha(data), "rechnung.txt", data)
    source = tmp_path / "rechnung.txt"
    source.write_bytes(data)
    _forbid_writes(store, monkeypatch)
    assert store.put("acme", sha(data), "rechnung.txt", data) == key
    assert store.put_file("acme", source) == (key, sha(data), len(data))
    assert [info.key for info in store.list("acme")] == [key]
    # Same content under another name, or another tenant: separate objects.
    monkeypatch.undo()
    other = store.put("acme", sha(data), "kopie.txt", data)
    assert other != key and store.get(other) == data
    assert store.put("beta", sha(data), "rechnung.txt", data) != key
    assert [info.name for info in store.list("acme")] == ["kopie.txt", "rechnung.txt"]


def test_put_file_streams_a_large_file(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "Großer Katalog.xml"
    payload = os.urandom(12 * 1000 * 1000)
    source.write_bytes(payload)
    key, digest, size = store.put_file("acme", source)
    assert (digest, size) == (sha(payload), len(payload))
    assert key == f"tenants/acme/raw/{digest}/Großer Katalog.xml"
    assert store.stat(key, tenant="acme") == ObjectInfo(key, size, digest, "Großer Katalog.xml")
    with store.open(key) as stream:
        received = hashlib.sha256()
        while block := stream.read(MiB):
            received.update(block)
    assert received.hexdigest() == digest
    if isinstance(store, S3ObjectStore):  # uploaded in parts, with its hash as metadata
        obj = store._client.stat_object(store.bucket, key)
        assert obj.etag is not None and obj.etag.endswith("-3")  # 12 MB in 5 MiB parts
        assert obj.metadata["x-amz-meta-sha256"] == digest
    # An explicit upload name wins over the temporary file's name.
    renamed = store.put_file("acme", source, name="uploads/../Katalog 2025.xml")
    assert renamed == (f"tenants/acme/raw/{digest}/Katalog 2025.xml", digest, size)


def test_put_file_missing_source(store: ObjectStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.put_file("acme", tmp_path / "missing.pdf")
    present = tmp_path / "da.txt"
    present.write_bytes(b"da")
    with pytest.raises(InvalidKey):
        store.put_file("../beta", present)
    assert list(store.list("acme")) == []


def test_list(store: ObjectStore) -> None:
    assert list(store.list("acme")) == []
    blobs = {f"datei-{i}.txt": f"Inhalt {i}".encode() for i in range(5)}
    keys = {name: store.put("acme", sha(data), name, data) for name, data in blobs.items()}
    store.put("beta", sha(b"fremd"), "fremd.txt", b"fremd")
    listed = list(store.list("acme"))
    assert [info.key for info in listed] == sorted(keys.values())
    for info in listed:
        assert info == ObjectInfo(keys[info.name], len(blobs[info.name]), sha(blobs[info.name]), info.name)
    assert [info.name for info in store.list("beta")] == ["fremd.txt"]
    one = sha(blobs["datei-3.txt"])
    assert [info.name for info in store.list("acme", prefix=one)] == ["datei-3.txt"]
    assert [info.name for info in store.list("acme", prefix=f"{one}/datei")] == ["datei-3.txt"]
    assert list(store.list("acme", prefix="ff" * 32)) == []
    for bad in ("../beta/", "/", "a\\b"):
        with pytest.raises(InvalidKey):
            list(store.list("acme", prefix=bad))
    with pytest.raises(ValueError):
        list(store.list("../beta"))


def test_delete(store: ObjectStore) -> None:
    key = store.put("acme", sha(b"weg"), "weg.txt", b"weg")
    keep = store.put("acme", sha(b"weg"), "bleibt.txt", b"weg")
    store.delete(key, tenant="acme")
    assert not store.exists(key)
    with pytest.raises(ObjectNotFound):
        store.get(key)
    store.delete(key)  # deleting again is a no-op
    assert [info.key for info in store.list("acme")] == [keep]
    store.delete(keep)
    assert list(store.list("acme")) == []
    assert store.put("acme", sha(b"weg"), "weg.txt", b"weg") == key  # and it can come back
    assert store.get(key) == b"weg"


def test_missing_objects(store: ObjectStore) -> None:
    key = key_for("acme", SHA, "fehlt.pdf")
    assert not store.exists(key)
    with pytest.raises(ObjectNotFound, match="fehlt.pdf"):
        store.get(key)
    with pytest.raises(ObjectNotFound):
        store.stat(key)
    with pytest.raises(ObjectNotFound), store.open(key):
        pass
    assert issubclass(ObjectNotFound, ObjectStoreError)


@pytest.mark.parametrize(
    "key",
    [k for k in BAD_KEYS if k] + [f"tenants/beta/raw/{SHA}/x.pdf"],
)
def test_attacks_on_keys_are_refused_before_any_access(store: ObjectStore, key: str) -> None:
    # A key of tenant beta, and every malformed key, is refused for tenant acme.
    for call in (store.get, store.exists, store.stat, store.delete, store.open):
        with pytest.raises(InvalidKey):
            call(key, tenant="acme")


def test_tenant_cannot_touch_another_tenants_object(store: ObjectStore) -> None:
    secret = b"Gehaltsliste"
    key = store.put("beta", sha(secret), "gehalt.xlsx", secret)
    for call in (store.get, store.exists, store.stat, store.delete):
        with pytest.raises(TenantMismatch):
            call(key, tenant="acme")
    with pytest.raises(TenantMismatch), store.open(key, tenant="acme"):
        pass
    traversal = f"tenants/acme/raw/../../beta/raw/{sha(secret)}/gehalt.xlsx"
    with pytest.raises(InvalidKey):
        store.get(traversal)
    with pytest.raises(InvalidKey):
        store.get(traversal, tenant="acme")
    assert store.get(key, tenant="beta") == secret  # untouched by the refused delete
    assert list(store.list("acme")) == []


@pytest.mark.parametrize(
    "name",
    ["Prüfbericht März 2025 (final).pdf", "Übersicht Größen & Maße.xlsx", "  Leerzeichen  am Rand .txt"],
)
def test_names_with_umlauts_and_spaces(store: ObjectStore, name: str) -> None:
    data = name.encode()
    key = store.put("acme", sha(data), unicodedata.normalize("NFD", name), data)
    expected = unicodedata.normalize("NFC", name).strip(" .")
    assert key == f"tenants/acme/raw/{sha(data)}/{expected}"
    assert store.get(key, tenant="acme") == data
    assert [(info.key, info.name) for info in store.list("acme")] == [(key, expected)]


# --------------------------------------------------------------------------- implementation details


def test_local_layout_is_atomic_and_skips_foreign_files(tmp_path: Path) -> None:
    root = tmp_path / "data"
    store = LocalObjectStore(root)
    data = b"Inhalt"
    key = store.put("acme", sha(data), "a.txt", data)
    path = TenantPaths(root, "acme").raw / sha(data) / "a.txt"
    assert path.read_bytes() == data
    source = tmp_path / "b.bin"
    source.write_bytes(b"b" * (3 * MiB + 7))
    key_b, digest_b, _ = store.put_file("acme", source)
    raw = TenantPaths(root, "acme").raw
    assert sorted(p.name for p in raw.iterdir()) == sorted([sha(data), digest_b])  # no temp files left
    # Debris from a crash and anything else not written by the store is not listed.
    (raw / ".tmp-crashed").write_bytes(b"partial")
    (raw / sha(data) / ".tmp-crashed").write_bytes(b"partial")
    (raw / "not-a-hash").mkdir()
    (raw / "not-a-hash" / "x.txt").write_bytes(b"x")
    assert [info.key for info in store.list("acme")] == sorted([key, key_b])
    # A symlink planted under raw/ is not followed out of the tenant's folder.
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"secret")
    link_dir = raw / ("cd" * 32)
    link_dir.mkdir()
    (link_dir / "link.txt").symlink_to(outside)
    with pytest.raises(ObjectStoreError):
        store.get(key_for("acme", "cd" * 32, "link.txt"))
    assert all(info.name != "link.txt" for info in store.list("acme"))


def test_s3_creates_its_bucket_and_reports_errors(s3_server: S3Server) -> None:
    from minio import Minio

    bucket = f"kontor-{uuid.uuid4().hex[:12]}"
    store = s3_store(s3_server, bucket)
    client = Minio(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, secure=False)
    assert not client.bucket_exists(bucket)
    assert list(store.list("acme")) == []  # no bucket yet: nothing listed, nothing created
    assert not store.exists(key_for("acme", SHA, "a.pdf"))
    key = store.put("acme", sha(b"x"), "x.txt", b"x")
    assert client.bucket_exists(bucket)
    # A second store on the same bucket (another replica) sees the object.
    assert s3_store(s3_server, bucket).get(key, tenant="acme") == b"x"
    # Objects that this store did not write are skipped by list.
    client.put_object(bucket, "tenants/acme/raw/junk.txt", io.BytesIO(b"j"), 1)
    assert [info.key for info in store.list("acme")] == [key]


def test_s3_unreachable_endpoint_is_a_clear_error() -> None:
    import urllib3
    from minio import Minio

    with closed_port() as port:
        endpoint = f"127.0.0.1:{port}"
        client = Minio(
            endpoint,
            "k",
            "s",
            secure=False,
            http_client=urllib3.PoolManager(timeout=2.0, retries=urllib3.Retry(total=0)),
        )
        store = S3ObjectStore(endpoint, "k", "s", "kontor", client=client)
        with pytest.raises(ObjectStoreError, match=f"S3 endpoint {endpoint}"):
            store.get(key_for("acme", SHA, "a.pdf"))
        with pytest.raises(ObjectStoreError):
            store.put("acme", sha(b"x"), "x.txt", b"x")


@contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound while in use, but never listening."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def test_object_store_from_settings(tmp_path: Path) -> None:
    local = object_store_from_settings(Settings(data_root=tmp_path, object_store="local"))
    assert isinstance(local, LocalObjectStore) and local.data_root == tmp_path.resolve()
    s3 = object_store_from_settings(
        Settings(
            data_root=tmp_path,
            object_store="s3",
            s3_endpoint="https://minio.example:9000",
            s3_access_key="k",
            s3_secret_key="s",
            s3_bucket="kontor-raw",
            s3_region="eu-central-1",
        )
    )
    assert isinstance(s3, S3ObjectStore)
    assert (s3.endpoint, s3.bucket, s3.region) == ("minio.example:9000", "kontor-raw", "eu-central-1")
    with pytest.raises(ValueError, match="part_size"):
        S3ObjectStore("127.0.0.1:9000", "k", "s", "b", part_size=MiB)
