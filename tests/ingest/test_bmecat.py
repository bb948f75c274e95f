"""BMEcat 1.2 and 2005.x: products, identifiers, ETIM/ECLASS classification and features, any namespace."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kontor.servers.ingest import detect
from kontor.servers.ingest.classify import classify_domain
from kontor.servers.ingest.handlers import parse
from kontor.servers.ingest.handlers.bmecat import normalize_system
from kontor.servers.ingest.model import LimitExceeded
from kontor.settings import Limits

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ETIM = DATA / "etim"
LIMITS = Limits()

BMECAT_12_BODY = """
  <HEADER>
    <CATALOG><LANGUAGE>deu</LANGUAGE><CATALOG_ID>K-12</CATALOG_ID><CATALOG_VERSION>1.0</CATALOG_VERSION>
      <CATALOG_NAME>Elektro Katalog 1.2</CATALOG_NAME><CURRENCY>EUR</CURRENCY></CATALOG>
    <SUPPLIER><SUPPLIER_NAME>Elektro Huber GmbH</SUPPLIER_NAME></SUPPLIER>
  </HEADER>
  <T_NEW_CATALOG>
    <ARTICLE mode="new">
      <SUPPLIER_AID>12345</SUPPLIER_AID>
      <ARTICLE_DETAILS>
        <DESCRIPTION_SHORT>Reihenklemme 2,5 mm² grau</DESCRIPTION_SHORT>
        <DESCRIPTION_LONG>&lt;p&gt;Durchgangsklemme mit &lt;b&gt;Schraubanschluss&lt;/b&gt;&lt;/p&gt;
          &lt;ul&gt;&lt;li&gt;grau&lt;/li&gt;&lt;/ul&gt;</DESCRIPTION_LONG>
        <EAN>4012345678901</EAN>
        <MANUFACTURER_AID>WDU-2.5</MANUFACTURER_AID>
        <MANUFACTURER_NAME>Klemmenwerk AG</MANUFACTURER_NAME>
        <KEYWORD>Klemme</KEYWORD><KEYWORD>Hutschiene</KEYWORD>
      </ARTICLE_DETAILS>
      <ARTICLE_FEATURES>
        <REFERENCE_FEATURE_SYSTEM_NAME>ETIM 8.0</REFERENCE_FEATURE_SYSTEM_NAME>
        <REFERENCE_FEATURE_GROUP_ID>EC000897</REFERENCE_FEATURE_GROUP_ID>
        <FEATURE><FNAME>EF000008</FNAME><FVALUE>5.2</FVALUE><FUNIT>MMT</FUNIT></FEATURE>
        <FEATURE><FNAME>EF000007</FNAME><FVALUE>EV000080</FVALUE></FEATURE>
      </ARTICLE_FEATURES>
      <ARTICLE_ORDER_DETAILS><ORDER_UNIT>C62</ORDER_UNIT><CONTENT_UNIT>C62</CONTENT_UNIT></ARTICLE_ORDER_DETAILS>
      <ARTICLE_PRICE_DETAILS>
        <ARTICLE_PRICE price_type="net_list"><PRICE_AMOUNT>0.87</PRICE_AMOUNT></ARTICLE_PRICE>
      </ARTICLE_PRICE_DETAILS>
    </ARTICLE>
    <ARTICLE>
      <SUPPLIER_AID>12346</SUPPLIER_AID>
      <ARTICLE_DETAILS><DESCRIPTION_SHORT>Endplatte</DESCRIPTION_SHORT></ARTICLE_DETAILS>
    </ARTICLE>
    <ARTICLE_TO_CATALOGGROUP_MAP><ART_ID>12345</ART_ID><CATALOG_GROUP_ID>1</CATALOG_GROUP_ID>
    </ARTICLE_TO_CATALOGGROUP_MAP>
  </T_NEW_CATALOG>
