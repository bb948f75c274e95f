"""Domain classification on real documents: contracts → legal, statutes → tax, catalogs → product."""

from __future__ import annotations

from pathlib import Path

import pytest

from kontor.servers.ingest.classify import classify_domain
from kontor.servers.ingest.handlers import parse
from kontor.settings import Limits

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CONTRACTS = sorted((DATA / "law" / "cuad_sample_contracts").glob("*.txt"))


def _classify(path: Path) -> tuple[str, list[str]]:
    doc = parse(path.read_bytes(), path.name, Limits())
    return classify_domain(doc.title, doc.text, doc.mime, bool(doc.products))


def test_samples_exist() -> None:
    assert len(CONTRACTS) >= 5
    assert (DATA / "ctax" / "statutes_2021" / "kstg.md").exists()


@pytest.mark.parametrize("path", CONTRACTS, ids=lambda p: p.stem)
def test_cuad_contracts_are_legal(path: Path) -> None:
    domain, cues = _classify(path)
    assert domain == "legal", cues
    assert any("agreement" in c for c in cues)


def test_kstg_is_tax_with_explaining_cues() -> None:
    domain, cues = _classify(DATA / "ctax" / "statutes_2021" / "kstg.md")
    assert domain == "tax"
    assert cues[0].startswith("keyword 'Körperschaftsteuer' ×")
    assert any(c.startswith("keyword 'Einkommensteuer' ×") for c in cues)
    assert len(cues) <= 8


def test_other_statutes() -> None:
    assert _classify(DATA / "ctax" / "statutes_2021" / "gewstg.md")[0] == "tax"
    assert _classify(DATA / "law" / "statutes_2021" / "bgb_excerpt_agb_kuendigung.md")[0] == "legal"


def test_neutral_text_is_general() -> None:
    text = ("Das Sommerfest findet am Freitag im Innenhof statt. Für Getränke und Musik ist gesorgt. "
            "Bitte meldet euch bis Mittwoch bei Anna an, damit wir genug Stühle aufstellen können.")
    assert classify_domain("Sommerfest", text, "text/plain", False) == (
        "general", ["no domain cue above threshold"])


def test_products_flag_decides() -> None:
    assert classify_domain("Katalog", "", "application/x-bmecat", True, product_count=3) == (
        "product", ["BMEcat catalog with 3 products"])
    assert classify_domain("Katalog", "", "application/x-bmecat", True)[0] == "product"


def test_datasheet_text_is_product() -> None:
    text = ("Datenblatt Reihenklemme WDU 2.5\nArtikelnummer: 1020000000\nGTIN (EAN): 4008190077303\n"
            "Nennspannung: 800 V, Nennstrom: 24 A, Schutzart IP20\nETIM-Klasse EC000897, ECLASS 27-14-11-20\n"
            "Betriebstemperatur: -50 °C … 130 °C")
    domain, cues = classify_domain("Datenblatt WDU 2.5", text, "application/pdf", False)
    assert domain == "product"
    assert "keyword 'Datenblatt' ×4" in cues


def test_deterministic_tie_break_and_title_weight() -> None:
    # Same text twice → same answer and cues.
    text = "Umsatzsteuer und Vertrag. " * 3
    assert classify_domain("", text, "text/plain", False) == classify_domain("", text, "text/plain", False)
    # A title hit counts three times.
    domain, cues = classify_domain("Körperschaftsteuererklärung 2023", "Anlage.", "application/pdf", False)
    assert domain == "tax"
    assert "keyword 'Körperschaftsteuer' ×3" in cues


def test_english_tax_text() -> None:
    text = ("The corporate income tax return must be filed with the tax office. VAT is charged at 19%. "
            "The tax assessment lists the taxable income and the trade tax.")
    assert classify_domain("Tax memo", text, "text/plain", False)[0] == "tax"
