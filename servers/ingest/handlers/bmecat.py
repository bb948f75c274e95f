"""BMEcat handler: BMEcat 1.2 (ARTICLE) and 2005 / 2005.1 / 2005.2 (PRODUCT), any namespace.

Elements are matched by local name, so ``http://www.bmecat.org/bmecat/2005``, ``.../1.2``,
``.../2005fd``, ``.../2005+onto`` and no namespace all work. The catalog is parsed as a stream
(``safe_iterparse``): each PRODUCT/ARTICLE element is read, turned into a :class:`Product` and freed, so
big catalogs need memory for the products only, not for the XML tree.
"""

from __future__ import annotations

import re
from typing import Any

from kontor.servers.ingest.detect import BMECAT
from kontor.servers.ingest.handlers.common import clean_inline, clean_multiline, format_cell
from kontor.servers.ingest.handlers.xml_safe import local_name, release, safe_iterparse
from kontor.servers.ingest.model import Block, CorruptFile, LimitExceeded, ParsedDocument, Product
from kontor.settings import Limits

ITEM_TAGS = {"PRODUCT", "ARTICLE"}
TRANSACTIONS = {"T_NEW_CATALOG", "T_UPDATE_PRODUCTS", "T_UPDATE_PRICES", "T_NEW_PRODUCTDATA"}

_SYSTEM = re.compile(r"^\s*(etim|e-?cl(?:@|a)ss)[\s_\-]*(?:v(?:ersion)?\s*)?(\d+(?:\.\d+)*)?\s*$", re.I)
_TAG = re.compile(r"<[^>]+>")
_BLOCK_TAG = re.compile(r"<\s*(br|/p|/li|/div|/h[1-6]|/tr)\b[^>]*>", re.I)


def normalize_system(name: str | None) -> str | None:
    """'ETIM 8.0' / 'etim_8' / 'eCl@ss 5.1' → 'ETIM-8.0' / 'ETIM-8.0' / 'ECLASS-5.1'; others unchanged."""
    if name is None:
        return None
    text = clean_inline(name)
    if not text:
        return None
    m = _SYSTEM.match(text)
    if not m:
        return text
    family = "ETIM" if m.group(1).lower() == "etim" else "ECLASS"
    version = m.group(2)
    if not version:
        return family
    if "." not in version:
        version += ".0"
    return f"{family}-{version}"


def strip_html(text: str) -> str:
    """Text of a DESCRIPTION_LONG that may hold (escaped) HTML: tags removed, block tags as line breaks."""
    if "<" not in text and "&" not in text:
        return clean_multiline(text)
    import html as _html

    text = _BLOCK_TAG.sub("\n", text)
    text = _TAG.sub(" ", text)
    lines = clean_multiline(_html.unescape(text)).split("\n")
    return "\n".join(line for line in lines if line)


def _children(element: Any, name: str) -> list[Any]:
    return [c for c in element if local_name(c.tag) == name]


def _child(element: Any, *names: str) -> Any | None:
    for name in names:
        for c in element:
            if local_name(c.tag) == name:
                return c
    return None


def _text(element: Any | None) -> str | None:
    """All text under an element (inline XHTML included), whitespace-collapsed; None when empty."""
    if element is None:
        return None
    text = clean_inline("".join(element.itertext()))
    return text or None


def _child_text(element: Any, *names: str) -> str | None:
    return _text(_child(element, *names))


def _raw_text(element: Any | None) -> str | None:
    """Text keeping line structure (for descriptions)."""
    if element is None:
        return None
    return "".join(element.itertext()) or None


def _float(text: str | None) -> float | None:
    if not text:
        return None
    value = text.strip().replace(" ", "")
    if "," in value and "." in value:
        value = value.replace(".", "").replace(",", ".")
    elif "," in value:
        value = value.replace(",", ".")
    try:
        return float(value)
    except ValueError:
        return None