"""


@pytest.mark.parametrize(
    "root",
    [
        '<BMECAT version="1.2">',
        '<BMECAT version="1.2" xmlns="http://www.bmecat.org/bmecat/1.2">',
    ],
)
def test_bmecat_12_articles(root: str) -> None:
    xml = f'<?xml version="1.0" encoding="UTF-8"?>\n{root}{BMECAT_12_BODY}</BMECAT>'.encode()
    assert detect.detect_type(xml, "katalog.xml") == detect.BMECAT
    doc = parse(xml, "katalog.xml", LIMITS)
    assert doc.mime == detect.BMECAT
    assert doc.title == "Elektro Katalog 1.2"
    assert doc.metadata["bmecat_version"] == "1.2"
    assert doc.metadata["supplier"] == "Elektro Huber GmbH"
    assert len(doc.products) == 2 and len(doc.blocks) == 2
    p = doc.products[0]
    assert p.supplier_pid == "12345"
    assert p.name == "Reihenklemme 2,5 mm² grau"
    assert p.description == "Durchgangsklemme mit Schraubanschluss\ngrau"  # HTML stripped
    assert p.gtin == "4012345678901"
    assert p.manufacturer_pid == "WDU-2.5"
    assert p.manufacturer_name == "Klemmenwerk AG"
    assert p.keywords == ["Klemme", "Hutschiene"]
    assert p.order_unit == "C62"
    assert p.price == pytest.approx(0.87)
    assert p.currency == "EUR"  # from the catalog header
    assert (p.classification_system, p.classification_class) == ("ETIM-8.0", "EC000897")
    assert p.features == [
        {"name": "EF000008", "values": ["5.2"], "unit": "MMT", "system": "ETIM-8.0"},
        {"name": "EF000007", "values": ["EV000080"], "unit": None, "system": "ETIM-8.0"},
    ]
    assert doc.blocks[0].kind == "product"
    assert doc.blocks[0].text.split("\n")[:5] == [
        "Artikel 12345 — Reihenklemme 2,5 mm² grau",
        "Hersteller: Klemmenwerk AG  MPN: WDU-2.5",
        "GTIN: 4012345678901",
        "Klasse: ETIM-8.0 EC000897",
        "Merkmale: EF000008 = 5.2 MMT; EF000007 = EV000080",
    ]
    second = doc.products[1]
    assert (second.supplier_pid, second.name, second.features) == ("12346", "Endplatte", [])
    assert second.price is None


BMECAT_2005 = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE BMECAT SYSTEM "bmecat_2005.dtd">
<{p}BMECAT version="{version}" {xmlns}>
  <{p}HEADER><{p}CATALOG><{p}LANGUAGE>deu</{p}LANGUAGE><{p}CATALOG_ID>C</{p}CATALOG_ID>
    <{p}CATALOG_VERSION>2</{p}CATALOG_VERSION><{p}CATALOG_NAME>Leuchten 2005</{p}CATALOG_NAME>
  </{p}CATALOG></{p}HEADER>
  <{p}T_NEW_CATALOG>
    <{p}PRODUCT mode="new">
      <{p}SUPPLIER_PID>LED-100</{p}SUPPLIER_PID>
      <{p}PRODUCT_DETAILS>
        <{p}DESCRIPTION_SHORT lang="deu">LED-Panel 60x60</{p}DESCRIPTION_SHORT>
        <{p}DESCRIPTION_SHORT lang="eng">LED panel 60x60</{p}DESCRIPTION_SHORT>
        <{p}DESCRIPTION_LONG lang="deu"><![CDATA[<p>Flaches Panel<br/>für Rasterdecken</p>]]>
        </{p}DESCRIPTION_LONG>
        <{p}INTERNATIONAL_PID type="gtin">4000000000017</{p}INTERNATIONAL_PID>
        <{p}MANUFACTURER_PID>P-6060</{p}MANUFACTURER_PID>
        <{p}MANUFACTURER_NAME>Licht KG</{p}MANUFACTURER_NAME>
      </{p}PRODUCT_DETAILS>
      <{p}PRODUCT_FEATURES>
        <{p}REFERENCE_FEATURE_SYSTEM_NAME>ECLASS-10.1</{p}REFERENCE_FEATURE_SYSTEM_NAME>
        <{p}REFERENCE_FEATURE_GROUP_ID>27-01-04-01</{p}REFERENCE_FEATURE_GROUP_ID>
        <{p}FEATURE><{p}FNAME>AAA001</{p}FNAME><{p}FVALUE>1</{p}FVALUE></{p}FEATURE>
      </{p}PRODUCT_FEATURES>
      <{p}PRODUCT_FEATURES>
        <{p}REFERENCE_FEATURE_SYSTEM_NAME>ETIM-7.0</{p}REFERENCE_FEATURE_SYSTEM_NAME>
        <{p}REFERENCE_FEATURE_GROUP_ID>EC002892</{p}REFERENCE_FEATURE_GROUP_ID>
        <{p}FEATURE><{p}FNAME>EF000008</{p}FNAME><{p}FVALUE>620</{p}FVALUE><{p}FUNIT>EU570448</{p}FUNIT></{p}FEATURE>
        <{p}FEATURE><{p}FNAME>EF009346</{p}FNAME><{p}FVALUE>36</{p}FVALUE><{p}FUNIT>WTT</{p}FUNIT></{p}FEATURE>
        <{p}FEATURE><{p}FNAME>EF000049</{p}FNAME><{p}FVALUE>10</{p}FVALUE><{p}FVALUE>40</{p}FVALUE><{p}FUNIT>°C</{p}FUNIT></{p}FEATURE>
        <{p}FEATURE><{p}FNAME>EF000007</{p}FNAME><{p}FVALUE>EV000080</{p}FVALUE></{p}FEATURE>
        <{p}FEATURE><{p}FNAME>EF000139</{p}FNAME><{p}FVALUE>true</{p}FVALUE><{p}FUNIT/></{p}FEATURE>
      </{p}PRODUCT_FEATURES>
      <{p}PRODUCT_ORDER_DETAILS><{p}ORDER_UNIT>C62</{p}ORDER_UNIT></{p}PRODUCT_ORDER_DETAILS>
      <{p}PRODUCT_PRICE_DETAILS>
        <{p}PRODUCT_PRICE price_type="net_list"><{p}PRICE_AMOUNT>89.90</{p}PRICE_AMOUNT>
          <{p}PRICE_CURRENCY>CHF</{p}PRICE_CURRENCY></{p}PRODUCT_PRICE>
        <{p}PRODUCT_PRICE price_type="net_list"><{p}PRICE_AMOUNT>79.90</{p}PRICE_AMOUNT></{p}PRODUCT_PRICE>
      </{p}PRODUCT_PRICE_DETAILS>
    </{p}PRODUCT>
  </{p}T_NEW_CATALOG>
</{p}BMECAT>"""


