"""German-aware keyword analysis shared by indexing and querying.

The lakehouse stores an *analysed* token string per chunk (column ``fts``) and indexes it
with LanceDB's whitespace tokenizer, so every linguistic decision is made here, once, and
applied identically to documents and queries:

* :func:`fold` lowercases and folds umlauts (``Müller`` and ``Mueller`` both give
  ``mueller``), ß to ss, and strips other diacritics.
* Tokens are stemmed with the Snowball German stemmer (``Schrauben``/``Schraube`` ->
  ``schraub``); a small German + English stop-word list is dropped.
* A dictionary decompounder splits long words into known parts, allowing the linking
  elements -s-, -es-, -n-, -en-, -er-, -e-, -ens- and a dropped final -e
  (``Edelstahlschraube`` -> ``edelstahl`` + ``schraube``). Index and query side both emit
  the whole word's stem *and* its parts' stems, so "Edelstahlschraube" finds "Schraube aus
  Edelstahl" and the reverse. The dictionary is a :class:`Lexicon`: the seed word list
  shipped in ``lexicon_de.txt`` plus the tenant's own vocabulary (:class:`TenantVocabulary`).
* :func:`extract_identifiers` finds GTIN/EAN (checksum-validated), ETIM and ECLASS codes
  and SKU-like part numbers for exact matching.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

from snowballstemmer.german_stemmer import GermanStemmer

SEED_LEXICON_PATH = Path(__file__).with_name("lexicon_de.txt")

MIN_PART = 3  # shortest compound part taken from the seed lexicon
MIN_TENANT_PART = 4  # shortest part taken from a tenant's vocabulary (more noise there)
MIN_COMPOUND = 6  # shorter words are never split
MAX_COMPOUND = 64  # longer "words" are garbage (hashes, base64), never split
LINKS = ("", "s", "es", "n", "en", "er", "e", "ens")
HEAD_MIN_MODIFIER = 4  # unknown modifier before a known head word (see Lexicon.head)
HEAD_MIN_PART = 5
# Query-side weight of terms that come from splitting a compound (whole words weigh 1). Measured
# on LegalQuAD-de (200 court decisions, 102 questions, keyword mode, nDCG@10): no parts 0.857,
# parts at weight 1.0 0.858, at 0.3 0.870, at 0.6 0.867; summing two top-50 searches as the
# store does: 0.864. Stems alone lift raw folded tokens from 0.723 to 0.860.
PART_WEIGHT = 0.3
_Split = tuple[int, int, int, int, tuple[tuple[str, str], ...]]

# Suffix-like words that are real nouns but almost always a derivational suffix at the end of
# a compound (Gesellschaft, Freiheit ...); never accepted as a compound part.
SUFFIX_LIKE = frozenset({"schaft", "heit", "keit", "ung", "tum", "nis", "chen", "lein", "ling", "sam", "bar"})

_STOP_WORDS_RAW = """
aber alle allem allen aller alles als also am an ander andere anderem anderen anderer anderes
auch auf aus bei beim bin bis bist bzw da dadurch daher damit dann darauf darin das dass dem den
denn der des dessen dich die dies diese diesem diesen dieser dieses dir doch dort du durch ein
eine einem einen einer eines er es etc etwa euch euer eure für gegen ggf hab habe haben hat hatte
hatten hier hin hinter ich ihm ihn ihnen ihr ihre ihrem ihren ihrer ihres im in ins ist ja jede
jedem jeden jeder jedes jene jener jetzt kann kein keine keinem keinen keiner können könnte man
mich mir mit muss müssen nach nicht nichts noch nun nur ob oder ohne per sehr sein seine seinem
seinen seiner seines sich sie sind so soll sollen sollte sondern sonst um und uns unser unsere
unter usw über vom von vor war waren warum was weil welche welchem welchen welcher welches wenn
wer werde werden wie wieder will wir wird wo wurde wurden zu zum zur zwar zwischen mehr weniger viel viele
vielen sowie bereits sowohl gemäß laut
a an and are as at be been but by can could did do does for from had has have he her his how i
if in into is it its may might must no not of on or our shall she should so such than that the
their them then there these they this those to too us was we were what when where which who
why will with would you your
"""

_UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "ß": "ss", "ẞ": "ss", "æ": "ae", "œ": "oe",
                          "ø": "o", "đ": "d", "ł": "l", "ı": "i"})
_WORD_GROUP = re.compile(r"[^\W_]+(?:-[^\W_]+)*")
_HAS_DIGIT = re.compile(r"\d")


def fold(text: str) -> str:
    """Lowercase, fold umlauts (ä->ae, ö->oe, ü->ue, ß->ss) and strip remaining diacritics."""
    text = text.lower().translate(_UMLAUTS)
    if text.isascii():
        return text
    # é -> e, ñ -> n ...; NFKD also turns compatibility forms (ligatures, full-width) into letters.
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


STOP_WORDS: frozenset[str] = frozenset(fold(w) for w in _STOP_WORDS_RAW.split())

_stemmers = threading.local()
_STEM_UE = re.compile(r"(?<![qaeiouy])ue")
MAX_SUFFIX = 8  # Snowball German strips at most this many characters from the normalised word
# Endings Snowball German may strip: up to three of its suffixes in a row (a generous superset).
_SUFFIXES = ("", "e", "em", "en", "ern", "er", "es", "s", "n", "st", "est", "et", "end", "ung", "ig", "ik", "isch",
             "lich", "heit", "keit")
_STRIPPABLE = frozenset(
    a + b + c for a in _SUFFIXES for b in _SUFFIXES for c in _SUFFIXES if len(a + b + c) <= MAX_SUFFIX
)


@lru_cache(maxsize=262_144)
def stem(token: str) -> str:
    """Snowball German stem of a folded token (cached; Snowball stemmers are not thread-safe).

    Always the pure-Python stemmer shipped with snowballstemmer, even where PyStemmer is
    installed: index and query side must use the very same algorithm version.
    """
    stemmer = getattr(_stemmers, "german", None)
    if stemmer is None:
        stemmer = _stemmers.german = GermanStemmer()
    return stemmer.stemWord(token)


def _stem_base(token: str) -> str:
    """What Snowball German stems a folded token from: ae/oe/ue read as umlauts, then unfolded.

    ``stem(t)`` is (nearly always) a prefix of ``_stem_base(t)`` at most ``MAX_SUFFIX``
    characters shorter, which lets the decompounder rule out candidates without stemming them.
    """
    return _STEM_UE.sub("u", token.replace("ae", "a").replace("oe", "o"))


def tokenize(text: str) -> list[str]:
    """Folded word tokens; hyphenated words give their parts and, if all alphabetic, the joined word."""
    out: list[str] = []
    for group in _WORD_GROUP.findall(fold(text)):
        if "-" not in group:
            out.append(group)
            continue
        parts = [p for p in group.split("-") if p]
        out.extend(parts)
        if len(parts) > 1 and all(p.isalpha() for p in parts):
            out.append("".join(parts))
    return out


class Lexicon:
    """Known German words for decompounding: the shipped seed list plus tenant words.

    Lexicons are immutable; :meth:`with_words` returns a new one. Each lexicon caches the
    expansion of every token it has analysed, so repeated words cost a dict lookup.
    """

    def __init__(self, seed: Iterable[str], tenant: Iterable[str] = ()) -> None:
        self._seed = frozenset(w for w in (fold(x.strip()) for x in seed) if _usable(w, MIN_PART))
        tenant_words = frozenset(w for w in (fold(x.strip()) for x in tenant) if _usable(w, MIN_TENANT_PART))
        self.words: frozenset[str] = self._seed | tenant_words
        self._word_stems: dict[str, str] = {w: stem(w) for w in self.words}
        self.stems: frozenset[str] = frozenset(self._word_stems.values())
        self._expansions: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and fold(word) in self.words

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def load_seed(cls, path: Path = SEED_LEXICON_PATH) -> list[str]:
        words: list[str] = []
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                line = line.split("#", 1)[0].strip()
                if line:
                    words.append(line)
        return words

    @classmethod
    def seed(cls) -> Lexicon:
        """The shared lexicon built from ``lexicon_de.txt`` only."""
        return _seed_lexicon()

    def with_words(self, words: Iterable[str]) -> Lexicon:
        """A new lexicon: this lexicon's seed words plus ``words`` as tenant vocabulary."""
        return Lexicon(self._seed, words)

    # -- decompounding -------------------------------------------------------------------

    def _known_stem(self, piece: str) -> str | None:
        """``stem(piece)`` if it is the stem of a known word, else None; cheap for most pieces."""
        base = _stem_base(piece)
        n = len(base)
        for cut in range(min(MAX_SUFFIX, n - 2) + 1):
            if base[n - cut:] in _STRIPPABLE and base[: n - cut] in self.stems:
                s = stem(piece)
                return s if s in self.stems else None
        return None

    def _final_part(self, piece: str) -> tuple[str, bool] | None:
        """(stem, exact) of ``piece`` as the last compound part (inflection allowed), or None."""
        if len(piece) < MIN_PART or piece in SUFFIX_LIKE:
            return None
        known = self._word_stems.get(piece)
        if known is not None:
            return known, True
        inexact = self._known_stem(piece)
        return (inexact, False) if inexact is not None else None

    def _inner_part(self, piece: str) -> tuple[str, bool] | None:
        """(stem, exact) of ``piece`` as a non-final part (Schul- from Schule allowed), or None."""
        if len(piece) < MIN_PART or piece in SUFFIX_LIKE:
            return None
        known = self._word_stems.get(piece) or self._word_stems.get(piece + "e")
        if known is not None:
            return known, True
        if len(piece) >= 5:
            inexact = stem(piece) if piece in self.stems else self._known_stem(piece)
            if inexact is not None:
                return inexact, False
        return None

    def split(self, word: str) -> list[tuple[str, str]] | None:
        """Best split of a folded ``word`` into >= 2 known parts as (segment, stem) pairs.

        Preference: fewest parts, then most parts that are dictionary words as written, then
        the longest parts (sum of squared lengths), then fewest linking letters. None when no
        split exists.
        """
        n = len(word)
        if n < MIN_COMPOUND or n > MAX_COMPOUND or not word.isalpha():
            return None
        memo: dict[int, _Split | None] = {}

        def best(i: int) -> _Split | None:
            # (parts, inexact parts, -sum of squares, linking letters, parts) for word[i:]; smaller wins
            if i in memo:
                return memo[i]
            result: _Split | None = None
            if i > 0:  # the whole word as one "part" is not a split
                final = self._final_part(word[i:])
                if final is not None:
                    result = (1, int(not final[1]), -((n - i) ** 2), 0, ((word[i:], final[0]),))
            for j in range(i + MIN_PART, n - MIN_PART + 1):
                inner = self._inner_part(word[i:j])
                if inner is None:
                    continue
                for link in LINKS:
                    k = j + len(link)
                    if n - k < MIN_PART or (link and not word.startswith(link, j)):
                        continue
                    rest = best(k)
                    if rest is None:
                        continue
                    cand = (rest[0] + 1, rest[1] + int(not inner[1]), rest[2] - (j - i) ** 2, rest[3] + len(link),
                            ((word[i:j], inner[0]), *rest[4]))
                    if result is None or cand[:4] < result[:4]:
                        result = cand
            memo[i] = result
            return result

        found = best(0)
        return list(found[4]) if found is not None else None

    def head(self, word: str) -> tuple[str, str] | None:
        """(segment, stem) of the longest known final part behind an unknown modifier, or None.

        German compounds are right-headed, so "Spaxschraube" is a kind of "Schraube" even when
        "Spax" is unknown. Conservative lengths (modifier >= 4, head >= 5) keep prefixed words
        such as "Verkauf" (ver|kauf) whole.
        """
        n = len(word)
        if n < MIN_COMPOUND + 3 or n > MAX_COMPOUND or not word.isalpha():
            return None
        for i in range(HEAD_MIN_MODIFIER, n - HEAD_MIN_PART + 1):
            final = self._final_part(word[i:])
            if final is not None:
                return (word[i:], final[0])
        return None

    def decompound(self, word: str, _depth: int = 0) -> list[tuple[str, str]]:
        """All parts of a folded ``word`` as (segment, stem), including parts of long parts.

        ``Umsatzsteuererklaerung`` -> umsatz, steuererklaerung, steuer, erklaerung (segments).
        Falls back to the head word (:meth:`head`) when no full split exists; [] if neither.
        """
        parts = self.split(word)
        if not parts:
            if _depth:
                return []
            head = self.head(word)
            return [head] if head else []
        out = list(parts)
        if _depth < 2:
            for segment, _ in parts:
                for sub in self.decompound(segment, _depth + 1):
                    if sub not in out:
                        out.append(sub)
        return out

    def expand(self, token: str) -> tuple[str, ...]:
        """Index/query terms for one folded token: its stem, then the stems of its compound parts."""
        cached = self._expansions.get(token)
        if cached is not None:
            return cached
        if _HAS_DIGIT.search(token) or not token.isalpha():
            terms: tuple[str, ...] = (token,)
        else:
            whole = stem(token)
            seen = [whole]
            for segment, part in self.decompound(token):
                if part not in seen and segment not in STOP_WORDS and len(part) >= 2:
                    seen.append(part)
            terms = tuple(seen)
        with self._lock:
            if len(self._expansions) > 500_000:
                self._expansions.clear()
            self._expansions[token] = terms
        return terms


