"""Retrieval quality of the lakehouse search modes on a BEIR-layout dataset: nDCG@10, Recall@10, MRR@10.

Input (``--data DIR``): ``corpus.jsonl`` (``_id``, ``title``, ``text``, optional ``contract_id``),
``queries.jsonl`` (``_id``, ``text``, optional ``contract_id``) and ``qrels/*.tsv`` (header
``query-id corpus-id score``; ``dev.tsv`` is preferred when several exist, ``--qrels`` picks one).

What it does, all below one ``tempfile.mkdtemp()`` folder that is removed at the end:

1. Every corpus document becomes a :class:`DocumentRecord` plus chunks cut by the pipeline's chunker
   (``chunk_document`` on a ParsedDocument of paragraph blocks, chunk size/overlap from the Settings
   defaults), with the pipeline's identifier extraction and the pipeline's ``embedding_text``
   (title + section + chunk) embedded by the configured model. Document ids are the corpus ``_id``
   (mapped to a 32-hex digest only if the store refused it); the mapping is kept to score.
   Sources are ``<contract_id>/<_id>`` where a contract id exists, else ``<dataset>/<_id>``.
2. ``optimize()``, then for every judged query: ``search()`` in each mode (keyword, vector, hybrid)
   with ``--chunk-k`` chunks (default 100), chunk hits aggregated to documents in hit order (first
   occurrence = the document's best rank), top 10 documents scored against the qrels.
   Queries that carry a ``contract_id`` (CUAD) search only that contract's paragraphs, through the
   store's ``source_prefix`` filter (the candidate set is restricted inside the store, not by
   post-filtering a global top-k).
3. Prints a table per mode (``--json``: one JSON object per mode per line with exactly the keys
   ``mode``, ``ndcg@10``, ``recall@10``, ``mrr@10``, ``queries``). A diagnosis for hybrid vs the
   single modes (per-query wins/losses, and an offline reciprocal-rank fusion of this run's own
   keyword and vector chunk lists, equal and re-weighted, at two candidate depths) goes to stdout in
   table mode and to stderr with ``--json``.

Run: ``.venv/bin/python benchmarks/retrieval_eval.py --data ../shared/data/retrieval/legalquad_de
[--json] [--k 10] [--limit-queries N] [--chunk-k 100] [--cache-dir DIR] [--per-query FILE]``.
Target: hybrid >= the best single mode on every dataset. No figure is asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODES = ("keyword", "vector", "hybrid")
TENANT = "eval"
WRITE_BATCH_DOCS = 200
RRF_K = 60


def log(message: str) -> None:
    print(f"[retrieval-eval {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data


@dataclass
class Dataset:
    name: str
    corpus: list[dict[str, Any]]
    queries: list[dict[str, Any]]
    qrels: dict[str, dict[str, int]]
    qrels_file: str


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_dataset(folder: Path, qrels_name: str | None) -> Dataset:
    files = sorted((folder / "qrels").glob("*.tsv"))
    if qrels_name:
        files = [f for f in files if f.name in (qrels_name, f"{qrels_name}.tsv")]
    elif any(f.name == "dev.tsv" for f in files):
        files = [f for f in files if f.name == "dev.tsv"]
    if not files:
        raise SystemExit(f"no qrels/*.tsv in {folder}" + (f" named {qrels_name}" if qrels_name else ""))
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with files[0].open(encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            parts = line.rstrip("\n").split("\t")
            if n == 0 and parts[0] == "query-id":
                continue
            if len(parts) >= 3:
                qrels[parts[0]][parts[1]] = int(float(parts[2]))
    return Dataset(folder.resolve().name, read_jsonl(folder / "corpus.jsonl"), read_jsonl(folder / "queries.jsonl"),
                   dict(qrels), files[0].name)


# --------------------------------------------------------------------------- building the lakehouse


def doc_key(corpus_id: str) -> str:
    """The corpus ``_id`` itself when the store accepts it as a document id, else a 32-hex digest of it
    (the id format the ingest pipeline produces); the caller keeps the mapping back to ``_id``."""
    try:
        from kontor.servers.lakehouse.store import _check_document_id

        return _check_document_id(corpus_id)
    except (ImportError, ValueError):
        return hashlib.sha256(f"beir:{corpus_id}".encode()).hexdigest()[:32]


def paragraph_blocks(text: str) -> list[Any]:
    from kontor.servers.ingest.model import Block

    parts = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n")]
    return [Block("paragraph", p) for p in parts if p]


def embedding_text_fn() -> Any:
    """The pipeline's own rule for what is embedded (title and section as context)."""
    from kontor.servers.ingest.pipeline import embedding_text

    return embedding_text