@pytest.mark.parametrize(
    ("version", "xmlns", "prefix"),
    [
        ("2005.1", 'xmlns="http://www.bmecat.org/bmecat/2005.1"', ""),
        ("2005.2", 'xmlns="http://www.bmecat.org/bmecat/2005.2"', ""),
        ("2005", 'xmlns="http://www.bmecat.org/bmecat/2005fd"', ""),
        ("2005", 'xmlns:bme="http://www.bmecat.org/bmecat/2005"', "bme:"),
        ("2005", "", ""),
    ],
)
def test_bmecat_2005_products_with_etim_features(version: str, xmlns: str, prefix: str) -> None:
    xml = BMECAT_2005.format(version=version, xmlns=xmlns, p=prefix).encode()
    assert detect.detect_type(xml, "upload") == detect.BMECAT
    doc = parse(xml, "leuchten.xml", LIMITS)
    assert doc.title == "Leuchten 2005"
    assert doc.metadata["bmecat_version"] == version
    [p] = doc.products
    assert p.supplier_pid == "LED-100"
    assert p.name == "LED-Panel 60x60"  # the first language
    assert p.description == "Flaches Panel\nfür Rasterdecken"
    assert p.gtin == "4000000000017"
    assert (p.manufacturer_pid, p.manufacturer_name) == ("P-6060", "Licht KG")
    assert (p.price, p.currency, p.order_unit) == (pytest.approx(89.90), "CHF", "C62")
    # Two systems: the ETIM one is the classification even though ECLASS comes first.
    assert (p.classification_system, p.classification_class) == ("ETIM-7.0", "EC002892")
    etim = [f for f in p.features if f["system"] == "ETIM-7.0"]
    assert etim == [
        {"name": "EF000008", "values": ["620"], "unit": "EU570448", "system": "ETIM-7.0"},  # ETIM unit
        {"name": "EF009346", "values": ["36"], "unit": "WTT", "system": "ETIM-7.0"},  # UN/ECE code
        {"name": "EF000049", "values": ["10", "40"], "unit": "°C", "system": "ETIM-7.0"},  # text unit
        {"name": "EF000007", "values": ["EV000080"], "unit": None, "system": "ETIM-7.0"},  # absent
        {"name": "EF000139", "values": ["true"], "unit": None, "system": "ETIM-7.0"},  # empty FUNIT
    ]
    assert p.features[0] == {"name": "AAA001", "values": ["1"], "unit": None, "system": "ECLASS-10.1"}
    text = doc.blocks[0].text
    assert "Klasse: ETIM-7.0 EC002892" in text
    assert "EF000008 = 620 EU570448; EF009346 = 36 WTT; EF000049 = 10, 40 °C" in text
    assert "Preis: 89.9 CHF  Bestelleinheit: C62" in text


