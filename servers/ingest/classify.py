"""Deterministic, explainable domain classification: tax | legal | product | general.

Each domain has weighted German and English cue patterns. A document's score for a domain is the sum of
``weight × min(count, CAP)`` over its cues (title hits count three times), so one word repeated a
thousand times cannot decide alone. The best domain wins if its score reaches THRESHOLD; ties go to the
fixed order of DOMAINS. The returned cues ("keyword 'KStG' ×12") say why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DOMAINS = ("product", "tax", "legal")
"""Tie-break order: a catalog that also mentions VAT is a catalog; a tax statute quoting § is tax."""

THRESHOLD = 8.0
CAP = 25
TITLE_FACTOR = 3
MAX_TEXT_CHARS = 400_000


@dataclass(frozen=True)
class Cue:
    label: str
    pattern: re.Pattern[str]
    weight: float


def _cue(label: str, regex: str, weight: float, *, case: bool = False) -> Cue:
    return Cue(label, re.compile(regex, 0 if case else re.IGNORECASE), weight)


CUES: dict[str, list[Cue]] = {
    "tax": [
        _cue("Körperschaftsteuer", r"k[öo]rperschafts?steuer\w*", 3),
        _cue("Gewerbesteuer", r"gewerbesteuer\w*", 3),
        _cue("Umsatzsteuer", r"umsatzsteuer\w*|mehrwertsteuer\w*|vorsteuer\w*", 3),
        _cue("Einkommensteuer", r"einkommens?steuer\w*|lohnsteuer\w*|kapitalertragsteuer\w*", 3),
        _cue("KStG", r"\bKStG\b", 3, case=True),
        _cue("EStG", r"\bEStG\b", 3, case=True),
        _cue("GewStG", r"\bGewStG\b", 3, case=True),
        _cue("UStG", r"\bUStG\b", 3, case=True),
        _cue("AO", r"\bAbgabenordnung\b|\bAO\b(?= ?[§\d])", 2, case=True),
        _cue("SolZG", r"\bSolZG\b|solidarit[äa]tszuschlag\w*", 3),
        _cue("Hebesatz", r"\bhebes[äa]tze?s?\b", 3),
        _cue("Finanzamt", r"\bfinanz[äa]mt\w*|\bfinanzverwaltung\b|\bfinanzbeh[öo]rde\w*", 2),
        _cue("Steuer", r"\bsteuer(?!ung|ger[äa]t|kreis|spannung|leitung|einheit|ventil|signal|eingang|"
                       r"ausgang|bar|n\b)\w*", 1.5),
        _cue("Bilanz", r"\bbilanz\w*|\bbilanzier\w*", 1.5),
        _cue("Veranlagung", r"\bveranlag\w*", 2),
        _cue("Gewinnausschüttung", r"gewinnaussch[üu]ttung\w*|\borganschaft\w*|\bfreibetr[äa]g\w*", 2),
        _cue("Betriebsausgaben", r"\bbetriebsausgab\w*|\bbetriebseinnahm\w*|\babschreibung\w*|\bAfA\b", 1.5),
        _cue("Steuerbescheid", r"steuerbescheid\w*|steuererkl[äa]rung\w*|steuerpflicht\w*", 2),
        _cue("tax", r"\btax(?:es|ed|ation|able|payers?)?\b", 1),
        _cue("VAT", r"\bVAT\b|value[- ]added tax", 1.5),
        _cue("corporate income tax", r"corporate (?:income )?tax|income tax|trade tax|withholding tax", 2),
        _cue("tax return", r"\btax (?:return|office|authority|authorities|assessment|rate)s?\b", 2),
        _cue("balance sheet", r"\bbalance sheets?\b|\bdepreciation\b", 1),
    ],
    "legal": [
        _cue("Vertrag", r"vertr[aä]g(?!sstaat)\w*", 1.5),
        _cue("Vereinbarung", r"vereinbarung\w*", 1.5),
        _cue("§", r"§", 0.3),
        _cue("BGB", r"\bBGB\b", 3, case=True),
        _cue("HGB", r"\bHGB\b", 1, case=True),
        _cue("AGB", r"\bAGB\b|allgemeine[n]? gesch[äa]ftsbedingungen", 3),
        _cue("Kündigung", r"k[üu]ndig\w*", 2),
        _cue("Haftung", r"(?<!beschr[äa]nkter )(?<!beschraenkter )\bhaftung\w*|\bhaft(?:et|en)\b", 1.5),
        _cue("Gewährleistung", r"gew[äa]hrleistung\w*|\bm[äa]ngel\w*", 2),
        _cue("Schadensersatz", r"schadens?ersatz\w*", 2),
        _cue("Gerichtsstand", r"gerichtsstand\w*|\bschiedsgericht\w*|\bgerichtlich\w*", 2),
        _cue("Vertragspartei", r"vertragspart\w*|\bauftraggeber\w*|\bauftragnehmer\w*", 2),
        _cue("Widerruf", r"\bwiderruf\w*|\brücktritt\w*|\bklausel\w*", 1.5),
        _cue("agreement", r"\bagreements?\b", 2),
        _cue("party", r"\bpart(?:y|ies)\b", 1.5),
        _cue("hereby", r"\bhereby\b|\bherein(?:after)?\b|\bhereunder\b|\bthereof\b|\bhereto\b", 1.5),
        _cue("indemnify", r"\bindemnif\w*", 3),
        _cue("governing law", r"governing law|\bjurisdiction\b|\barbitration\b", 3),
        _cue("termination", r"\bterminat(?:e|es|ed|ion)\b", 2),
        _cue("warranty", r"\bwarrant(?:y|ies)\b", 1.5),
        _cue("liability", r"\bliabilit(?:y|ies)\b|\bliable\b", 1.5),
        _cue("breach", r"\bbreach\w*\b", 1.5),
        _cue("whereas", r"\bwhereas\b|in witness whereof", 3),
        _cue("shall", r"\bshall\b", 0.5),
        _cue("confidential", r"\bconfidential\w*", 1),
    ],
    "product": [
        _cue("BMEcat", r"\bBMEcat\b", 4),
        _cue("ETIM", r"\bETIM\b", 3),
        _cue("ECLASS", r"\becl@ss\b|\beclass\b", 3),
        _cue("ETIM code", r"\bE[FCGVU]\d{6}\b", 2, case=True),
        _cue("GTIN/EAN", r"\bGTIN\b|\bEAN(?:-?13)?\b", 2),
        _cue("Artikelnummer", r"artikelnummer\w*|\bart\.?-nr\.?|\bSKU\b|part number|\bMPN\b", 2),
        _cue("Datenblatt", r"datenbl[äa]tt\w*|\bdata ?sheets?\b|technische daten|technical data", 3),
        _cue("Nennspannung", r"nennspannung\w*|nennstrom\w*|rated (?:voltage|current|power)", 2),
        _cue("IP-Schutzart", r"\bIP-?Schutzart\b|\bschutzart\b|\bschutzklasse\b|\bIP ?[0-6X][0-9X]\b", 2),
        _cue("Betriebstemperatur", r"betriebstemperatur\w*|operating temperature|umgebungstemperatur", 2),
        _cue("Verpackungseinheit", r"verpackungseinheit\w*|bestelleinheit\w*|\bVPE\b|order unit", 2),
        _cue("Hersteller", r"\bhersteller\w*|\bmanufacturer\b", 1),
        _cue("Abmessungen", r"\babmessung\w*|\bdimensions?\b|\bgewicht\b|\bweight\b", 1),
        _cue("Listenpreis", r"\blistenpreis\w*|\bUVP\b|\bnettopreis\w*|\blist price\b", 1.5),
        _cue("Produktkatalog", r"produktkatalog\w*|\bproduct catalog(?:ue)?\b|\bsortiment\w*", 2),
    ],
}


def _counts(cue: Cue, title: str, text: str) -> int:
    return len(cue.pattern.findall(text)) + TITLE_FACTOR * len(cue.pattern.findall(title))


def classify_domain(
    title: str, text: str, mime: str, has_products: bool, *, product_count: int | None = None
) -> tuple[str, list[str]]:
    """The domain of a document and the human-readable cues that decided it.

    ``has_products`` (a BMEcat catalog with parsed products) decides "product" at once; pass
    ``product_count`` to have the number in the cue. Otherwise keyword cues are scored per domain.
    """
    if has_products:
        n = f" {product_count}" if product_count is not None else ""
        noun = "product" if product_count == 1 else "products"
        return "product", [f"BMEcat catalog with{n} {noun}"]
    body = text[:MAX_TEXT_CHARS]
    title = title or ""
    scores: dict[str, float] = {}
    hits: dict[str, list[tuple[float, str]]] = {}
    for domain in DOMAINS:
        total = 0.0
        found: list[tuple[float, str]] = []
        for cue in CUES[domain]:
            count = _counts(cue, title, body)
            if count:
                contribution = cue.weight * min(count, CAP)
                total += contribution
                found.append((contribution, f"keyword '{cue.label}' ×{count}"))
        if domain == "product" and mime == "application/x-bmecat":
            total += THRESHOLD
            found.append((THRESHOLD, "BMEcat catalog (content type application/x-bmecat)"))
        scores[domain] = total
        hits[domain] = found
    best = max(DOMAINS, key=lambda d: (scores[d], -DOMAINS.index(d)))
    if scores[best] < THRESHOLD:
        return "general", ["no domain cue above threshold"]
    cues = [label for _, label in sorted(hits[best], key=lambda h: -h[0])[:8]]
    return best, cues