@dataclass
class Built:
    records: list[tuple[Any, list[Any], list[str]]] = field(default_factory=list)  # (doc, chunks, embed texts)

    @property
    def chunks(self) -> int:
        return sum(len(c) for _, c, _ in self.records)


def plan_documents(ds: Dataset) -> Built:
    from kontor.servers.ingest.chunking import chunk_document
    from kontor.servers.ingest.model import ParsedDocument
    from kontor.servers.lakehouse.analysis import extract_identifiers
    from kontor.servers.lakehouse.records import DocumentRecord
    from kontor.settings import Settings

    settings = Settings(data_root=Path(tempfile.gettempdir()), tenant=TENANT)  # defaults for chunking only
    embed_text = embedding_text_fn()
    built = Built()
    for doc in ds.corpus:
        corpus_id = str(doc["_id"])
        title = (doc.get("title") or "").strip()
        group = doc.get("contract_id") or ds.name
        source = f"{group}/{corpus_id}"
        parsed = ParsedDocument(mime="text/plain", title=title, blocks=paragraph_blocks(doc.get("text") or ""))
        doc_id = doc_key(corpus_id)
        chunks = chunk_document(parsed, document_id=doc_id, source=source, domain="legal",
                                target_chars=settings.chunk_size, overlap_chars=settings.chunk_overlap)
        if not chunks:
            continue
        for chunk in chunks:
            chunk.identifiers = sorted(set(extract_identifiers(chunk.text)))
        text = parsed.text
        record = DocumentRecord(
            document_id=doc_id, source=source, title=title or corpus_id, mime="text/plain",
            content_sha256=hashlib.sha256(text.encode()).hexdigest(), size_bytes=len(text.encode()),
            domain="legal", domain_cues=["retrieval-eval"], text=text,
            metadata={"corpus_id": corpus_id, **({"contract_id": doc["contract_id"]} if "contract_id" in doc else {})},
            ingested_at="2025-01-01T00:00:00+00:00")
        built.records.append((record, chunks, [embed_text(record.title if title else "", c) for c in chunks]))
    return built


def embed_all(embedder: Any, texts: list[str], cache_dir: Path | None) -> np.ndarray:
    key = hashlib.sha256((embedder.spec.model + "\x00" + "\x00".join(texts)).encode()).hexdigest()[:24]
    cached = cache_dir / f"vectors-{key}.npy" if cache_dir else None
    if cached is not None and cached.is_file():
        log(f"vectors from cache {cached}")
        return np.load(cached)
    started = time.perf_counter()
    out = []
    step = 512
    for i in range(0, len(texts), step):
        out.append(embedder.encode(texts[i : i + step]))
        done = min(i + step, len(texts))
        rate = done / (time.perf_counter() - started)
        log(f"  embedded {done}/{len(texts)} ({rate:.1f} texts/s, ~{(len(texts) - done) / rate:.0f} s left)")
    vectors = np.vstack(out).astype(np.float32) if out else np.zeros((0, embedder.dim), np.float32)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.save(cached, vectors)
    return vectors


# --------------------------------------------------------------------------- metrics


def to_documents(hits: list[Any], id_map: dict[str, str], limit: int) -> list[str]:
    """Chunk hits (best first) -> corpus ids of distinct documents in first-occurrence order."""
    seen: dict[str, None] = {}
    for hit in hits:
        corpus_id = id_map.get(hit.document_id)
        if corpus_id is not None and corpus_id not in seen:
            seen[corpus_id] = None
            if len(seen) >= limit:
                break
    return list(seen)


def metrics(ranked: list[str], relevant: dict[str, int], k: int) -> dict[str, float]:
    top = ranked[:k]
    dcg = sum(relevant.get(d, 0) / math.log2(i + 2) for i, d in enumerate(top))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    positives = {d for d, g in relevant.items() if g > 0}
    first = next((i + 1 for i, d in enumerate(top) if d in positives), None)
    return {
        "ndcg": dcg / idcg if idcg else 0.0,
        "recall": len(positives & set(top)) / len(positives) if positives else 0.0,
        "mrr": 1.0 / first if first else 0.0,
    }


