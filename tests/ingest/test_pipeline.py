"""The ingest pipeline end to end, in process: good and bad files, idempotency, replacement."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kontor.servers.ingest.parsepool import ParserPool
from kontor.servers.ingest.pipeline import IngestService, expand_paths
from kontor.settings import Limits, Settings
from tests import samples


@pytest.fixture(scope="module")
def pool() -> ParserPool:
    limits = Limits(max_archive_ratio=50.0)
    with ParserPool(limits, workers=2) as p:
        yield p


def _service(root: Path, tenant: str, pool: ParserPool) -> IngestService:
    settings = Settings(data_root=root, tenant=tenant)
    return IngestService(settings, pool.limits, tenant, pool=pool)


@pytest.fixture
async def service(tmp_path: Path, pool: ParserPool) -> AsyncIterator[IngestService]:
    svc = _service(tmp_path / "data", "acme", pool)
    yield svc
    await svc.close()


async def _ingest(svc: IngestService, *paths: Path) -> dict:
    specs, problems = expand_paths(list(paths))
    assert not problems
    job = await svc.job_for_paths(specs, "test")
    return (await svc.run(job)).as_dict()


def _sources(svc: IngestService) -> set[str]:
    docs, _ = svc.store.list_documents(0, 1000)
    return {d["source"] for d in docs}


async def test_bad_files_fail_alone_with_reasons_and_leave_nothing(service: IngestService, tmp_path: Path):
    expected = samples.write_mixed_folder(tmp_path / "in")
    report = await _ingest(service, tmp_path / "in")

    failed = {f["source"].split("/")[-1]: f for f in report["failures"]}
    assert set(failed) == {n for n, o in expected.items() if o == "failed"}
    for name, failure in failed.items():
        assert failure["reason"], f"{name} failed without a reason"
    assert "entit" in failed["lol.xml"]["reason"].lower()
    assert "entit" in failed["xxe.xml"]["reason"].lower() or "dtd" in failed["xxe.xml"]["reason"].lower()
    assert report["counts"]["ok"] == sum(1 for o in expected.values() if o == "ok")
    assert report["state"] == "completed"

    sources = _sources(service)
    leaf_names = {s.split("!/")[0].split("/")[-1] for s in sources}
    assert leaf_names == {n for n, o in expected.items() if o == "ok"}
    # the e-mail's attachment is its own document, linked to the mail
    assert any(s.endswith("mail.eml!/angebot.pdf") for s in sources)
    hits = service.store.search("root:x:0:0", None, k=5, mode="keyword")
    assert all("root:" not in h.text for h in hits), "external entity content leaked into the store"


async def test_unchanged_files_are_skipped_and_changed_files_replace_their_chunks(
        service: IngestService, tmp_path: Path):
    folder = tmp_path / "docs"
    samples.text_corpus(folder, 5)
    first = await _ingest(service, folder)
    assert first["counts"]["ok"] == 5
    stats_before = service.store.stats()

    again = await _ingest(service, folder)
    assert again["counts"] == {**again["counts"], "ok": 0, "skipped": 5, "failed": 0}
    assert service.store.stats()["tables"]["chunks"] == stats_before["tables"]["chunks"]

    target = folder / "doc0002.md"
    target.write_text("# Neu\n\nNur noch ein Satz über Quantenkabel.\n", encoding="utf-8")
    third = await _ingest(service, folder)
    assert third["counts"]["ok"] == 1 and third["counts"]["skipped"] == 4
    hits = service.store.search("Quantenkabel", None, k=10, mode="keyword")
    assert hits and hits[0].source.endswith("doc0002.md")
    doc_chunks = [h for h in service.store.search("Dokument 2", None, k=50, mode="keyword")
                  if h.source.endswith("doc0002.md")]
    assert all("Quantenkabel" in h.text or "Neu" in h.text for h in doc_chunks), "old chunks survived"


async def test_tenants_never_see_each_others_chunks(tmp_path: Path, pool: ParserPool):
    root = tmp_path / "data"
    a, b = _service(root, "tenant-a", pool), _service(root, "tenant-b", pool)
    try:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        (tmp_path / "a" / "a.md").write_text("# A\n\nGeheimes Angebot Alpha für Schaltschränke.\n")
        (tmp_path / "b" / "b.md").write_text("# B\n\nGeheimes Angebot Beta für Schaltschränke.\n")
        await _ingest(a, tmp_path / "a")
        await _ingest(b, tmp_path / "b")
        vec = a.embedder.encode_one("Geheimes Angebot")
        for mode in ("keyword", "vector", "hybrid"):
            hits_a = a.store.search("Geheimes Angebot", vec, k=10, mode=mode)
            assert hits_a and all("Alpha" in h.text for h in hits_a), mode
            hits_b = b.store.search("Geheimes Angebot", vec, k=10, mode=mode)
            assert hits_b and all("Beta" in h.text for h in hits_b), mode
        assert (root / "tenants" / "tenant-a" / "lance").is_dir()
    finally:
        await a.close()
        await b.close()


async def test_upload_names_cannot_leave_the_tenant_folder(service: IngestService):
    job = await service.job_for_upload("../../../../etc/evil.md", b"# Boese\n\nInhalt.\n")
    report = (await service.run(job)).as_dict()
    assert report["counts"]["ok"] == 1
    raw = service.paths.raw
    stored = [p for p in raw.rglob("*") if p.is_file()]
    assert stored and all(raw in p.parents for p in stored)
    assert not (service.settings.data_root / "etc").exists()


async def test_upload_over_the_size_limit_is_refused(tmp_path: Path, pool: ParserPool):
    settings = Settings(data_root=tmp_path / "d", tenant="acme")
    svc = IngestService(settings, Limits(max_upload_bytes=10), "acme", pool=pool)
    try:
        with pytest.raises(ValueError, match="over the limit"):
            await svc.job_for_upload("big.txt", b"x" * 11)
    finally:
        await svc.close()


async def test_chunks_point_at_their_text(service: IngestService, tmp_path: Path):
    samples.text_corpus(tmp_path / "c", 3)
    await _ingest(service, tmp_path / "c")
    hits = service.store.search("Vertrag", None, k=20, mode="keyword")
    assert hits
    for hit in hits:
        doc = service.store.get_document(hit.document_id)
        assert doc is not None
        assert doc.text[hit.char_start : hit.char_end] == hit.text