def _features(item: Any) -> tuple[list[dict[str, Any]], list[tuple[str | None, str | None]]]:
    """Features of all *_FEATURES blocks and the (system, group) pair of each block."""
    features: list[dict[str, Any]] = []
    systems: list[tuple[str | None, str | None]] = []
    for block in item:
        if local_name(block.tag) not in ("PRODUCT_FEATURES", "ARTICLE_FEATURES"):
            continue
        system = normalize_system(_child_text(block, "REFERENCE_FEATURE_SYSTEM_NAME"))
        group = _child_text(block, "REFERENCE_FEATURE_GROUP_ID", "REFERENCE_FEATURE_GROUP_NAME")
        systems.append((system, group))
        for feature in _children(block, "FEATURE"):
            name = _child_text(feature, "FNAME")
            template = _child(feature, "FTEMPLATE")
            if name is None and template is not None:  # ECLASS Advanced: FTEMPLATE/FT_NAME, FT_ID
                name = _child_text(template, "FT_NAME", "FT_ID")
            values = [v for v in (_text(c) for c in _children(feature, "FVALUE")) if v]
            if not values:
                detail = _child_text(feature, "FVALUE_DETAILS") or _child_text(feature, "VALUE_IDREF")
                if detail and detail == name:
                    continue  # ECLASS Advanced structure node (a block, not a property value)
                values = [detail] if detail else []
            if name is None and not values:
                continue
            unit = _child_text(feature, "FUNIT")
            if unit is None and template is not None:
                unit = _child_text(template, "FT_UNIT")
            features.append({"name": name or "", "values": values, "unit": unit, "system": system})
    return features, systems


def _classification(systems: list[tuple[str | None, str | None]]) -> tuple[str | None, str | None]:
    """The first ETIM system of the item, else its first named system."""
    named = [(s, g) for s, g in systems if s]
    for system, group in named:
        if system.upper().startswith("ETIM"):
            return system, group
    if named:
        return named[0]
    for system, group in systems:
        if group:
            return system, group
    return None, None


def _gtin(details: Any) -> str | None:
    for pid in _children(details, "INTERNATIONAL_PID"):
        if (pid.get("type") or "").strip().lower() in ("gtin", "ean", "ean13", "gtin13", "gtin14", "upc"):
            value = _text(pid)
            if value:
                return value
    value = _child_text(details, "EAN")
    if value:
        return value
    for pid in _children(details, "INTERNATIONAL_PID"):  # untyped INTERNATIONAL_PID that looks like a GTIN
        value = _text(pid)
        if value and re.fullmatch(r"\d{8}|\d{12,14}", value):
            return value
    return None


def _price(item: Any, default_currency: str | None) -> tuple[float | None, str | None]:
    for details in item:
        if local_name(details.tag) not in ("PRODUCT_PRICE_DETAILS", "ARTICLE_PRICE_DETAILS"):
            continue
        for price in details:
            if local_name(price.tag) not in ("PRODUCT_PRICE", "ARTICLE_PRICE"):
                continue
            amount = _float(_child_text(price, "PRICE_AMOUNT"))
            if amount is not None:
                return amount, _child_text(price, "PRICE_CURRENCY") or default_currency
    return None, None


def product_from_element(item: Any, default_currency: str | None = None) -> Product | None:
    """A :class:`Product` from a PRODUCT (2005) or ARTICLE (1.2) element; None without a supplier id."""
    supplier_pid = _child_text(item, "SUPPLIER_PID", "SUPPLIER_AID")
    if not supplier_pid:
        return None
    details = _child(item, "PRODUCT_DETAILS", "ARTICLE_DETAILS")
    product = Product(supplier_pid=supplier_pid)
    if details is not None:
        product.name = _child_text(details, "DESCRIPTION_SHORT")
        long = _raw_text(_child(details, "DESCRIPTION_LONG"))
        product.description = strip_html(long) if long else None
        product.description = product.description or None
        product.gtin = _gtin(details)
        product.manufacturer_pid = _child_text(details, "MANUFACTURER_PID", "MANUFACTURER_AID")
        product.manufacturer_name = _child_text(details, "MANUFACTURER_NAME")
        product.keywords = [k for k in (_text(c) for c in _children(details, "KEYWORD")) if k]
    order = _child(item, "PRODUCT_ORDER_DETAILS", "ARTICLE_ORDER_DETAILS")
    if order is not None:
        product.order_unit = _child_text(order, "ORDER_UNIT")
    product.price, product.currency = _price(item, default_currency)
    product.features, systems = _features(item)
    product.classification_system, product.classification_class = _classification(systems)
    return product


def _feature_text(feature: dict[str, Any]) -> str:
    values = ", ".join(feature["values"]) if feature["values"] else "—"
    unit = f" {feature['unit']}" if feature.get("unit") else ""
    return f"{feature['name']} = {values}{unit}"


