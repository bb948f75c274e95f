"""Tool-poisoning heuristics (review check 5): text in tool definitions aimed at the model instead of the user.

A tool's title, description and schema texts, and a server's instructions, go into the model's
context verbatim. Published attacks (Invariant Labs' "tool poisoning" and "shadowing" write-ups,
ASCII smuggling with Unicode tag characters, ANSI escapes hiding text in terminals, "full-schema
poisoning" in parameter defaults) hide orders there: read ``~/.ssh/id_rsa`` and pass it as a
parameter, send every e-mail to another address, don't tell the user. Every text is scanned by the
rules in :data:`RULES`; each finding names the tool, the field, the span and the rule.

How matching works:

* Phrase rules run on a *folded* copy of the text (:func:`kontor.registry.checks.text.fold`):
  hidden characters removed, NFKC, Cyrillic/Greek/… look-alikes read as Latin, so ``ign\\u200bore``
  or ``іgnore`` still match; spans are mapped back to the original text.
* English and German phrasings; imperatives (``read``, ``lies``) rather than descriptions of
  behaviour (``reads``, ``liest``) — ordinary descriptions say what a tool does in the third
  person, injected orders address the model.
* References to tools: the server's own tools are fine; names of other known tools (first-party and
  catalog), gateway-qualified names (``server__tool``) and phrases about "other tools/servers" are
  findings, and high when the sentence also redirects behaviour ("instead of", "whenever", …).
* Character rules run on the original text: Unicode tag characters (decoded in the evidence),
  bidirectional controls, zero-width and other invisible characters, control characters (ANSI
  escapes), private-use characters, mixed-script words.
* Encoded blobs: base64/hex runs are decoded; readable decoded text is a high finding and is
  itself scanned (the rule ids found inside are in the evidence).
* Size: per-field limits (:data:`TEXT_LIMITS`) and long whitespace runs that push text out of view.

Severities are fixed per rule (see :data:`RULES`); the report combines them (``report.py``).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import ipaddress
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .findings import Finding, Severity, is_hidden_char, make_span, visible
from .text import fold, latin_lookalike, script_of

__all__ = [
    "RULES",
    "TEXT_LIMITS",
    "scan_server",
    "scan_server_metadata",
    "scan_text",
    "scan_tool",
    "tool_texts",
]

MAX_SCAN_CHARS = 100_000  # text beyond this is not scanned (it is reported as oversized anyway)
MAX_FINDINGS_PER_RULE = 20  # per field; the last one says how many more there were
MAX_SCHEMA_DEPTH = 24
TEXT_LIMITS: dict[str, int] = {"title": 200, "description": 4096, "instructions": 8192, "schema": 1024,
                               "prompt": 4096, "resource": 4096}

# rule id → (severity, what it means)
RULES: dict[str, tuple[Severity, str]] = {
    "poisoning.instruction-override": ("critical", "tries to override the model's instructions"),
    "poisoning.concealment": ("critical", "tells the model to hide something from the user"),
    "poisoning.unicode-tags": ("critical", "Unicode tag characters (invisible ASCII smuggling)"),
    "poisoning.hidden-tag": ("high", "pseudo-markup addressed to the model (<IMPORTANT>, <system>, comments)"),
    "poisoning.sensitive-file": ("high", "names a file that holds secrets (SSH keys, cloud credentials, …)"),
    "poisoning.secret-request": ("high", "asks for secrets, keys, tokens or credentials to be read or passed on"),
    "poisoning.env-request": ("high", "asks for environment variables to be read or passed on"),
    "poisoning.conversation-request": ("high", "asks for the conversation, system prompt or context"),
    "poisoning.exfiltration-directive": ("high", "tells the model to send data to a concrete address"),
    "poisoning.exfiltration-endpoint": ("high", "names a data-collection endpoint (webhook, request bin, tunnel)"),
    "poisoning.tool-hijack": ("high", "changes how another tool or server is used"),
    "poisoning.bidi-control": ("high", "bidirectional control characters (text shown differs from text read)"),
    "poisoning.invisible-characters": ("high", "zero-width or other invisible characters"),
    "poisoning.control-characters": ("high", "control characters (ANSI escapes, backspace, lone CR)"),
    "poisoning.encoded-text": ("high", "an encoded blob that decodes to readable text"),
    "poisoning.model-directive": ("medium", "orders addressed to the model about when or how to use tools"),
    "poisoning.secret-solicitation": ("medium", "asks the model to provide a secret"),
    "poisoning.env-reference": ("medium", "references a secret-looking environment variable"),
    "poisoning.tool-reference": ("medium", "refers to other tools or servers"),
    "poisoning.url-ip-literal": ("medium", "a URL with a literal IP address"),
    "poisoning.encoded-blob": ("medium", "a long base64 or hex blob"),
    "poisoning.mixed-script-word": ("medium", "a word mixing Latin with look-alike letters of another script"),
    "poisoning.whitespace-padding": ("medium", "a long run of whitespace that pushes text out of view"),
    "poisoning.oversized-text": ("medium", "text longer than the limit for its field"),
    "poisoning.contact-address": ("low", "an e-mail address or phone number (possible exfiltration target)"),
    "poisoning.private-use-characters": ("low", "private-use characters (render unpredictably)"),
    "poisoning.soft-hyphen": ("low", "soft hyphens (invisible unless a line breaks there)"),
    "poisoning.url": ("info", "a URL (listed for the reviewer)"),
}

_F = re.IGNORECASE | re.UNICODE
_S = r"[^.!?\n]"  # any character within one sentence


def _rx(*patterns: str) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, _F) for p in patterns)


# ------------------------------------------------------------------------------------ phrase rules

_OVERRIDE = _rx(
    rf"\b(?:ignore|disregard|forget|overrid(?:e|ing)|bypass|neglect)\b{_S}{{0,30}}?"
    rf"\b(?:previous|prior|preceding|above|earlier|former|original|all|any|other|your|existing|system|safety|"
    rf"developer)\b{_S}{{0,20}}?\b(?:instructions?|prompts?|rules|guidelines|directives|guardrails|restrictions|"
    rf"messages)\b",
    r"\b(?:new|updated|real|actual|true|secret)\s+(?:system\s+)?instructions?\s*:",
    r"\byou\s+are\s+now\s+(?:an?|the|in\s+\w+\s+mode|DAN|free|unrestricted|allowed)\b",
    r"\byou\s+are\s+no\s+longer\s+(?:an?|the|bound|restricted|required|limited)\b",
    r"\b(?:jailbreak|DAN\s+mode|developer\s+mode\s+enabled)\b",
    # German
    rf"\b(?:ignorier\w*|missacht\w*|vergiss|vergesse?n?|übergeh\w*|umgeh\w*)\b{_S}{{0,40}}?"
    rf"\b(?:Anweisung\w*|Instruktion\w*|Regel\w*|Vorgabe\w*|Befehl\w*|Richtlinie\w*|System-?prompt\w*|Prompt\w*)",
    r"\bneue\s+(?:System-?)?Anweisung(?:en)?\s*:",
    r"\bdu\s+bist\s+(?:jetzt|nun|ab\s+sofort|ab\s+jetzt)\s+(?:ein|eine|der|die|im|frei|nicht\s+mehr)\b",
)

_CONCEAL = _rx(
    r"\b(?:do\s+not|don'?t|never|must\s+not|mustn'?t|should\s+not|shouldn'?t)\s+(?:tell|inform|notify|alert|warn)"
    r"\s+(?:the\s+)?(?:user|human|operator|customer|anyone|them)\b",
    rf"\b(?:do\s+not|don'?t|never|must\s+not|mustn'?t|should\s+not|shouldn'?t)\s+(?:mention|reveal|disclose|show|"
    rf"say)\b{_S}{{0,40}}?\bto\s+(?:the\s+)?(?:user|human|operator|customer|anyone)\b",
    rf"\bwithout\s+(?:telling|informing|notifying|alerting|asking|showing|letting|bothering)\b{_S}{{0,20}}?"
    rf"\b(?:user|human|operator|anyone)\b",
    r"\b(?:the\s+)?user\s+(?:must|should|need|needs|will|does)\s*(?:not|never|n't)\s+(?:to\s+)?"
    r"(?:know|see|notice|be\s+told|find\s+out|learn|be\s+informed|be\s+aware)\b",
    r"\b(?:keep|hold)\s+(?:this|it|these|that)\s+(?:a\s+)?secret\b",
    rf"\b(?:hide|conceal)\b{_S}{{0,30}}?\bfrom\s+(?:the\s+)?(?:user|human)\b",
    r"\b(?:do\s+not|don'?t|never)\s+(?:mention|reveal|disclose)\s+(?:this|that|it)\b",
    r"\bsilently\s+(?:send|forward|upload|post|copy|include|add|read|transmit|call|run|execute|exfiltrate|bcc|cc)\b",
    r"\b(?:secretly|covertly|behind\s+the\s+user'?s\s+back)\b",
    # German
    rf"\b(?:sag|sage|erzähl|erzähle|verrat|verrate|erwähn|erwähne|teil|teile)\b{_S}{{0,60}}?"
    rf"\b(?:Benutzer|Nutzer|Anwender|User|Kunde)\w*\b{_S}{{0,40}}?\bnichts?\b",
    r"\b(?:Benutzer|Nutzer|Anwender|User)\w*\s+(?:darf|soll|muss|braucht)\s+(?:davon\s+|das\s+|dies\s+|es\s+)?"
    r"(?:nichts?|niemals|nie)\s+(?:\w+\s+)?(?:wissen|merken|erfahren|sehen|mitbekommen|bemerken)\b",
    r"\bohne\s+(?:den|dem|die)?\s*(?:Benutzer|Nutzer|Anwender|User)\w*\s+(?:zu\s+)?(?:informieren|fragen|"
    r"benachrichtigen|warnen)\b",
    r"\b(?:verschweig|verheimlich)\w*",
    rf"\b(?:sende|schicke|übermittle|lies|kopiere|lade|leite|rufe|führe)\w*\b{_S}{{0,30}}?\b(?:heimlich|unbemerkt)\b",
    rf"\b(?:heimlich|unbemerkt)\b{_S}{{0,40}}?\b(?:senden|schicken|übermitteln|lesen|auslesen|kopieren|hochladen|"
    rf"weiterleiten|ausführen|aufrufen)\b",
    r"\b(?:erwähne|erwähn|verrate|verrat)\s+(?:dies|das|es)\s+nicht\b",
)

_DIRECTIVE = _rx(
    rf"\bbefore\s+(?:using|calling|invoking|running|executing)\s+(?:this|any|the|other|each|every)\b{_S}{{0,20}}?"
    rf"\b(?:tools?|functions?)\b",
    r"\b(?:always|first|must)\s+(?:call|use|invoke|run)\s+(?:this|the)\s+(?:tool|function)\b",
    r"\bthis\s+(?:tool|function)\s+(?:must|should)\s+(?:always\s+)?be\s+(?:called|used|invoked)\s+"
    r"(?:first|before)\b",
    r"\bit\s+is\s+(?:very\s+|extremely\s+|really\s+)?(?:important|crucial|critical|essential|vital|mandatory)\s+"
    r"(?:that\s+you|to\s+always|to\s+never|for\s+you)\b",
    r"\b(?:the\s+)?(?:assistant|AI(?:\s+model)?|LLM|agent|chatbot|language\s+model|Claude|GPT|ChatGPT|Copilot)\s+"
    r"(?:must|should|has\s+to|needs\s+to|is\s+required\s+to|shall)\b(?!\s+(?:not\s+)?be\b)",
    r"\byou\s+are\s+(?:an?\s+|the\s+)?(?:AI|assistant|language\s+model|LLM|agent)\b",
    r"\bas\s+an\s+AI\b",
    rf"\b(?:otherwise|or\s+else)\b{_S}{{0,40}}?\b(?:will|would)\s+(?:not\s+work|crash|fail|break|stop\s+working)\b",
    # German
    rf"\bbevor\s+du\b{_S}{{0,30}}?\b(?:Tool|Werkzeug|Funktion)\w*",
    r"\b(?:rufe|ruf|nutze|verwende|benutze)\s+(?:immer|zuerst|stets)\b",
    r"\bes\s+ist\s+(?:sehr\s+|äußerst\s+|extrem\s+)?(?:wichtig|entscheidend|zwingend)\w*,?\s+dass\s+du\b",
    r"\b(?:der|die|das)\s+(?:Assistent|KI|Agent|Sprachmodell)\s+(?:muss|soll|darf)\b",
    r"\bdu\s+musst\b",
    rf"\bandernfalls\b{_S}{{0,40}}?\b(?:funktioniert|stürzt|scheitert)\b",
)

_HIDDEN_TAG = _rx(
    r"<\s*/?\s*(?:important|system|instructions?|hidden|secret|admin|prompt|context|note[_ ]to[_ ](?:ai|assistant|"
    r"model)|assistant|system[_ ]prompt|override|priority|critical|wichtig|hinweis|anweisung(?:en)?)\s*>",
    r"<!--[\s\S]*?(?:-->|$)",
    r"\[/?(?:INST|SYS|SYSTEM)\]",
    r"<\|(?:im_start|im_end|system|endoftext|user|assistant)\|>",
    r"<<\s*/?SYS\s*>>",
    r"(?m)^\s*#{1,3}\s*(?:system|instructions?|anweisungen?)\s*:?\s*$",
)

_SENSITIVE_FILE = _rx(
    r"~/\.ssh\b|\.ssh/|\bid_(?:rsa|dsa|ecdsa|ed25519)\b|\.aws/(?:credentials|config)\b|\.netrc\b|\.npmrc\b|"
    r"\.pypirc\b|\.git-credentials\b|\.docker/config\.json\b|\.kube/config\b|/etc/(?:passwd|shadow|sudoers)\b|"
    r"\.gnupg\b|\bwallet\.dat\b|\bclaude_desktop_config\.json\b|\bmcp\.json\b|\.cursor/|\.bash_history\b|"
    r"\.zsh_history\b|\bcookies\.sqlite\b|\.kdbx\b|\.ppk\b|%APPDATA%|\.config/gcloud\b|\.azure/"
)

_SECRET_NOUN = (
    r"(?P<noun>api[ _-]?keys?|secret(?:s|\s+keys?)?|passwords?|passphrases?|credentials?|(?:access|auth|bearer|session|"
    r"refresh|api|oauth|github|slack|personal\s+access)[ _-]?tokens?|tokens?|private[ _-]?keys?|ssh[ _-]?keys?|"
    r"session\s+cookies?|cookies|seed\s+phrases?|mnemonic|\.env\b|Passw(?:ö|oe)rt(?:er)?|Passwort|Kennw(?:ö|oe)rt(?:er)?|"
    r"Kennwort|Zugangsdaten|Anmeldedaten|API-?Schlüssel|(?:privaten?|geheimen?)\s+Schlüssel|SSH-?Schlüssel|Geheimnis\w*)"
)
# "token" alone is a secret unless a word before it says otherwise (pagination, LLM token counts, …).
_NOT_A_SECRET = re.compile(
    r"(?:page|pagination|cursor|continuation|next|sync|csrf|max|input|output|completion|design|sort)[ _-]?$", _F)
_SECRET_REQUEST = _rx(
    rf"\b(?P<verb>read|cat|send|include|pass|append|attach|upload|forward|post|transmit|exfiltrate|leak|dump|"
    rf"copy|paste|embed|extract|collect|grab|insert|print|output|echo|lies|lese|sende|schicke|übermittle|"
    rf"übertrage|kopiere|hänge|füge|übergib|gib|lade|sammle)\b{_S}{{0,50}}?(?<!\w){_SECRET_NOUN}",
)
_SECRET_SOLICIT = _rx(
    rf"\b(?:provide|give|share|enter|supply|tell\s+me|nenne|teile|verrate)\b{_S}{{0,30}}?\b(?:your|the|user'?s|"
    rf"dein\w*|Ihr\w*|die|das|den)\s+{_SECRET_NOUN}",
    rf"\b(?:add|insert|put|paste|include|set|enter|type|geben|gib|trage|füge)\b{_S}{{0,30}}?\b(?:your|dein\w*|Ihr\w*)\s+"
    rf"{_SECRET_NOUN}",
)
_ENV_REQUEST = _rx(
    rf"\b(?:read|send|include|pass|dump|print|list|copy|collect|extract|append|upload|forward|return|output|echo|"
    rf"lies|sende|schicke|übermittle|kopiere|gib)\b{_S}{{0,40}}?(?:\b(?:all\s+)?env(?:ironment)?\s+var(?:iable)?s?\b|"
    rf"\bos\.environ\b|\bprocess\.env\b|\bgetenv\b|\bprintenv\b|\$ENV\b|\bUmgebungsvariable\w*)",
)
_ENV_REFERENCE = _rx(
    r"\bos\.environ\s*\[|\bprocess\.env\.[A-Z_]+|\$\{?[A-Z][A-Z0-9_]*(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD|PWD|"
    r"CREDENTIALS?)\b\}?|%[A-Z_]*(?:KEY|TOKEN|SECRET|PASSWORD)%",
)
_CONVERSATION = _rx(
    rf"\b(?:include|send|pass|put|copy|append|attach|forward|add|insert|dump|output|repeat|print|reveal|share|"
    rf"sende|schicke|übermittle|füge|kopiere|gib)\b{_S}{{0,40}}?\b(?:the\s+)?(?:full\s+|entire\s+|whole\s+|"
    rf"complete\s+)?(?:conversation|chat\s+history|chat\s+log|message\s+history|previous\s+messages|prior\s+messages|"
    rf"system\s+prompt|all\s+(?:previous\s+)?messages|context\s+window|your\s+instructions|Gesprächsverlauf\w*|"
    rf"Chatverlauf\w*|Konversation\w*|System-?prompt\w*|bisherigen\s+Nachrichten)\b",
)

_PHRASE_RULES: tuple[tuple[str, tuple[re.Pattern[str], ...]], ...] = (
    ("poisoning.instruction-override", _OVERRIDE),
    ("poisoning.concealment", _CONCEAL),
    ("poisoning.model-directive", _DIRECTIVE),
    ("poisoning.hidden-tag", _HIDDEN_TAG),
    ("poisoning.sensitive-file", _SENSITIVE_FILE),
    ("poisoning.secret-request", _SECRET_REQUEST),
    ("poisoning.secret-solicitation", _SECRET_SOLICIT),
    ("poisoning.env-request", _ENV_REQUEST),
    ("poisoning.env-reference", _ENV_REFERENCE),
    ("poisoning.conversation-request", _CONVERSATION),
)

# ------------------------------------------------------------------------- destinations and tools

_URL = re.compile(r"\b(?:https?|ftp|wss?)://[^\s<>\"'`)\]]+", _F)
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_PHONE = re.compile(r"(?<![\w+])\+\d[\d ()/-]{6,}\d\b")
_SEND_VERB = re.compile(
    r"\b(?:send|sends|forward|upload|post|transmit|exfiltrate|e-?mail|mail|report|copy|deliver|push|bcc|cc|redirect|"
    r"route|recipient|sende|schicke|übermittle|übertrage|leite|weiterleiten|lade|hochladen|Empfänger)\b", _F)
_COLLECTOR_HOSTS = re.compile(
    r"(?:^|\.)(?:webhook\.site|requestbin\.\w+|pipedream\.net|ngrok(?:-free)?\.(?:io|app|dev)|"
    r"burpcollaborator\.net|oastify\.com|interact\.sh|oast\.(?:fun|live|me|online|pro|site)|canarytokens\.com|"
    r"pastebin\.com|hookbin\.com|beeceptor\.com|trycloudflare\.com|serveo\.net|localtunnel\.me|loca\.lt|"
    r"requestcatcher\.com|discord(?:app)?\.com|hooks\.slack\.com|transfer\.sh)$", _F)
_QUALIFIED_TOOL = re.compile(r"\b(?:mcp__[\w-]+__[\w-]+|[a-z][a-z0-9-]{1,23}__[A-Za-z0-9][A-Za-z0-9_-]*|"
                             r"functions\.[A-Za-z_]\w*)\b")
_OTHER_TOOLS = _rx(
    r"\b(?:other|another|all|every|any|different)\s+(?:available\s+|connected\s+|installed\s+)?"
    r"(?:(?:mcp\s+)?tools?|mcp\s+servers?|connectors?)\b",
    r"\b(?:other|another|all|every|any)\s+(?:available|connected|installed)\s+(?:servers?|functions|plugins?)\b",
    r"\b(?:andere[nmrs]?|alle[nm]?|jede[nmrs]?)\s+(?:verfügbaren\s+)?(?:MCP-?)?(?:Tools?|Werkzeuge?|Server|Funktionen)\b",
)
_HIJACK = re.compile(
    r"\b(?:instead\s+of|rather\s+than|in\s+place\s+of|do\s+not\s+use|don'?t\s+use|never\s+use|must\s+not\s+use|"
    r"whenever|every\s+time|each\s+time|side\s+effect|also\s+call|first\s+call|before\s+calling|after\s+calling|"
    r"when\s+this\s+tool\s+is\s+available|redirect|replace|override|statt|anstelle|anstatt|immer\s+wenn|"
    r"when\s+\S+\s+is\s+(?:called|invoked|used)|(?:change|set|modify)\s+the\s+(?:recipient|destination|target)|"
    r"jedes\s+Mal|Nebeneffekt|Nebenwirkung)\b", _F)

# ------------------------------------------------------------------------------- character rules

_TAGS = range(0xE0000, 0xE0080)
_BIDI = frozenset({0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069, 0x200E, 0x200F, 0x061C})
_SOFT_HYPHEN = 0x00AD
_PICTO = re.compile(r"[\u2190-\u2BFF\u2600-\u27BF\U0001F000-\U0001FAFF]")

# --------------------------------------------------------------------------------------- blobs

_B64 = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{40,}={0,2}(?![A-Za-z0-9+/=_-])")
_HEX = re.compile(r"(?<![0-9A-Za-z])(?:0x)?[0-9A-Fa-f]{40,}(?![0-9A-Za-z])")
_DIGEST_LENGTHS = frozenset({32, 40, 64, 128})
_ESCAPES = re.compile(r"(?:(?:\\x[0-9A-Fa-f]{2}|\\u[0-9A-Fa-f]{4}|%[0-9A-Fa-f]{2}|&#x?[0-9A-Fa-f]{2,6};)){8,}")


@dataclass
class _Ctx:
    tool: str | None
    field: str
    own_tools: frozenset[str]
    known_tools: frozenset[str]


class _Collector:
    def __init__(self, text: str, ctx: _Ctx) -> None:
        self.text = text
        self.ctx = ctx
        self.findings: list[Finding] = []
        self.counts: Counter[str] = Counter()
        self.spans: dict[str, list[tuple[int, int]]] = {}

    def add(self, rule: str, start: int, end: int, message: str, **evidence: Any) -> None:
        if self.counts[rule] >= MAX_FINDINGS_PER_RULE:
            self.counts[rule] += 1  # past the cap only counted (overlaps included), so big texts stay linear
            return
        taken = self.spans.setdefault(rule, [])
        if any(s < end and start < e for s, e in taken):
            return  # the same rule already covers (part of) this span
        taken.append((start, end))
        self.counts[rule] += 1
        severity, _ = RULES[rule]
        self.findings.append(Finding(rule, severity, self.ctx.tool, self.ctx.field,
                                     make_span(self.text, start, end), message, evidence))

    def finish(self) -> list[Finding]:
        for rule, count in self.counts.items():
            if count > MAX_FINDINGS_PER_RULE:
                last = next(f for f in reversed(self.findings) if f.rule == rule)
                idx = self.findings.index(last)
                ev = dict(last.evidence, more_matches=count - MAX_FINDINGS_PER_RULE)
                self.findings[idx] = Finding(last.rule, last.severity, last.tool, last.field, last.span,
                                             last.message, ev)
        return sorted(self.findings, key=lambda f: (f.span.start if f.span else 0, f.rule))


_MESSAGES = {
    "poisoning.instruction-override": "tries to override the model's instructions",
    "poisoning.concealment": "tells the model to keep something from the user",
    "poisoning.model-directive": "gives the model orders about how or when to use tools",
    "poisoning.hidden-tag": "pseudo-markup addressed to the model, hidden from a rendered view",
    "poisoning.sensitive-file": "names a file that holds secrets",
    "poisoning.secret-request": "asks for a secret to be read or passed on",
    "poisoning.secret-solicitation": "asks the model to provide a secret",
    "poisoning.env-request": "asks for environment variables to be read or passed on",
    "poisoning.env-reference": "references a secret-looking environment variable",
    "poisoning.conversation-request": "asks for the conversation, system prompt or context",
}


def scan_text(text: str, *, tool: str | None = None, field: str = "description",
              own_tools: Collection[str] = (), known_tools: Collection[str] = (),
              limit: int | None = None) -> list[Finding]:
    """Every poisoning finding in one text. ``own_tools``: names of the tools of the same server (references to
    them are fine); ``known_tools``: names of other tools (first-party, catalog) whose mention is a finding;
    ``limit``: the size limit for this field (default from :data:`TEXT_LIMITS` by the field's kind)."""
    if not isinstance(text, str) or not text:
        return []
    ctx = _Ctx(tool, field, frozenset(own_tools), frozenset(known_tools) - frozenset(own_tools))
    col = _Collector(text, ctx)
    scanned = text[:MAX_SCAN_CHARS]
    _size(col, text, limit if limit is not None else TEXT_LIMITS[_kind(field)])
    _characters(col, scanned)
    folded = fold(scanned)
    for rule, patterns in _PHRASE_RULES:
        for pattern in patterns:
            for m in pattern.finditer(folded.text):
                if "noun" in pattern.groupindex and _not_a_secret_request(folded.text, m):
                    continue
                start, end = folded.span(m.start(), m.end())
                col.add(rule, start, end, _MESSAGES[rule])
    _destinations(col, folded)
    _tool_references(col, folded)
    _blobs(col, folded)
    return col.finish()


def _not_a_secret_request(text: str, m: re.Match[str]) -> bool:
    noun = m.group("noun").lower()
    before = text[max(0, m.start("noun") - 20):m.start("noun")]
    if noun in ("token", "tokens") and _NOT_A_SECRET.search(before):
        return True  # a pagination cursor or an LLM token count
    if "verb" in m.re.groupindex:
        if re.search(r"\b(?:your|dein\w*|Ihr\w*)\s+$", before, _F):
            return True  # set-up advice to the human reader ("include your API key …"): a solicitation at most
        if noun == ".env" and m.group("verb").lower() in ("copy", "paste", "kopiere"):
            return True  # "copy .env.example to .env"
    return False


def _kind(field: str) -> str:
    last = field.rsplit(".", 1)[-1]
    if field.startswith(("inputSchema", "outputSchema")):
        return "schema"
    if field.startswith("prompts"):
        return "prompt"
    if field.startswith(("resources", "resourceTemplates")):
        return "resource"
    if last in TEXT_LIMITS:
        return last
    return "description"


def _size(col: _Collector, text: str, limit: int) -> None:
    if len(text) > limit:
        col.add("poisoning.oversized-text", limit, len(text),
                f"{len(text)} characters, more than the {limit} allowed for this field",
                length=len(text), limit=limit)
    for m in re.finditer(r"[ \t\u00a0\u3000\u2000-\u200a]{40,}|(?:[ \t]*\r?\n){8,}", text[:MAX_SCAN_CHARS]):
        col.add("poisoning.whitespace-padding", m.start(), m.end(),
                f"{m.end() - m.start()} whitespace characters in a row push the following text out of view",
                length=m.end() - m.start())


def _characters(col: _Collector, text: str) -> None:
    i, n = 0, len(text)
    while i < n:
        kind = _char_kind(text, i)
        if kind is None:
            i += 1
            continue
        j = i + 1
        while j < n and _char_kind(text, j) == kind:
            j += 1
        run = text[i:j]
        points = sorted({f"U+{ord(c):04X}" for c in run})
        if kind == "tags":
            hidden = "".join(chr(ord(c) - 0xE0000) if 0xE0020 <= ord(c) <= 0xE007E else "" for c in run)
            col.add("poisoning.unicode-tags", i, j,
                    f"{j - i} invisible Unicode tag characters; they spell: {visible(hidden, 200)!r}",
                    decoded=visible(hidden, 500), codepoints=points)
        elif kind == "bidi":
            col.add("poisoning.bidi-control", i, j, "bidirectional control characters reorder what is displayed",
                    codepoints=points)
        elif kind == "invisible":
            col.add("poisoning.invisible-characters", i, j, f"{j - i} invisible character(s)", codepoints=points)
        elif kind == "control":
            col.add("poisoning.control-characters", i, j,
                    "control characters (ANSI escape sequences or similar can hide or rewrite text in terminals)",
                    codepoints=points)
        elif kind == "private":
            col.add("poisoning.private-use-characters", i, j, "private-use characters", codepoints=points)
        elif kind == "soft-hyphen":
            col.add("poisoning.soft-hyphen", i, j, "soft hyphen(s) inside the text", codepoints=points)
        i = j
    _mixed_script(col, text)


def _char_kind(text: str, i: int) -> str | None:
    ch = text[i]
    cp = ord(ch)
    if cp < 0x80 and ch not in "\x1b\x08\x7f\r" and (cp >= 0x20 or ch in "\t\n"):
        return None
    if ch == "\r":
        return None if text[i + 1: i + 2] == "\n" else "control"
    if cp in _TAGS:
        return "tags"
    if cp in _BIDI:
        return "bidi"
    if cp == _SOFT_HYPHEN:
        return "soft-hyphen"
    cat = unicodedata.category(ch)
    if cat == "Cc":
        return "control"
    if cat == "Co":
        return "private"
    if cp in (0xFE0E, 0xFE0F) and i > 0 and not is_hidden_char(text[i - 1]):
        return None  # one emoji/text presentation selector after a visible character
    if cp == 0x200D and 0 < i < len(text) - 1 and _PICTO.match(text[i - 1]) and _PICTO.match(text[i + 1]):
        return None  # zero-width joiner inside an emoji sequence
    if cat in ("Zl", "Zp"):
        return "control"
    if is_hidden_char(ch):
        return "invisible"
    return None


def _mixed_script(col: _Collector, text: str) -> None:
    for m in re.finditer(r"[^\W\d_]{3,}", text):
        word = m.group(0)
        scripts = {script_of(c) for c in word}
        if "LATIN" not in scripts:
            continue
        foreign = [c for c in word if script_of(c) not in ("LATIN", "COMMON", "INHERITED") and latin_lookalike(c)]
        if foreign:
            col.add("poisoning.mixed-script-word", m.start(), m.end(),
                    "a word mixes Latin letters with look-alike letters of another script",
                    lookalikes=[f"{c} (U+{ord(c):04X}, {script_of(c).title()}) looks like {latin_lookalike(c)}"
                                for c in dict.fromkeys(foreign)])


def _sentence_before(text: str, start: int, width: int = 100) -> tuple[int, str]:
    lo = max(0, start - width)
    window = text[lo:start]
    cut = max(window.rfind("\n"), window.rfind(". "), window.rfind("! "), window.rfind("? "))
    if cut >= 0:
        lo += cut + 1
    return lo, text[lo:start]


def _destinations(col: _Collector, folded: Any) -> None:
    text = folded.text
    literals: list[tuple[int, int, str]] = [(m.start(), m.end(), "url") for m in _URL.finditer(text)]
    in_url = _span_index([(s, e) for s, e, _ in literals])
    for m in _EMAIL.finditer(text):
        if not in_url(m.start()):
            literals.append((m.start(), m.end(), "email"))
    for m in _PHONE.finditer(text):
        literals.append((m.start(), m.end(), "phone"))
    for start, end, kind in sorted(literals):
        value = text[start:end].rstrip(".,;:")
        end = start + len(value)
        lo, before = _sentence_before(text, start)
        verbs = list(_SEND_VERB.finditer(before))
        verb = verbs[-1] if verbs else None
        o_start, o_end = folded.span(start, end)
        shown = col.text[o_start:o_end]  # the destination as written (look-alike letters included)
        extra = {"destination": shown, "kind": kind}
        if shown != value:
            extra["reads_as"] = value
        if verb is not None:
            v_start, _ = folded.span(lo + verb.start(), lo + verb.end())
            col.add("poisoning.exfiltration-directive", v_start, o_end,
                    f"tells the model to send something to {shown!r}", **extra)
            continue
        if kind == "url":
            host = _host(value)
            if host and _COLLECTOR_HOSTS.search(host):
                col.add("poisoning.exfiltration-endpoint", o_start, o_end,
                        f"{host} is a data-collection or tunnelling service", **extra)
            elif host and _is_ip(host):
                col.add("poisoning.url-ip-literal", o_start, o_end, "a URL with a literal IP address", **extra)
            else:
                col.add("poisoning.url", o_start, o_end, "a URL in the text", **extra)
        else:
            col.add("poisoning.contact-address", o_start, o_end,
                    f"an {'e-mail address' if kind == 'email' else 'phone number'} in the text", **extra)


def _host(url: str) -> str | None:
    m = re.match(r"[a-z]+://(?:[^@/\s]*@)?(\[[^\]]+\]|[^:/\s?#]+)", url, _F)
    return m.group(1).strip("[]").lower() if m else None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(re.fullmatch(r"\d+", host)) or bool(re.fullmatch(r"0x[0-9a-f]+", host))
    return True


def _distinctive(name: str) -> bool:
    return len(name) >= 3 and (any(c in name for c in "_-.") or re.search(r"[a-z][A-Z]", name) is not None
                               or len(name) >= 10)


def _tool_references(col: _Collector, folded: Any) -> None:
    text = folded.text
    refs: list[tuple[int, int, str]] = []
    for name in sorted(col.ctx.known_tools):
        if not name or len(name) > 128:
            continue
        esc = re.escape(name)
        if _distinctive(name):
            pattern = rf"(?<![\w.-]){esc}(?![\w-])"
        else:  # common words ("search") only count when written as a tool name
            pattern = rf"[`'\"]{esc}[`'\"]|(?<![\w.-]){esc}\s+(?:tool|function|Tool|Werkzeug)\b"
        for m in re.finditer(pattern, text, _F):
            refs.append((m.start(), m.end(), f"mentions the tool {name!r} of another server"))
    for m in _QUALIFIED_TOOL.finditer(text):
        name = m.group(0)
        if name not in col.ctx.own_tools:
            refs.append((m.start(), m.end(), f"mentions the qualified tool name {name!r}"))
    for pattern in _OTHER_TOOLS:
        for m in pattern.finditer(text):
            refs.append((m.start(), m.end(), "refers to other tools or servers"))
    for start, end, message in sorted(refs):
        lo, before = _sentence_before(text, start, 120)
        after = re.split(r"(?<=[.!?])\s|\n", text[end:end + 120], maxsplit=1)[0]
        o_start, o_end = folded.span(start, end)
        if _HIJACK.search(before) or _HIJACK.search(after):
            col.add("poisoning.tool-hijack", o_start, o_end,
                    message + ", and changes how it is used", reference=col.text[o_start:o_end])
        else:
            col.add("poisoning.tool-reference", o_start, o_end, message, reference=col.text[o_start:o_end])


def _entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def _readable(data: bytes) -> str | None:
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(decoded) < 8:
        return None
    printable = sum(1 for c in decoded if c.isprintable() or c in "\n\t" or 0xE0000 <= ord(c) <= 0xE007F)
    letters = sum(1 for c in decoded if c.isalpha() or c == " ")
    if printable / len(decoded) >= 0.9 and letters / len(decoded) >= 0.6:
        return decoded
    return None


def _decode_b64(blob: str) -> bytes | None:
    core = blob.rstrip("=")
    padded = core + "=" * (-len(core) % 4)
    for decoder in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            return decoder(padded)
        except (binascii.Error, ValueError):
            continue
    return None


def _span_index(spans: list[tuple[int, int]]) -> Any:
    """A function telling whether a position lies inside one of the (sorted, disjoint) ``spans``."""
    starts = [s for s, _ in spans]

    def inside(pos: int) -> bool:
        i = bisect.bisect_right(starts, pos) - 1
        return i >= 0 and pos < spans[i][1]

    return inside


def _blobs(col: _Collector, folded: Any) -> None:
    """Encoded runs, found in the folded text (an invisible character inside a blob does not split it)."""
    text = folded.text
    in_url = _span_index([(m.start(), m.end()) for m in _URL.finditer(text)])

    def report(m: re.Match[str], encoding: str, data: bytes) -> None:
        start, end = folded.span(m.start(), m.end())
        _report_blob(col, start, end, encoding, data)

    for m in _HEX.finditer(text):
        blob = m.group(0).removeprefix("0x")
        if in_url(m.start()) or not re.search(r"\d", blob) or not re.search(r"[A-Fa-f]", blob):
            continue
        data = bytes.fromhex(blob[: len(blob) // 2 * 2])
        if len(blob) in _DIGEST_LENGTHS and _readable(data) is None:
            continue  # a hash (MD5/SHA-1/SHA-256/SHA-512 shape) carries no hidden text
        report(m, "hex", data)
    for m in _B64.finditer(text):
        blob = m.group(0)
        if in_url(m.start()) or re.fullmatch(r"[0-9A-Fa-f]+", blob):
            continue
        has_mark = re.search(r"[0-9+/=]", blob) is not None
        mixed = re.search(r"[a-z]", blob) and re.search(r"[A-Z]", blob)
        if not (has_mark and mixed) or _entropy(blob) < 4.2:
            continue
        data = _decode_b64(blob)
        if data is not None:
            report(m, "base64", data)
    for m in _ESCAPES.finditer(text):
        start, end = folded.span(m.start(), m.end())
        col.add("poisoning.encoded-blob", start, end, "a long run of escape sequences", encoding="escapes")


def _report_blob(col: _Collector, start: int, end: int, encoding: str, data: bytes) -> None:
    readable = _readable(data)
    if readable is None:
        col.add("poisoning.encoded-blob", start, end, f"a {end - start}-character {encoding} blob",
                encoding=encoding, length=end - start)
        return
    inner = scan_text(readable, tool=col.ctx.tool, field=col.ctx.field, own_tools=col.ctx.own_tools,
                      known_tools=col.ctx.known_tools, limit=MAX_SCAN_CHARS)
    col.add("poisoning.encoded-text", start, end, f"a {encoding} blob that decodes to text: {visible(readable, 80)!r}",
            encoding=encoding, decoded=visible(readable, 500), decoded_rules=sorted({f.rule for f in inner}))


# ------------------------------------------------------------------------------------------ tools


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "model_dump"):
        return obj.model_dump(by_alias=True, mode="json", exclude_none=True)
    raise TypeError(f"expected a mapping or a pydantic model, got {type(obj).__name__}")


_SCHEMA_TEXT_KEYS = ("title", "description", "default", "examples", "enum", "const", "$comment")


def _schema_texts(node: Any, path: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    if depth > MAX_SCHEMA_DEPTH:
        return
    if isinstance(node, Mapping):
        for key, value in node.items():
            sub = f"{path}.{key}"
            if key in _SCHEMA_TEXT_KEYS:
                yield from _strings(value, sub, depth + 1)
            if key not in ("default", "examples", "enum", "const") and isinstance(value, Mapping | list):
                yield from _schema_texts(value, sub, depth + 1)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _schema_texts(item, f"{path}[{i}]", depth + 1)


def _strings(value: Any, path: str, depth: int) -> Iterator[tuple[str, str]]:
    if depth > MAX_SCHEMA_DEPTH:
        return
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{path}[{i}]", depth + 1)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}", depth + 1)


def tool_texts(tool: Any) -> list[tuple[str, str]]:
    """``(field, text)`` for every model-visible text of a tool: title, annotations.title, description and the
    titles/descriptions/defaults/examples/enums of its input and output schemas."""
    t = _as_dict(tool)
    out: list[tuple[str, str]] = []
    for key in ("title", "description"):
        if isinstance(t.get(key), str):
            out.append((key, t[key]))
    annotations = t.get("annotations")
    if isinstance(annotations, Mapping) and isinstance(annotations.get("title"), str):
        out.append(("annotations.title", annotations["title"]))
    for key in ("inputSchema", "outputSchema"):
        out.extend(_schema_texts(t.get(key), key))
    return out


def scan_tool(tool: Any, *, own_tools: Collection[str] | None = None,
              known_tools: Collection[str] = ()) -> list[Finding]:
    """Scan every text of one tool (see :func:`tool_texts`); ``own_tools`` defaults to the tool itself."""
    t = _as_dict(tool)
    name = t.get("name") if isinstance(t.get("name"), str) else None
    own = set(own_tools or ()) | ({name} if name else set())
    findings: list[Finding] = []
    for field, text in tool_texts(t):
        findings.extend(scan_text(text, tool=name, field=field, own_tools=own, known_tools=known_tools))
    return findings


def scan_server(tools: Iterable[Any], *, instructions: str | None = None, prompts: Iterable[Any] = (),
                resources: Iterable[Any] = (), resource_templates: Iterable[Any] = (),
                known_tools: Collection[str] = ()) -> list[Finding]:
    """Scan a server's live snapshot: every tool, the server's instructions, and prompt/resource descriptions.

    ``known_tools`` are tool names of *other* servers (first-party and catalog); mentioning one is a finding.
    The server's own tools may refer to each other.
    """
    tool_list = [_as_dict(t) for t in tools]
    own = {t["name"] for t in tool_list if isinstance(t.get("name"), str)}
    findings: list[Finding] = []
    for tool in tool_list:
        findings.extend(scan_tool(tool, own_tools=own, known_tools=known_tools))
    if instructions:
        findings.extend(scan_text(instructions, field="instructions", own_tools=own, known_tools=known_tools))
    for group, items in (("prompts", prompts), ("resources", resources), ("resourceTemplates", resource_templates)):
        for item in items:
            d = _as_dict(item)
            label = d.get("name") or d.get("uri") or d.get("uriTemplate") or "?"
            for key in ("title", "description"):
                if isinstance(d.get(key), str):
                    findings.extend(scan_text(d[key], field=f"{group}[{label}].{key}", own_tools=own,
                                              known_tools=known_tools))
            for i, arg in enumerate(d.get("arguments") or ()):
                if isinstance(arg, Mapping) and isinstance(arg.get("description"), str):
                    findings.extend(scan_text(arg["description"], field=f"{group}[{label}].arguments[{i}].description",
                                              own_tools=own, known_tools=known_tools))
    return findings


def scan_server_metadata(document: Mapping[str, Any]) -> list[Finding]:
    """Scan the human-facing texts of a ``server.json`` (title, description) with the same rules."""
    findings: list[Finding] = []
    for key in ("title", "description"):
        value = document.get(key) if isinstance(document, Mapping) else None
        if isinstance(value, str):
            findings.extend(scan_text(value, field=f"server.{key}", limit=TEXT_LIMITS["title"]))
    return findings