def first_relevant_rank(ranked: list[str], relevant: dict[str, int]) -> int | None:
    return next((i + 1 for i, d in enumerate(ranked) if relevant.get(d, 0) > 0), None)


# Offline fusions of this run's own keyword and vector CHUNK lists (diagnostics, not the store):
# name -> (keyword weight, vector weight, candidate depth per list or None for all --chunk-k).
# "rrf-1:1" is equal-weight RRF (k=60): what the store's hybrid does when the embedding model covers the
# query's language; where it matches the store's hybrid, the analysis is faithful.
DIAGNOSTIC_FUSIONS: dict[str, tuple[float, float, int | None]] = {
    "rrf-1:1": (1.0, 1.0, None),
    "rrf-1:1@50": (1.0, 1.0, 50),
    "rrf-1:0.5": (1.0, 0.5, None),
    "rrf-1:0.25": (1.0, 0.25, None),
    "rrf-0.5:1": (0.5, 1.0, None),
}


def weighted_rrf(lists: list[tuple[list[tuple[str, str]], float]], depth: int | None, k: int = RRF_K) -> list[str]:
    """Fuse chunk lists ``[(chunk_id, corpus_id)]`` with per-list weights; returns chunks' corpus ids, best first."""
    scores: dict[str, float] = defaultdict(float)
    owner: dict[str, str] = {}
    for ranked, weight in lists:
        for i, (chunk_id, corpus_id) in enumerate(ranked[:depth] if depth else ranked):
            scores[chunk_id] += weight / (k + i + 1)
            owner[chunk_id] = corpus_id
    order = sorted(scores, key=lambda c: (-scores[c], c))
    return [owner[c] for c in order]


def distinct(ids: list[str], limit: int) -> list[str]:
    return list(dict.fromkeys(ids))[:limit]