def test_update_transactions() -> None:
    xml = b"""<BMECAT version="2005" xmlns="http://www.bmecat.org/bmecat/2005">
<HEADER><CATALOG><CATALOG_NAME>Preisupdate</CATALOG_NAME><CURRENCY>EUR</CURRENCY></CATALOG></HEADER>
<T_UPDATE_PRICES prev_version="1">
  <PRODUCT mode="update"><SUPPLIER_PID>A1</SUPPLIER_PID>
    <PRODUCT_PRICE_DETAILS><PRODUCT_PRICE price_type="net_list"><PRICE_AMOUNT>1,5</PRICE_AMOUNT>
    </PRODUCT_PRICE>
    </PRODUCT_PRICE_DETAILS></PRODUCT>
  <PRODUCT mode="update"><PRODUCT_DETAILS><DESCRIPTION_SHORT>ohne Nummer</DESCRIPTION_SHORT></PRODUCT_DETAILS>
  </PRODUCT>
</T_UPDATE_PRICES></BMECAT>"""
    doc = parse(xml, "update.xml", LIMITS)
    assert doc.metadata["transactions"] == ["T_UPDATE_PRICES"]
    assert [(p.supplier_pid, p.price, p.currency) for p in doc.products] == [("A1", 1.5, "EUR")]
    assert doc.metadata["skipped_items"] == 1


def test_real_sample_olivere() -> None:
    doc = parse((ETIM / "sample_bmecat2005_new_catalog_olivere.xml").read_bytes(), "olivere.xml", LIMITS)
    assert doc.mime == detect.BMECAT
    assert doc.title == "Katalogbezeichnung"
    [p] = doc.products
    assert p.supplier_pid == "1000"
    assert p.name == 'Apple MacBook Pro 13"'
    assert p.gtin == "8712670911213"
    assert (p.manufacturer_pid, p.manufacturer_name) == ("MPN", "Microsoft")
    assert (p.classification_system, p.classification_class) == ("ECLASS-5.1", "19010203")
    assert p.features == [{"name": "Netzspannung", "values": ["110", "220"], "unit": "VLT",
                           "system": "ECLASS-5.1"}]
    assert (p.price, p.currency, p.order_unit) == (1499.5, "EUR", "BOX")
    assert p.keywords == ["Notebook", "Hardware"]


