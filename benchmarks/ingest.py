"""Ingestion throughput on a generated mixed corpus, and the embedding efficiency inside the pipeline.

What it does, all below one ``tempfile.mkdtemp()`` folder that is removed at the end:

1. Generates ``--docs`` (default 2,000) German B2B documents with a fixed seed: Markdown, TXT,
   CSV (``;``, cp1252, decimal commas), HTML, small DOCX (python-docx), small PDFs (reportlab),
   JSON orders and a few BMEcat 2005 catalogs with ETIM classes.
2. Ingests the folder with :class:`IngestService` (one tenant, a fresh data root, a 2-worker
   :class:`ParserPool`) and reports documents/s, chunks/s and the total wall time.
3. Measures embedding inside the pipeline: the embedder handed to the service is wrapped so that
   every ``encode`` call adds its wall time and texts. Afterwards the very same texts are encoded
   with the raw ``SentenceTransformer.encode`` of the same model object (one call, the batch
   size from the settings, ``normalize_embeddings=True``): the baseline. Both paths are warmed
   up first. The figure is the ratio pipeline texts/s / raw texts/s (target >= 0.8).
4. Because the machine may be shared, two load-robust cross-checks come with it: a *paired*
   baseline (each pipeline call is also encoded raw right beside it, alternating which goes first;
   that time is taken out of the ingest total) and the same ratios in process CPU time. The padded
   token positions of both ways of calling the model (counted with the tokenizer, no timing) show
   how much of a gap the call sizes alone explain.

Run: ``.venv/bin/python benchmarks/ingest.py [--docs N] [--seed S] [--json] [--no-paired]``.
Progress goes to stderr; the figures to stdout. No timing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TARGET_RATIO = 0.8
TENANT = "bench"


def log(message: str) -> None:
    print(f"[ingest-bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- German-ish B2B text

COMPANIES = [
    "Müller Elektrotechnik GmbH", "Schäfer & Söhne KG", "Becker Industriebedarf AG", "Hoffmann Schaltanlagen GmbH",
    "Wagner Antriebstechnik GmbH", "Schulz Logistik GmbH & Co. KG", "Keller Gebäudetechnik e.K.",
    "Fischer Metallbau GmbH", "Weber Kabelsysteme GmbH", "Zimmermann Steuerberatung PartG mbB",
]
CITIES = ["München", "Stuttgart", "Köln", "Düsseldorf", "Nürnberg", "Leipzig", "Dortmund", "Bremen", "Würzburg"]
PRODUCTS = [
    ("Leistungsschalter", "EC000228"), ("Motorschutzschalter", "EC000074"), ("Durchgangsklemme", "EC000897"),
    ("Schütz", "EC000066"), ("Sicherungsautomat", "EC000042"), ("Fehlerstromschutzschalter", "EC000003"),
    ("Kabelverschraubung", "EC000441"), ("Reihenklemme", "EC000898"), ("Steckverbinder", "EC002637"),
    ("Hutschienennetzteil", "EC002540"), ("Frequenzumrichter", "EC001857"), ("Kabelkanal", "EC000492"),
    ("Installationsrohr", "EC000986"), ("Erdungsklemme", "EC000899"), ("Edelstahlschraube", "EC000479"),
    ("Überspannungsschutz", "EC000941"), ("Schaltschrankleuchte", "EC001743"), ("Endschalter", "EC000030"),
]
ADJECTIVES = ["grau", "dreipolig", "vierpolig", "halogenfrei", "feuerverzinkt", "schraubenlos", "steckbar",
              "wartungsfrei", "korrosionsbeständig", "UV-beständig", "selbstverlöschend", "IP65-geschützt"]
LEGAL_NOUNS = ["Kündigungsfrist", "Gewährleistungsfrist", "Haftungsbeschränkung", "Vertragsstrafe",
               "Geheimhaltungsvereinbarung", "Eigentumsvorbehalt", "Gerichtsstand", "Lieferverzug",
               "Mängelrüge", "Schadensersatzanspruch", "Rahmenvertrag", "Auftragsverarbeitung"]
LAWS = ["§ 280 BGB", "§ 323 BGB", "§ 377 HGB", "§ 438 BGB", "§ 309 Nr. 7 BGB", "Art. 28 DSGVO", "§ 14 UStG",
        "§ 8b KStG", "§ 4 Abs. 4 EStG", "§ 15a UStG", "§ 147 AO", "§ 257 HGB"]
TAX_NOUNS = ["Umsatzsteuervoranmeldung", "Vorsteuerabzug", "Körperschaftsteuer", "Gewerbesteuermessbetrag",
             "Betriebsprüfung", "Rückstellung", "Abschreibung", "Jahresabschluss", "Reverse-Charge-Verfahren",
             "innergemeinschaftliche Lieferung", "Organschaft", "Verrechnungspreisdokumentation"]
VERBS = ["regelt", "betrifft", "umfasst", "begrenzt", "verlängert", "ersetzt", "ergänzt", "konkretisiert"]
OPENERS = ["Gemäß", "Abweichend von", "Im Rahmen von", "Unter Berücksichtigung von", "Nach Maßgabe von"]


def gtin(rng: random.Random) -> str:
    digits = [rng.randint(0, 9) for _ in range(12)]
    digits[0], digits[1], digits[2] = 4, 0, rng.randint(0, 9)
    total = sum(d * (3 if i % 2 else 1) for i, d in enumerate(digits))
    return "".join(map(str, digits)) + str((10 - total % 10) % 10)


def sentence(rng: random.Random, domain: str) -> str:
    if domain == "legal":
        noun, law = rng.choice(LEGAL_NOUNS), rng.choice(LAWS)
        forms = [
            f"{rng.choice(OPENERS)} {law} {rng.choice(VERBS)} die {noun} die Pflichten beider Vertragsparteien.",
            f"Die {noun} beträgt {rng.randint(2, 24)} Monate ab Gefahrübergang, sofern nichts anderes vereinbart ist.",
            f"Der Auftragnehmer haftet für leichte Fahrlässigkeit nur bei Verletzung wesentlicher Vertragspflichten "
            f"({law}).",
            f"Die Kündigung bedarf der Schriftform und ist mit einer Frist von {rng.randint(1, 6)} Monaten zum "
            f"Quartalsende zulässig.",
        ]
    elif domain == "tax":
        noun, law = rng.choice(TAX_NOUNS), rng.choice(LAWS)
        forms = [
            f"Die {noun} für das Wirtschaftsjahr {rng.randint(2018, 2025)} ist nach {law} zu berücksichtigen.",
            f"Für die {noun} wurde ein Betrag von {rng.randint(1, 900)}.{rng.randint(100, 999)},00 EUR angesetzt.",
            f"{rng.choice(OPENERS)} {law} ist der {rng.choice(['Vorsteuerabzug', 'Betriebsausgabenabzug'])} "
            f"nur mit ordnungsgemäßer Rechnung möglich.",
            f"Die Aufbewahrungsfrist für Buchungsbelege beträgt zehn Jahre ({law}).",
        ]
    else:
        name, etim = rng.choice(PRODUCTS)
        forms = [
            f"Der {name} ist {rng.choice(ADJECTIVES)} und für die Hutschienenmontage im Schaltschrank geeignet.",
            f"Artikel {name} (ETIM-Klasse {etim}, GTIN {gtin(rng)}) ist ab Lager {rng.choice(CITIES)} lieferbar.",
            f"Die Mindestbestellmenge beträgt {rng.choice([10, 25, 50, 100])} Stück, die Lieferzeit "
            f"{rng.randint(2, 15)} Werktage.",
            f"Bemessungsspannung {rng.choice([230, 400, 690])} V, Bemessungsstrom {rng.choice([6, 10, 16, 25, 63])} A, "
            f"Schutzart IP{rng.choice([20, 54, 65, 67])}.",
        ]
    return rng.choice(forms)


def paragraph(rng: random.Random, domain: str, lo: int = 1, hi: int = 3) -> str:
    return " ".join(sentence(rng, domain) for _ in range(rng.randint(lo, hi)))


def title(rng: random.Random, domain: str, i: int) -> str:
    if domain == "legal":
        return f"{rng.choice(['Rahmenvertrag', 'Liefervertrag', 'Wartungsvertrag', 'NDA'])} {rng.choice(COMPANIES)}"
    if domain == "tax":
        return f"{rng.choice(['Steuerbescheid', 'Prüfbericht', 'Aktennotiz', 'Mandantenbrief'])} {2018 + i % 8}"
    return f"Produktinformation {rng.choice(PRODUCTS)[0]} {i}"


# --------------------------------------------------------------------------- file writers


def write_md(path: Path, rng: random.Random, domain: str, i: int) -> None:
    parts = [f"# {title(rng, domain, i)}", ""]
    for s in range(rng.randint(1, 2)):
        parts += [f"## {s + 1}. Abschnitt", "", paragraph(rng, domain), ""]
    if rng.random() < 0.5:
        parts += [f"- {sentence(rng, domain)}" for _ in range(rng.randint(2, 4))] + [""]
    path.write_text("\n".join(parts), encoding="utf-8")


def write_txt(path: Path, rng: random.Random, domain: str, i: int) -> None:
    paras = [title(rng, domain, i)] + [paragraph(rng, domain) for _ in range(rng.randint(1, 2))]
    path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")


def write_csv(path: Path, rng: random.Random, domain: str, i: int) -> None:
    rows = ["Artikelnummer;Bezeichnung;Eigenschaft;Preis;Währung;Lager"]
    for _ in range(rng.randint(4, 12)):
        name, _etim = rng.choice(PRODUCTS)
        price = f"{rng.randint(0, 2500)},{rng.randint(0, 99):02d}"
        rows.append(f"{rng.randint(100000, 999999)}-{rng.choice('ABCDEFG')};{name} {rng.choice(ADJECTIVES)};"
                    f"Größe {rng.randint(1, 5)};{price};€;{rng.choice(CITIES)}")
    path.write_bytes(("\r\n".join(rows) + "\r\n").encode("cp1252"))


def write_html(path: Path, rng: random.Random, domain: str, i: int) -> None:
    t = escape(title(rng, domain, i))
    body = [f"<h1>{t}</h1>"] + [f"<p>{escape(paragraph(rng, domain))}</p>" for _ in range(rng.randint(1, 2))]
    if rng.random() < 0.4:
        body.append("<table><tr><th>Position</th><th>Menge</th><th>Preis</th></tr>")
        for p in range(rng.randint(2, 6)):
            body.append(f"<tr><td>{p + 1} {rng.choice(PRODUCTS)[0]}</td><td>{rng.randint(1, 500)}</td>"
                        f"<td>{rng.randint(1, 999)},{rng.randint(0, 99):02d} €</td></tr>")
        body.append("</table>")
    html = (f'<!DOCTYPE html><html lang="de"><head><meta charset="utf-8"><title>{t}</title></head>'
            f"<body><nav>Startseite | Kontakt | Impressum</nav>{''.join(body)}<footer>© {escape(rng.choice(COMPANIES))}"
            "</footer></body></html>")
    path.write_text(html, encoding="utf-8")


def write_docx(path: Path, rng: random.Random, domain: str, i: int) -> None:
    import docx

    document = docx.Document()
    document.add_heading(title(rng, domain, i), level=1)
    for s in range(rng.randint(1, 2)):
        document.add_heading(f"§ {s + 1} {rng.choice(LEGAL_NOUNS if domain == 'legal' else TAX_NOUNS)}", level=2)
        document.add_paragraph(paragraph(rng, domain))
    if rng.random() < 0.3:
        table = document.add_table(rows=1, cols=3)
        for cell, text in zip(table.rows[0].cells, ["Position", "Beschreibung", "Betrag"], strict=True):
            cell.text = text
        for p in range(rng.randint(2, 5)):
            cells = table.add_row().cells
            cells[0].text, cells[1].text, cells[2].text = str(p + 1), rng.choice(TAX_NOUNS), f"{rng.randint(1, 99)} €"
    document.save(str(path))


def _wrap(text: str, width: int = 95) -> list[str]:
    lines, current = [], ""
    for word in text.split():
        if current and len(current) + 1 + len(word) > width:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}".strip()
    return lines + ([current] if current else [])


def write_pdf(path: Path, rng: random.Random, domain: str, i: int) -> None:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=A4)
    for page in range(1):
        y = 800
        c.setFont("Helvetica-Bold", 13)
        c.drawString(60, y, title(rng, domain, i) if page == 0 else f"Seite {page + 1}")
        c.setFont("Helvetica", 10)
        y -= 24
        for _ in range(rng.randint(1, 3)):
            for line in _wrap(paragraph(rng, domain)):
                c.drawString(60, y, line)
                y -= 14
            y -= 10
        c.showPage()
    c.save()
    path.write_bytes(buf.getvalue())


def write_json(path: Path, rng: random.Random, domain: str, i: int) -> None:
    order = {
        "bestellung": {
            "nummer": f"B-{2024 + i % 2}-{i:05d}",
            "kunde": rng.choice(COMPANIES),
            "lieferadresse": {"ort": rng.choice(CITIES), "plz": f"{rng.randint(10000, 99999)}"},
            "zahlungsbedingungen": f"{rng.choice([14, 30, 60])} Tage netto, 2 % Skonto bei Zahlung in 10 Tagen",
            "bemerkung": sentence(rng, domain),
        },
        "positionen": [
            {"artikel": name, "etim_klasse": etim, "gtin": gtin(rng), "menge": rng.randint(1, 200),
             "einzelpreis": round(rng.uniform(0.5, 900), 2)}
            for name, etim in (rng.choice(PRODUCTS) for _ in range(rng.randint(1, 6)))
        ],
    }
    path.write_text(json.dumps(order, ensure_ascii=False, indent=2), encoding="utf-8")


def write_bmecat(path: Path, rng: random.Random, domain: str, i: int) -> None:
    products = []
    for p in range(rng.randint(10, 20)):
        name, etim = rng.choice(PRODUCTS)
        adj = rng.choice(ADJECTIVES)
        products.append(f"""
    <PRODUCT>
      <SUPPLIER_PID>K{i:03d}-{p:04d}</SUPPLIER_PID>
      <PRODUCT_DETAILS>
        <DESCRIPTION_SHORT lang="deu">{name} {adj}</DESCRIPTION_SHORT>
        <DESCRIPTION_LONG lang="deu">{escape(paragraph(rng, "product", 1, 2))}</DESCRIPTION_LONG>
        <INTERNATIONAL_PID type="gtin">{gtin(rng)}</INTERNATIONAL_PID>
        <MANUFACTURER_PID>MP-{rng.randint(10000, 99999)}</MANUFACTURER_PID>
        <MANUFACTURER_NAME>{escape(rng.choice(COMPANIES))}</MANUFACTURER_NAME>
        <KEYWORD>{name}</KEYWORD>
      </PRODUCT_DETAILS>
      <PRODUCT_FEATURES>
        <REFERENCE_FEATURE_SYSTEM_NAME>ETIM-8.0</REFERENCE_FEATURE_SYSTEM_NAME>
        <REFERENCE_FEATURE_GROUP_ID>{etim}</REFERENCE_FEATURE_GROUP_ID>
        <FEATURE><FNAME>EF000008</FNAME><FVALUE>{rng.randint(5, 120)}</FVALUE><FUNIT>MMT</FUNIT></FEATURE>
        <FEATURE><FNAME>EF005474</FNAME><FVALUE>{rng.choice([230, 400])}</FVALUE><FUNIT>VLT</FUNIT></FEATURE>
      </PRODUCT_FEATURES>
      <PRODUCT_ORDER_DETAILS><ORDER_UNIT>C62</ORDER_UNIT><CONTENT_UNIT>C62</CONTENT_UNIT></PRODUCT_ORDER_DETAILS>
      <PRODUCT_PRICE_DETAILS>
        <PRODUCT_PRICE price_type="net_list"><PRICE_AMOUNT>{rng.uniform(1, 500):.2f}</PRICE_AMOUNT>
        <PRICE_CURRENCY>EUR</PRICE_CURRENCY></PRODUCT_PRICE>
      </PRODUCT_PRICE_DETAILS>
    </PRODUCT>""")
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<BMECAT version="2005" xmlns="http://www.bmecat.org/bmecat/2005">
  <HEADER>
    <CATALOG><LANGUAGE>deu</LANGUAGE><CATALOG_ID>KAT-{i}</CATALOG_ID><CATALOG_VERSION>1.0</CATALOG_VERSION>
    <CATALOG_NAME>Katalog {escape(rng.choice(COMPANIES))}</CATALOG_NAME><CURRENCY>EUR</CURRENCY></CATALOG>
    <SUPPLIER><SUPPLIER_NAME>{escape(rng.choice(COMPANIES))}</SUPPLIER_NAME></SUPPLIER>
  </HEADER>
  <T_NEW_CATALOG>{''.join(products)}
  </T_NEW_CATALOG>
</BMECAT>
"""
    path.write_text(xml, encoding="utf-8")