def product_summary(p: Product) -> str:
    """A readable, language-neutral-ish summary of one product for search and chunking."""
    lines = [f"Artikel {p.supplier_pid}" + (f" — {p.name}" if p.name else "")]
    maker = []
    if p.manufacturer_name:
        maker.append(f"Hersteller: {p.manufacturer_name}")
    if p.manufacturer_pid:
        maker.append(f"MPN: {p.manufacturer_pid}")
    if maker:
        lines.append("  ".join(maker))
    if p.gtin:
        lines.append(f"GTIN: {p.gtin}")
    if p.classification_system or p.classification_class:
        lines.append("Klasse: " + " ".join(x for x in (p.classification_system, p.classification_class) if x))
    if p.features:
        lines.append("Merkmale: " + "; ".join(_feature_text(f) for f in p.features))
    commercial = []
    if p.price is not None:
        commercial.append(f"Preis: {format_cell(p.price)}" + (f" {p.currency}" if p.currency else ""))
    if p.order_unit:
        commercial.append(f"Bestelleinheit: {p.order_unit}")
    if commercial:
        lines.append("  ".join(commercial))
    if p.keywords:
        lines.append("Schlagworte: " + ", ".join(p.keywords))
    if p.description:
        lines.append(f"Beschreibung: {p.description}")
    return "\n".join(lines)


def parse(data: bytes, name: str, limits: Limits) -> ParsedDocument:
    """Parse a BMEcat catalog into products (one ``product`` Block each)."""
    stack: list[str] = []
    products: list[Product] = []
    catalog: dict[str, str] = {}
    transactions: list[str] = []
    version: str | None = None
    namespace = ""
    skipped = 0
    for event, element in safe_iterparse(data, limits, what="BMEcat"):
        tag = local_name(element.tag)
        if event == "start":
            if not stack:
                if tag.upper() != "BMECAT":
                    raise CorruptFile(f"not a BMEcat catalog: the root element is {tag!r}, not BMECAT")
                version = element.get("version")
                namespace = element.tag[1:].split("}", 1)[0] if element.tag.startswith("{") else ""
            elif tag in TRANSACTIONS and tag not in transactions:
                transactions.append(tag)
            stack.append(tag)
            continue
        stack.pop()
        parent = stack[-1] if stack else ""
        if tag in ITEM_TAGS and parent in TRANSACTIONS:
            product = product_from_element(element, catalog.get("currency"))
            if product is None:
                skipped += 1
            else:
                products.append(product)
                if len(products) > limits.max_rows:
                    raise LimitExceeded(
                        f"BMEcat has more than {limits.max_rows} products (limit max_rows)"
                    )
            release(element)
        elif parent == "CATALOG" and "HEADER" in stack:
            key = {"CATALOG_NAME": "name", "CATALOG_ID": "id", "CATALOG_VERSION": "version",
                   "CURRENCY": "currency", "LANGUAGE": "language"}.get(tag)
            if key and key not in catalog:
                value = _text(element)
                if value:
                    catalog[key] = value
        elif tag == "SUPPLIER_NAME" and parent == "SUPPLIER" and "HEADER" in stack:
            value = _text(element)
            if value:
                catalog.setdefault("supplier", value)
        elif tag in ("CLASSIFICATION_SYSTEM", "CATALOG_GROUP_SYSTEM", "FEATURE_SYSTEM") or (
            parent in TRANSACTIONS and tag not in ITEM_TAGS
        ):
            release(element)

    # A CATALOG_NAME without any letter ("1", as some exporters write) says less than the file name.
    catalog_name = catalog.get("name") or ""
    title = catalog_name if re.search(r"[^\W\d_]", catalog_name) else name
    blocks = [Block(kind="product", text=product_summary(p), section=title) for p in products]
    meta: dict[str, Any] = {
        "bmecat_version": version,
        "namespace": namespace or None,
        "transactions": transactions,
        "products": len(products),
    }
    for key in ("name", "id", "version", "currency", "language", "supplier"):
        if key in catalog:
            meta[f"catalog_{key}" if key != "supplier" else "supplier"] = catalog[key]
    if skipped:
        meta["skipped_items"] = skipped
        meta["skipped_reason"] = "PRODUCT/ARTICLE without SUPPLIER_PID/SUPPLIER_AID"
    return ParsedDocument(mime=BMECAT, title=title, blocks=blocks, products=products, metadata=meta)