def test_real_sample_weidmueller_eclass_advanced() -> None:
    path = ETIM / "sample_bmecat2005_eclass_advanced_weidmueller_1609801044.xml"
    doc = parse(path.read_bytes(), path.name, LIMITS)
    assert doc.metadata["namespace"] == "http://www.bmecat.org/bmecat/2005+onto"
    assert doc.title == path.name  # CATALOG_NAME is just "1"
    [p] = doc.products
    assert p.supplier_pid == "1609801044"
    assert p.gtin == "4008190397111"  # from the EAN element
    assert p.manufacturer_name == "Weidmueller Group"
    assert p.name == "Klemmenmarkierung"
    assert (p.classification_system, p.classification_class) == ("ECLASS-9.0", "27141137")
    by_name = {f["name"]: f for f in p.features}
    assert by_name["Breite"]["values"] == ["4.9"]
    assert by_name["Einbauform"]["values"] == ["Aufbau"]
    assert "Konstruktion allgemein" not in by_name  # ECLASS Advanced structure nodes are not features
    assert "Terminal marking" in p.keywords


def test_real_samples_classify_as_product() -> None:
    for path in ETIM.glob("sample_bmecat*.xml"):
        doc = parse(path.read_bytes(), path.name, LIMITS)
        domain, cues = classify_domain(doc.title, doc.text, doc.mime, bool(doc.products),
                                       product_count=len(doc.products))
        assert domain == "product"
        assert cues == ["BMEcat catalog with 1 product"]


def _big_catalog(n: int) -> bytes:
    item = ("<PRODUCT><SUPPLIER_PID>P{i}</SUPPLIER_PID><PRODUCT_DETAILS><DESCRIPTION_SHORT>Teil {i}"
            "</DESCRIPTION_SHORT></PRODUCT_DETAILS><PRODUCT_FEATURES><REFERENCE_FEATURE_SYSTEM_NAME>ETIM-9.0"
            "</REFERENCE_FEATURE_SYSTEM_NAME><REFERENCE_FEATURE_GROUP_ID>EC000042</REFERENCE_FEATURE_GROUP_ID>"
            "<FEATURE><FNAME>EF000008</FNAME><FVALUE>{i}</FVALUE><FUNIT>MMT</FUNIT></FEATURE>"
            "</PRODUCT_FEATURES></PRODUCT>")
    body = "".join(item.format(i=i) for i in range(n))
    return (f'<BMECAT version="2005" xmlns="http://www.bmecat.org/bmecat/2005"><HEADER><CATALOG>'
            f"<CATALOG_NAME>Gross</CATALOG_NAME></CATALOG></HEADER><T_NEW_CATALOG>{body}</T_NEW_CATALOG>"
            f"</BMECAT>").encode()


def test_streaming_large_catalog_and_row_limit() -> None:
    data = _big_catalog(5000)
    start = time.perf_counter()
    doc = parse(data, "gross.xml", LIMITS)
    assert time.perf_counter() - start < 10
    assert len(doc.products) == 5000
    assert doc.products[-1].features[0]["values"] == ["4999"]
    with pytest.raises(LimitExceeded, match="more than 100 products"):
        parse(data, "gross.xml", Limits(max_rows=100))


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [("ETIM-7.0", "ETIM-7.0"), ("ETIM 8.0", "ETIM-8.0"), ("etim_9", "ETIM-9.0"), ("ETIM8.0", "ETIM-8.0"),
     ("ECLASS-5.1", "ECLASS-5.1"), ("eCl@ss 6.0", "ECLASS-6.0"), ("ECLASS_11.0", "ECLASS-11.0"),
     ("udf_Supplier-1.0", "udf_Supplier-1.0"), ("  ", None), (None, None)],
)
def test_normalize_system(raw: str | None, normalized: str | None) -> None:
    assert normalize_system(raw) == normalized