WRITERS = {
    "md": write_md, "txt": write_txt, "csv": write_csv, "html": write_html, "docx": write_docx,
    "pdf": write_pdf, "json": write_json, "xml": write_bmecat,
}


def corpus_plan(n: int) -> list[str]:
    """The file kinds of an ``n``-document corpus (PDFs and BMEcat catalogs are few: slow to make / big)."""
    counts = {
        "pdf": max(3, n * 3 // 100), "xml": max(2, n // 400), "docx": max(3, n * 6 // 100),
        "csv": n * 12 // 100, "html": n * 15 // 100, "json": n * 10 // 100, "txt": n * 20 // 100,
    }
    counts["md"] = max(0, n - sum(counts.values()))
    return [kind for kind, c in counts.items() for _ in range(c)]


def generate_corpus(folder: Path, n: int, seed: int) -> Counter[str]:
    rng = random.Random(seed)
    kinds = corpus_plan(n)
    rng.shuffle(kinds)
    domains = ["legal", "tax", "product", "product"]
    made: Counter[str] = Counter()
    for i, kind in enumerate(kinds):
        domain = "product" if kind in ("csv", "xml", "json") else rng.choice(domains)
        sub = folder / f"{i // 250:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        WRITERS[kind](sub / f"dok_{i:05d}.{kind}", rng, domain, i)
        made[kind] += 1
        if (i + 1) % 500 == 0:
            log(f"generated {i + 1}/{len(kinds)} files")
    return made


# --------------------------------------------------------------------------- instrumented embedder


@dataclass
class EncodeLog:
    calls: list[list[str]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # process CPU time: less sensitive to other load
    paired_seconds: list[float] = field(default_factory=list)  # raw encode of the same call, right beside it
    paired_cpu_seconds: list[float] = field(default_factory=list)


class TimedEmbedder:
    """Delegates to an :class:`Embedder`, timing each ``encode`` call while ``recording`` is set.

    With ``paired_model`` set, every recorded call is also encoded by the raw model right before or
    after it (alternating), so both see the same load on the machine; that time is kept apart.
    """

    def __init__(self, inner: Any, paired_model: Any | None = None, batch_size: int = 64) -> None:
        self._inner = inner
        self._paired_model = paired_model
        self._batch_size = batch_size
        self.recording = False
        self.log = EncodeLog()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode(self, texts: list[str]) -> np.ndarray:
        pair = self.recording and self._paired_model is not None and bool(texts)
        raw_first = pair and len(self.log.calls) % 2 == 1
        if raw_first:
            paired = raw_encode(self._paired_model, texts, self._batch_size)
        started, cpu_started = time.perf_counter(), time.process_time()
        vectors = self._inner.encode(texts)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        if pair and not raw_first:
            paired = raw_encode(self._paired_model, texts, self._batch_size)
        if self.recording:
            self.log.calls.append(list(texts))
            self.log.seconds.append(elapsed)
            self.log.cpu_seconds.append(cpu)
            if pair:
                self.log.paired_seconds.append(paired[0])
                self.log.paired_cpu_seconds.append(paired[1])
        return vectors

    def encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]


def raw_encode(model: Any, texts: list[str], batch_size: int) -> tuple[float, float]:
    """Wall and process-CPU seconds of one raw ``SentenceTransformer.encode`` call."""
    started, cpu_started = time.perf_counter(), time.process_time()
    model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                 show_progress_bar=False)
    return time.perf_counter() - started, time.process_time() - cpu_started