def _usable(word: str, min_len: int) -> bool:
    # Stop words stay usable as compound parts (Mehr|wert|steuer); expand() drops them from output.
    return len(word) >= min_len and word.isalpha() and word not in SUFFIX_LIKE


@lru_cache(maxsize=1)
def _seed_lexicon() -> Lexicon:
    return Lexicon(Lexicon.load_seed())


# -- analysis -------------------------------------------------------------------------------


def index_terms(text: str, lexicon: Lexicon | None = None) -> list[str]:
    """Terms for the ``fts`` column, in order, duplicates kept (BM25 counts them)."""
    lex = lexicon or _seed_lexicon()
    out: list[str] = []
    for token in tokenize(text):
        if token in STOP_WORDS or (len(token) < 2 and not token.isdigit()):
            continue
        out.extend(lex.expand(token))
    return out


def query_terms(query: str, lexicon: Lexicon | None = None) -> list[str]:
    """Terms of a search query, deduplicated, in order of appearance."""
    seen: dict[str, None] = {}
    for term in index_terms(query, lexicon):
        seen.setdefault(term, None)
    return list(seen)


def query_term_groups(query: str, lexicon: Lexicon | None = None) -> tuple[list[str], list[str]]:
    """A query's whole-word terms and, separately, the extra terms from splitting its compounds.

    Search weights the part terms with :data:`PART_WEIGHT`: a compound query still finds the
    separate words, but documents with the query's own words rank first.
    """
    lex = lexicon or _seed_lexicon()
    whole: dict[str, None] = {}
    parts: dict[str, None] = {}
    for token in tokenize(query):
        if token in STOP_WORDS or (len(token) < 2 and not token.isdigit()):
            continue
        first, *rest = lex.expand(token)
        whole.setdefault(first, None)
        for term in rest:
            parts.setdefault(term, None)
    return list(whole), [t for t in parts if t not in whole]