# --------------------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> dict[str, Any]:
    from kontor.paths import TenantPaths
    from kontor.servers.lakehouse.embeddings import get_embedder
    from kontor.servers.lakehouse.store import LakehouseStore
    from kontor.settings import Settings

    ds = load_dataset(Path(args.data), args.qrels)
    queries = [q for q in ds.queries if str(q["_id"]) in ds.qrels]
    if args.limit_queries:
        queries = queries[: args.limit_queries]
    log(f"{ds.name}: {len(ds.corpus)} documents, {len(queries)} judged queries ({ds.qrels_file})")

    settings = Settings(data_root=Path(tempfile.gettempdir()), tenant=TENANT)  # model settings only
    embedder = get_embedder(settings.embedding_model, settings.embedding_device, settings.embedding_batch_size)

    started = time.perf_counter()
    built = plan_documents(ds)
    log(f"chunked into {built.chunks} chunks ({time.perf_counter() - started:.1f} s); embedding them")
    texts = [t for _, _, ts in built.records for t in ts]
    t0 = time.perf_counter()
    vectors = embed_all(embedder, texts, Path(args.cache_dir) if args.cache_dir else None)
    embed_seconds = time.perf_counter() - t0
    id_map = {rec.document_id: rec.metadata["corpus_id"] for rec, _, _ in built.records}

    tmp = Path(tempfile.mkdtemp(prefix="kontor-retrieval-eval-"))
    store: Any = None
    try:
        store = LakehouseStore(TenantPaths(tmp / "data", TENANT).ensure(), embedder.spec)
        t0 = time.perf_counter()
        offset = 0
        for i in range(0, len(built.records), WRITE_BATCH_DOCS):
            batch = []
            for rec, chunks, _ in built.records[i : i + WRITE_BATCH_DOCS]:
                batch.append((rec, chunks, vectors[offset : offset + len(chunks)], []))
                offset += len(chunks)
            store.write_documents(batch)
        store.optimize()
        write_seconds = time.perf_counter() - t0
        log(f"written and optimized in {write_seconds:.1f} s: {_short(store.stats())}")

        qvecs = embedder.encode([str(q["text"]) for q in queries])
        per_query: list[dict[str, Any]] = []
        all_modes = (*MODES, *DIAGNOSTIC_FUSIONS)
        sums: dict[str, dict[str, float]] = {m: defaultdict(float) for m in all_modes}
        search_ms: dict[str, list[float]] = {m: [] for m in MODES}
        for n, (q, qv) in enumerate(zip(queries, qvecs, strict=True)):
            qid = str(q["_id"])
            relevant = ds.qrels[qid]
            filters = {"source_prefix": f"{q['contract_id']}/"} if q.get("contract_id") else None
            ranked: dict[str, list[str]] = {}
            chunk_lists: dict[str, list[tuple[str, str]]] = {}
            for mode in MODES:
                t1 = time.perf_counter()
                hits = store.search(str(q["text"]), qv, k=args.chunk_k, mode=mode, filters=filters)
                search_ms[mode].append((time.perf_counter() - t1) * 1000)
                ranked[mode] = to_documents(hits, id_map, max(args.k, 100))
                chunk_lists[mode] = [(h.chunk_id, id_map.get(h.document_id, "")) for h in hits]
            for name, (w_kw, w_vec, depth) in DIAGNOSTIC_FUSIONS.items():
                fused = weighted_rrf([(chunk_lists["keyword"], w_kw), (chunk_lists["vector"], w_vec)], depth)
                ranked[name] = distinct([d for d in fused if d], max(args.k, 100))
            row: dict[str, Any] = {"query_id": qid, "query": q["text"], "relevant": sorted(relevant)}
            for mode, docs in ranked.items():
                m = metrics(docs, relevant, args.k)
                for name, value in m.items():
                    sums[mode][name] += value
                row[mode] = {"first_relevant_rank": first_relevant_rank(docs, relevant), "top": docs[: args.k],
                             "retrieved_docs": len(docs), **{k: round(v, 4) for k, v in m.items()}}
            per_query.append(row)
            if (n + 1) % 50 == 0:
                log(f"  {n + 1}/{len(queries)} queries")
        nq = len(queries)
        summary = {
            mode: {"mode": mode, f"ndcg@{args.k}": round(sums[mode]["ndcg"] / nq, 4),
                   f"recall@{args.k}": round(sums[mode]["recall"] / nq, 4),
                   f"mrr@{args.k}": round(sums[mode]["mrr"] / nq, 4), "queries": nq}
            for mode in all_modes
        }
        if args.per_query:
            with open(args.per_query, "w", encoding="utf-8") as fh:
                for row in per_query:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        return {
            "dataset": ds.name, "documents": len(built.records), "chunks": built.chunks, "queries": nq,
            "qrels": ds.qrels_file, "k": args.k, "chunk_k": args.chunk_k,
            "embed_seconds": round(embed_seconds, 1), "write_optimize_seconds": round(write_seconds, 1),
            "search_p50_ms": {m: round(float(np.percentile(v, 50)), 1) for m, v in search_ms.items() if v},
            "summary": summary, "diagnosis": diagnose(per_query, args.k),
        }
    finally:
        if store is not None and hasattr(store, "close"):
            store.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _short(stats: Any) -> str:
    text = json.dumps(stats, default=str)
    return text if len(text) < 300 else text[:300] + "…"


def diagnose(per_query: list[dict[str, Any]], k: int) -> dict[str, Any]:
    """Where hybrid stands against the single modes, query by query (first relevant document rank)."""

    def rank(row: dict[str, Any], mode: str) -> float:
        r = row[mode]["first_relevant_rank"]
        return r if r is not None and r <= k else math.inf

    out: dict[str, Any] = {"better_than_both": 0, "worse_than_best_single": 0, "ties_best_single": 0,
                           "missed_by_hybrid_found_by_one": 0, "found_by_hybrid_missed_by_both": 0,
                           "hybrid_ranks_worse_than_offline_rrf": 0, "loss_examples": []}
    for row in per_query:
        h, kw, v = rank(row, "hybrid"), rank(row, "keyword"), rank(row, "vector")
        best = min(kw, v)
        if h < best:
            out["better_than_both"] += 1
        elif h > best:
            out["worse_than_best_single"] += 1
            if len(out["loss_examples"]) < 8:
                out["loss_examples"].append({"query_id": row["query_id"], "query": str(row["query"])[:90],
                                             "hybrid": _r(h), "keyword": _r(kw), "vector": _r(v),
                                             "rrf-1:1": _r(rank(row, "rrf-1:1")),
                                             "rrf-1:0.25": _r(rank(row, "rrf-1:0.25"))})
        else:
            out["ties_best_single"] += 1
        if h == math.inf and best < math.inf:
            out["missed_by_hybrid_found_by_one"] += 1
        if h < math.inf and best == math.inf:
            out["found_by_hybrid_missed_by_both"] += 1
        if h > rank(row, "rrf-1:1"):
            out["hybrid_ranks_worse_than_offline_rrf"] += 1
    return out