def padded_tokens(model: Any, calls: list[list[str]], batch_size: int) -> int:
    """Token positions the model computes for ``calls`` (padding included), batching as
    sentence-transformers does: each call sorted by character length, cut into ``batch_size``
    batches, each batch padded to its longest text (truncated at ``max_seq_length``)."""
    unique = list(dict.fromkeys(t for call in calls for t in call))
    encoded = model.tokenizer(unique, truncation=True, max_length=model.max_seq_length)["input_ids"]
    tokens = {t: len(ids) for t, ids in zip(unique, encoded, strict=True)}
    total = 0
    for call in calls:
        ordered = sorted(call, key=len, reverse=True)
        for i in range(0, len(ordered), batch_size):
            batch = ordered[i : i + batch_size]
            total += max(tokens[t] for t in batch) * len(batch)
    return total


# --------------------------------------------------------------------------- the run


async def ingest(folder: Path, data_root: Path, embedder: TimedEmbedder) -> tuple[dict[str, Any], float]:
    from kontor.servers.ingest.parsepool import ParserPool
    from kontor.servers.ingest.pipeline import IngestService, expand_paths
    from kontor.settings import Limits, Settings

    settings = Settings(data_root=data_root, tenant=TENANT)
    limits = Limits()
    with ParserPool(limits, workers=2) as pool:
        service = IngestService(settings, limits, TENANT, pool=pool, embedder=embedder)  # type: ignore[arg-type]
        try:
            specs, problems = expand_paths([folder])
            if problems:
                log(f"{len(problems)} paths skipped by expand_paths, e.g. {problems[:3]}")
            job = await service.job_for_paths(specs, "bench")
            total = len(specs)

            async def progress(done: int, of: int, _message: str) -> None:
                log(f"ingested {done}/{of} files ({time.perf_counter() - started:.0f} s)")

            embedder.recording = True
            started = time.perf_counter()
            report = await service.run(job, progress)
            seconds = time.perf_counter() - started
            embedder.recording = False
            log(f"job {report.state}: {total} files in {seconds:.1f} s")
            return report.as_dict(), seconds
        finally:
            await service.close()


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b and not math.isnan(a) and not math.isnan(b) else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    from kontor.servers.lakehouse.embeddings import get_embedder
    from kontor.settings import Settings

    defaults = Settings(data_root=Path(tempfile.gettempdir()), tenant=TENANT)  # only for model settings
    batch_size = defaults.embedding_batch_size
    tmp = Path(tempfile.mkdtemp(prefix="kontor-bench-ingest-"))
    try:
        corpus = tmp / "corpus"
        log(f"generating {args.docs} documents (seed {args.seed}) in {corpus}")
        started = time.perf_counter()
        made = generate_corpus(corpus, args.docs, args.seed)
        corpus_bytes = sum(p.stat().st_size for p in corpus.rglob("*") if p.is_file())
        log(f"corpus: {dict(made)}, {corpus_bytes / 1e6:.1f} MB in {time.perf_counter() - started:.1f} s")

        log(f"loading embedding model {defaults.embedding_model} (batch size {batch_size})")
        inner = get_embedder(defaults.embedding_model, defaults.embedding_device, batch_size)
        model = inner._model
        embedder = TimedEmbedder(inner, model if args.paired else None, batch_size)
        warm = [paragraph(random.Random(99), d) for d in ("legal", "tax", "product") for _ in range(32)]
        embedder.encode(warm)  # warm-up of the pipeline path (not recorded)
        raw_encode(model, warm, batch_size)  # warm-up of the raw path

        report, wall_seconds = asyncio.run(ingest(corpus, tmp / "data", embedder))
        calls = embedder.log.calls
        texts = [t for call in calls for t in call]
        encode_seconds, encode_cpu = sum(embedder.log.seconds), sum(embedder.log.cpu_seconds)
        paired_seconds, paired_cpu = sum(embedder.log.paired_seconds), sum(embedder.log.paired_cpu_seconds)
        seconds = wall_seconds - paired_seconds  # the pipeline's own time: the paired raw calls taken out
        log(f"pipeline embedded {len(texts)} texts in {len(calls)} calls, {encode_seconds:.1f} s")

        log("baseline: raw SentenceTransformer.encode on the same texts (one call)")
        raw_seconds, raw_cpu = raw_encode(model, texts, batch_size) if texts else (math.nan, math.nan)

        pad_pipeline = padded_tokens(model, calls, batch_size) if texts else 0
        pad_one_call = padded_tokens(model, [texts], batch_size) if texts else 0
        n = len(texts)
        pipe_tps = n / encode_seconds if encode_seconds else math.nan
        raw_tps = n / raw_seconds if n else math.nan
        paired_tps = n / paired_seconds if paired_seconds else math.nan
        chars = [len(t) for t in texts] or [0]
        counts = report["counts"]
        failures = report.get("failures") or []
        ratio = _ratio(pipe_tps, raw_tps)
        return {
            "documents_generated": sum(made.values()),
            "files_by_kind": dict(sorted(made.items())),
            "corpus_mb": round(corpus_bytes / 1e6, 2),
            "job_state": report["state"],
            "files_ok": counts.get("ok", 0),
            "files_failed": counts.get("failed", 0),
            "files_skipped": counts.get("skipped", 0),
            "failure_examples": [f"{f.get('source')}: {f.get('reason')}" for f in failures[:5]],
            "documents": report["documents"],
            "chunks": report["chunks"],
            "total_seconds": round(seconds, 2),
            "paired_raw_seconds_excluded": round(paired_seconds, 2),
            "documents_per_s": round(report["documents"] / seconds, 2),
            "files_per_s": round(sum(made.values()) / seconds, 2),
            "chunks_per_s": round(report["chunks"] / seconds, 2),
            "embed_texts": n,
            "embed_calls": len(calls),
            "embed_texts_per_call_mean": round(n / max(1, len(calls)), 1),
            "embed_text_chars_median": int(statistics.median(chars)),
            "embed_seconds_in_pipeline": round(encode_seconds, 2),
            "embed_share_of_total": round(encode_seconds / seconds, 3),
            "pipeline_embed_texts_per_s": round(pipe_tps, 2),
            "raw_encode_seconds": round(raw_seconds, 2),
            "raw_encode_texts_per_s": round(raw_tps, 2),
            "embed_ratio_pipeline_to_raw": ratio,
            "embed_ratio_target": TARGET_RATIO,
            "embed_ratio_meets_target": bool(ratio is not None and ratio >= TARGET_RATIO),
            "embed_ratio_pipeline_to_raw_cpu_time": _ratio(raw_cpu, encode_cpu),
            "paired_raw_texts_per_s": round(paired_tps, 2) if args.paired else None,
            "embed_ratio_pipeline_to_paired": _ratio(pipe_tps, paired_tps) if args.paired else None,
            "embed_ratio_pipeline_to_paired_cpu_time": _ratio(paired_cpu, encode_cpu) if args.paired else None,
            "padded_tokens_pipeline_calls": pad_pipeline,
            "padded_tokens_one_call": pad_one_call,
            "padding_ratio_one_call_to_pipeline": _ratio(pad_one_call, pad_pipeline),
            "batch_size": batch_size,
            "ingest_batch_files": getattr(defaults, "ingest_batch_files", None),
            "model": defaults.embedding_model,
            "cpu_count": os.cpu_count(),
            "loadavg_1m_at_end": round(os.getloadavg()[0], 2),  # the machine is shared: context for the timings
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def print_human(r: dict[str, Any]) -> None:
    print("Kontor ingest benchmark")
    print(f"  corpus: {r['documents_generated']} files {r['files_by_kind']} ({r['corpus_mb']} MB)")
    print(f"  job {r['job_state']}: ok {r['files_ok']}, failed {r['files_failed']}, skipped {r['files_skipped']}")
    for example in r["failure_examples"]:
        print(f"    failure: {example}")
    excluded = (f" (the {r['paired_raw_seconds_excluded']} s of paired raw encode calls taken out)"
                if r["paired_raw_texts_per_s"] is not None else "")
    print(f"  documents {r['documents']}, chunks {r['chunks']}, total {r['total_seconds']} s{excluded}")
    print(f"  throughput: {r['documents_per_s']} documents/s, {r['chunks_per_s']} chunks/s")
    print(f"  embedding in the pipeline: {r['embed_texts']} texts in {r['embed_calls']} calls "
          f"(mean {r['embed_texts_per_call_mean']}/call, median {r['embed_text_chars_median']} chars), "
          f"{r['embed_seconds_in_pipeline']} s = {r['embed_share_of_total']:.0%} of the total")
    print(f"    pipeline encode:                    {r['pipeline_embed_texts_per_s']} texts/s")
    print(f"    raw SentenceTransformer.encode:     {r['raw_encode_texts_per_s']} texts/s (same texts, one call "
          f"afterwards, batch size {r['batch_size']}; the pipeline's batches hold {r['ingest_batch_files']} files)")
    if r["paired_raw_texts_per_s"] is not None:
        print(f"    raw encode, paired with each call:  {r['paired_raw_texts_per_s']} texts/s (same call sizes, "
              "run right beside each pipeline call)")
    print(f"    padded token positions: pipeline's calls {r['padded_tokens_pipeline_calls']}, one call "
          f"{r['padded_tokens_one_call']} -> ratio {r['padding_ratio_one_call_to_pipeline']} (what call sizes "
          "alone predict for pipeline/raw)")
    paired_cpu = r["embed_ratio_pipeline_to_paired_cpu_time"]
    print(f"    by process CPU time (less sensitive to other load): pipeline/raw "
          f"{r['embed_ratio_pipeline_to_raw_cpu_time']}" + (f", pipeline/paired {paired_cpu}" if paired_cpu else ""))
    print(f"  load average (1 min) at the end {r['loadavg_1m_at_end']} on {r['cpu_count']} CPUs")
    verdict = "meets" if r["embed_ratio_meets_target"] else "MISSES"
    paired = r["embed_ratio_pipeline_to_paired"]
    print(f"  embedding ratio pipeline/raw = {r['embed_ratio_pipeline_to_raw']} (target >= {r['embed_ratio_target']}, "
          f"{verdict})" + (f"; pipeline/paired raw = {paired}" if paired is not None else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=2000, help="documents to generate (default 2000)")
    parser.add_argument("--seed", type=int, default=20240501)
    parser.add_argument("--json", action="store_true", help="print one JSON object with all figures")
    parser.add_argument("--no-paired", dest="paired", action="store_false",
                        help="skip the paired baseline (raw encode of each pipeline call right beside it); "
                             "saves one embedding pass")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    result = run(args)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print_human(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