def analyze(text: str, lexicon: Lexicon | None = None) -> str:
    """Space-separated analysed terms of ``text`` for the full-text column."""
    return " ".join(index_terms(text, lexicon))


def analyze_query(query: str, lexicon: Lexicon | None = None) -> str:
    """Space-separated analysed terms of a query (same pipeline as :func:`analyze`)."""
    return " ".join(query_terms(query, lexicon))


# -- tenant vocabulary ------------------------------------------------------------------------

_NOUN = re.compile(r"(?<![\w-])([A-ZÄÖÜ][a-zäöüß]{3,40})(?![\w])")


def vocabulary_candidates(text: str) -> Counter[str]:
    """Capitalised alphabetic words (German nouns, mostly) of ``text``, folded, with counts."""
    counts: Counter[str] = Counter()
    for match in _NOUN.finditer(text):
        word = fold(match.group(1))
        if word not in STOP_WORDS and word not in SUFFIX_LIKE and word.isalpha():
            counts[word] += 1
    return counts


class TenantVocabulary:
    """Word counts of one tenant's indexed text, persisted as JSON next to its Lance tables.

    Written atomically (temp file + rename) under an advisory file lock, merged with what is on
    disk so concurrent writers lose nothing; readers reload when the file's mtime/size change,
    checked at most every ``check_interval`` seconds.
    """

    MIN_COUNT = 2  # a word seen once may be a typo or an OCR artefact
    MAX_WORDS = 200_000

    def __init__(self, path: Path, *, check_interval: float = 1.0) -> None:
        self.path = path
        self.check_interval = check_interval
        self._counts: dict[str, int] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self._lexicon: Lexicon | None = None
        self._lock = threading.RLock()
        self._reload(force=True)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _read(self) -> dict[str, int]:
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            # A damaged vocabulary only weakens decompounding; never block search or ingest.
            return {}
        words = data.get("words", {}) if isinstance(data, dict) else {}
        return {str(k): int(v) for k, v in words.items() if isinstance(v, int)}

    def _reload(self, force: bool = False) -> None:
        stamp = self._file_stamp()
        if force or stamp != self._stamp:
            self._counts = self._read()
            self._stamp = stamp
            self._lexicon = None
        self._checked = time.monotonic()

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def lexicon(self) -> Lexicon:
        """Seed lexicon plus this tenant's words seen at least ``MIN_COUNT`` times (cached)."""
        with self._lock:
            if time.monotonic() - self._checked >= self.check_interval:
                self._reload()
            if self._lexicon is None:
                words = [w for w, c in self._counts.items() if c >= self.MIN_COUNT]
                self._lexicon = _seed_lexicon().with_words(words)
            return self._lexicon

    def add(self, counts: Counter[str] | dict[str, int]) -> Lexicon:
        """Merge ``counts`` into the persisted vocabulary; returns the updated lexicon."""
        if not counts:
            return self.lexicon()
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with file_lock(self.path.with_name(self.path.name + ".lock")):
                merged = self._read()
                before = {w for w, c in merged.items() if c >= self.MIN_COUNT}
                for word, n in counts.items():
                    merged[word] = merged.get(word, 0) + int(n)
                if len(merged) > self.MAX_WORDS:
                    keep = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[: self.MAX_WORDS]
                    merged = dict(keep)
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
                with open(tmp, "w", encoding="utf-8") as handle:
                    json.dump({"format": 1, "words": merged}, handle, ensure_ascii=False, separators=(",", ":"))
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, self.path)
            after = {w for w, c in merged.items() if c >= self.MIN_COUNT}
            self._counts = merged
            self._stamp = self._file_stamp()
            self._checked = time.monotonic()
            if after != before or self._lexicon is None:
                self._lexicon = None
            return self.lexicon()


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (created if missing) across threads and processes."""
    import fcntl

    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# -- identifiers ----------------------------------------------------------------------------

_GTIN = re.compile(r"(?<![\w.,/-])(\d{8}|\d{12,14})(?![\w]|[.,/-]\d)")
_ETIM = re.compile(r"(?<![A-Za-z0-9])(E[CFVGU]\d{6})(?![A-Za-z0-9])", re.IGNORECASE)
_ECLASS_DASHED = re.compile(r"(?<![\w-])(\d{2}-\d{2}-\d{2}-\d{2})(?![\w-])")
_SKU = re.compile(r"(?<![\w.,/-])([A-Za-z0-9]+(?:[-./][A-Za-z0-9]+)*)(?![\w])")
_LETTER_NUMBER = re.compile(r"(?<![\w.-])([A-Z]{2,6}) (\d+(?:[.,/-]\d+)*)(?![\w]|[.,/-]\d)")
_MEASURE = re.compile(
    r"^\d+(?:[.,]\d+)?(?:x\d+(?:[.,]\d+)?)*"
    r"(?:mm|cm|dm|m|km|qm|m2|m3|kg|g|mg|t|l|ml|cl|v|kv|mv|a|ma|w|kw|mw|kwh|wh|mah|ah|hz|khz|mhz|ghz|nm|bar|"
    r"mbar|pa|kpa|psi|s|ms|min|h|st|stk|pcs|pc|x|k|c|gb|mb|kb|tb|db|lm|lx|rpm|upm|%|er|te|tes|ten|ter|jhd)?$",
    re.IGNORECASE,
)
_DATE_LIKE = re.compile(r"^\d{1,4}[./-]\d{1,2}[./-]\d{1,4}$")
_NOT_A_PREFIX = frozenset({
    "EUR", "USD", "CHF", "GBP", "JPY", "NR", "NO", "ST", "STK", "PCS", "CA", "KG", "MM", "CM", "VAT", "UST",
    "MWST", "ART", "ABS", "PKT", "TEL", "FAX", "PLZ", "BLZ", "AG", "GMBH", "UG", "AZ", "SEITE", "KW",
    "TAG", "JAHR", "ZIFF", "NUMMER", "VON", "BIS", "UND", "ODER", "MIT", "FUER", "PER", "AM", "IM", "AB",
    "UHR", "TO", "OF", "IN", "AT", "ON", "FOR", "THE", "AND", "OR", "PAGE", "STEP", "PART",
    "EAN", "GTIN", "UPC", "ETIM", "ECLASS", "SKU", "MPN", "PID", "IBAN", "BIC", "USTID", "HRB", "HRA",
})
MIN_SKU_CHARS = 5  # alphanumeric characters of a SKU-like token


def gtin_valid(digits: str) -> bool:
    """GS1 mod-10 check digit of an 8, 12, 13 or 14 digit GTIN/EAN/UPC."""
    if not digits.isdigit() or len(digits) not in (8, 12, 13, 14):
        return False
    body, check = digits[:-1], int(digits[-1])
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10 == check


def gtin_check_digit(body: str) -> str:
    """The check digit completing ``body`` (7, 11, 12 or 13 digits) to a valid GTIN."""
    for d in "0123456789":
        if gtin_valid(body + d):
            return d
    raise ValueError(f"cannot complete {body!r} to a GTIN")


def identifier_key(identifier: str) -> str:
    """Matching key: uppercase letters and digits only (``3RV2011-1AA10`` -> ``3RV20111AA10``)."""
    return re.sub(r"[^0-9A-Z]", "", fold(identifier).upper())


def _sku_like(token: str) -> bool:
    key = identifier_key(token)
    if len(key) < MIN_SKU_CHARS or len(key) > 40:
        return False
    if not (any(c.isdigit() for c in key) and any(c.isalpha() for c in key)):
        return False
    if _MEASURE.match(token) or _DATE_LIKE.match(token):
        return False
    return True


def extract_identifiers(text: str) -> list[str]:
    """GTIN/EAN (checksum-validated), ETIM, ECLASS and SKU-like part numbers found in ``text``.

    Returns display forms, uppercased without spaces and deduplicated in order of appearance
    (``"WDU 2.5"`` -> ``"WDU2.5"``); :func:`identifier_key` gives the matching key.
    """
    found: dict[str, None] = {}

    def add(value: str) -> None:
        value = re.sub(r"\s+", "", value).upper()
        if value:
            found.setdefault(value, None)

    for m in _ETIM.finditer(text):
        add(m.group(1))
    for m in _ECLASS_DASHED.finditer(text):
        add(m.group(1))
    for m in _GTIN.finditer(text):
        digits = m.group(1)
        if gtin_valid(digits) or len(digits) == 8:  # 8 digits: GTIN-8 or an ECLASS class code
            add(digits)
    for m in _LETTER_NUMBER.finditer(text):
        prefix, number = m.group(1), m.group(2)
        if prefix not in _NOT_A_PREFIX and not _DATE_LIKE.match(number):
            candidate = prefix + number
            if len(identifier_key(candidate)) >= MIN_SKU_CHARS:
                add(candidate)
    for m in _SKU.finditer(text):
        token = m.group(1).strip(".-/")
        if _sku_like(token):
            add(token)
    return list(found)


def identifier_keys(identifiers: Iterable[str]) -> list[str]:
    """Deduplicated matching keys of ``identifiers`` (empty keys dropped)."""
    out: dict[str, None] = {}
    for ident in identifiers:
        key = identifier_key(ident)
        if len(key) >= 3:
            out.setdefault(key, None)
    return list(out)


def query_identifier_keys(query: str) -> list[str]:
    """Identifier keys a query may refer to, for exact matching against stored identifiers.

    More liberal than :func:`extract_identifiers` (extra candidates only cost a lookup): every
    identifier found in the query, each digit-bearing token of >= 5 characters, and adjacent
    token pairs that together look like a part number, so ``"3rv2011 1aa10"`` matches the
    stored ``3RV2011-1AA10`` and ``"wdu 2.5"`` matches ``WDU 2.5``.
    """
    keys: dict[str, None] = {}
    for ident in extract_identifiers(query) + extract_identifiers(query.upper()):
        keys.setdefault(identifier_key(ident), None)
    tokens = [t.strip(".,;:()[]{}\"'!?") for t in query.split()]
    tokens = [t for t in tokens if t]
    single = len(tokens) == 1
    for tok in tokens:
        key = identifier_key(tok)
        if any(c.isdigit() for c in key) and (len(key) >= MIN_SKU_CHARS or (single and len(key) >= 3)):
            keys.setdefault(key, None)
    for a, b in zip(tokens, tokens[1:], strict=False):
        # "3rv2011 1aa10", "wdu 2.5", "din 912": the second token carries digits and the first
        # is either digit-bearing too or a short letter code.
        if not _HAS_DIGIT.search(b):
            continue
        short_code = a.isalpha() and 2 <= len(a) <= 6 and fold(a) not in STOP_WORDS
        if not (_HAS_DIGIT.search(a) or short_code):
            continue
        key = identifier_key(a + b)
        if MIN_SKU_CHARS <= len(key) <= 40 and any(c.isalpha() for c in key) and not _MEASURE.match(a + b):
            keys.setdefault(key, None)
    return list(keys)


_GERMAN_MARKERS = frozenset(
    "der die das und ist nicht mit für von zu den dem des ein eine einer eines wird wurde werden "
    "sind auf bei nach über wie was welche welcher welches wer wann warum kann können muss "
    "darf oder aus im am zum zur auch nur noch sich was abs satz nr gem vor".split())
_ENGLISH_MARKERS = frozenset(
    "the and is are were of to in for with on by from which what who when why how can "
    "must may shall does do this that these those a an or any".split())


def detect_language(text: str) -> str | None:
    """'de', 'en' or None: a deterministic function-word vote (umlauts and ß count for German)."""
    words = re.findall(r"[a-zA-ZäöüÄÖÜß]+", text.lower())
    if not words:
        return None
    german = sum(w in _GERMAN_MARKERS for w in words) + sum(ch in "äöüß§" for ch in text.lower())
    english = sum(w in _ENGLISH_MARKERS for w in words)
    if german > english:
        return "de"
    if english > german:
        return "en"
    return None