def _r(value: float) -> int | None:
    return None if value == math.inf else int(value)


def print_human(r: dict[str, Any]) -> None:
    k = r["k"]
    print(f"Retrieval evaluation: {r['dataset']} ({r['documents']} documents, {r['chunks']} chunks, "
          f"{r['queries']} queries, qrels {r['qrels']}, {r['chunk_k']} chunks per search)")
    print(f"  {'mode':<12} {f'nDCG@{k}':>9} {f'Recall@{k}':>10} {f'MRR@{k}':>8} {'p50 ms':>8}")
    for mode, s in r["summary"].items():
        p50 = r["search_p50_ms"].get(mode)
        note = "" if mode in MODES else "  (diagnostic)"
        print(f"  {mode:<12} {s[f'ndcg@{k}']:>9.4f} {s[f'recall@{k}']:>10.4f} {s[f'mrr@{k}']:>8.4f} "
              f"{'' if p50 is None else p50:>8}{note}")
    print("  diagnostic rows: rrf-W:V = RRF (k=60) of this run's keyword and vector chunk lists, weights keyword W, "
          "vector V;\n  @50 = only the top 50 chunks of each list (the store's candidate depth for k <= 16). "
          "rrf-1:1 = equal weights (the store's hybrid for queries in a language the model covers).")
    best_single = max(r["summary"][m][f"ndcg@{k}"] for m in ("keyword", "vector"))
    hybrid = r["summary"]["hybrid"][f"ndcg@{k}"]
    verdict = "meets" if hybrid >= best_single else "MISSES"
    print(f"  target hybrid nDCG@{k} >= best single mode ({best_single:.4f}): {hybrid:.4f} ({verdict})")
    d = r["diagnosis"]
    print(f"  per query (rank of the first relevant document within {k}): hybrid better than both "
          f"{d['better_than_both']}, tie with the best {d['ties_best_single']}, worse than the best "
          f"{d['worse_than_best_single']}; missed by hybrid but found by a single mode "
          f"{d['missed_by_hybrid_found_by_one']}; hybrid worse than offline RRF "
          f"{d['hybrid_ranks_worse_than_offline_rrf']}")
    for ex in d["loss_examples"]:
        print(f"    loss {ex['query_id']}: hybrid {ex['hybrid']}, keyword {ex['keyword']}, vector {ex['vector']}, "
              f"offline rrf-1:1 {ex['rrf-1:1']}, rrf-1:0.25 {ex['rrf-1:0.25']}  {ex['query']!r}")
    print(f"  build: embedding {r['embed_seconds']} s, write+optimize {r['write_optimize_seconds']} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/)")
    parser.add_argument("--json", action="store_true", help="one JSON object per mode, one per line")
    parser.add_argument("--k", type=int, default=10, help="cut-off of the metrics (default 10)")
    parser.add_argument("--limit-queries", type=int, default=0, help="evaluate only the first N judged queries")
    parser.add_argument("--chunk-k", type=int, default=100, help="chunks fetched per search (default 100)")
    parser.add_argument("--qrels", default=None, help="qrels file name in qrels/ (default dev.tsv, else the first)")
    parser.add_argument("--cache-dir", default=None,
                        help="optional folder to cache corpus vectors between runs (off by default)")
    parser.add_argument("--per-query", default=None, help="optional JSONL file for per-query ranks per mode")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    result = run(args)
    if args.json:
        for mode in MODES:
            print(json.dumps(result["summary"][mode]))
        print(json.dumps({"diagnosis": result["diagnosis"],
                          "diagnostic_fusions": {m: result["summary"][m] for m in DIAGNOSTIC_FUSIONS},
                          "search_p50_ms": result["search_p50_ms"]}, ensure_ascii=False), file=sys.stderr)
    else:
        print_human(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
