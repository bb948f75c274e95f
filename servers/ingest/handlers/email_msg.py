"""E-mail handler (stdlib ``email``, ``policy.default``): headers into metadata, the body as paragraphs,
every attachment (attached e-mails included, as ``.eml``) as an :class:`Attachment` child."""

from __future__ import annotations

import email
import mimetypes
import re
from email import policy
from email.message import EmailMessage, Message
from typing import Any

from kontor.servers.ingest.detect import EML
from kontor.servers.ingest.handlers.common import decode_text
from kontor.servers.ingest.handlers.html import html_blocks
from kontor.servers.ingest.handlers.text import plain_blocks
from kontor.servers.ingest.model import Attachment, Block, CorruptFile, LimitExceeded, ParsedDocument
from kontor.settings import Limits

_HEADERS = (("From", "from"), ("To", "to"), ("Cc", "cc"), ("Subject", "subject"), ("Date", "date"),
            ("Message-ID", "message_id"), ("Reply-To", "reply_to"))
_UNSAFE_NAME = re.compile(r"[\x00-\x1f]")


def _header(msg: Message, name: str) -> str | None:
    try:
        value = msg.get(name)
    except Exception:  # policy.default parses headers lazily; malformed ones raise on access
        try:
            raw = msg.get_all(name) if hasattr(msg, "get_all") else None
        except Exception:
            return None
        value = raw[0] if raw else None
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text or None


def _safe_name(raw: str | None, index: int, content_type: str) -> str:
    """A file name for an attachment: the base name only (no paths), control characters removed."""
    name = _UNSAFE_NAME.sub("", raw or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    if name in ("", ".", ".."):
        guessed = mimetypes.guess_extension(content_type) or ".bin"
        ext = ".eml" if content_type == "message/rfc822" else guessed
        name = f"attachment-{index}{ext}"
    return name


def _payload_bytes(part: Message) -> bytes:
    if part.get_content_type() == "message/rfc822":
        inner = part.get_payload()
        if isinstance(inner, list) and inner:
            return inner[0].as_bytes(policy=policy.default)
        if isinstance(inner, Message):
            return inner.as_bytes(policy=policy.default)
    data = part.get_payload(decode=True)
    if isinstance(data, bytes):
        return data
    payload = part.get_payload()
    return payload.encode("utf-8", errors="replace") if isinstance(payload, str) else b""


def _text_of(part: Message) -> str:
    try:
        content = part.get_content()  # type: ignore[attr-defined]
        if isinstance(content, str):
            return content
    except (LookupError, UnicodeError, KeyError, AttributeError, ValueError):
        pass
    raw = part.get_payload(decode=True)
    return decode_text(raw)[0] if isinstance(raw, bytes) else ""


def _is_attachment(part: Message) -> bool:
    disposition = part.get_content_disposition()
    if disposition == "attachment":
        return True
    if part.get_filename():
        return True
    return part.get_content_maintype() not in ("text", "multipart")


def _walk(msg: Message, body_ids: set[int], found: list[Message]) -> None:
    """Collect attachment parts; attached messages are kept whole and not descended into."""
    if msg.is_multipart():
        payload = msg.get_payload()
        for sub in payload if isinstance(payload, list) else []:
            if sub.get_content_type() == "message/rfc822":
                found.append(sub)
            else:
                _walk(sub, body_ids, found)
        return
    if id(msg) in body_ids:
        return
    if _is_attachment(msg):
        found.append(msg)


def parse(data: bytes, name: str, limits: Limits) -> ParsedDocument:
    """Parse an RFC 822 / MIME message."""
    try:
        msg: Any = email.message_from_bytes(data, policy=policy.default)
    except Exception as exc:  # the parser is lenient; this is for truly broken input
        raise CorruptFile(f"e-mail cannot be parsed: {type(exc).__name__}: {exc}") from exc
    meta: dict[str, Any] = {}
    for header, key in _HEADERS:
        value = _header(msg, header)
        if value:
            meta[key] = value

    blocks: list[Block] = []
    body_ids: set[int] = set()
    try:
        body = msg.get_body(preferencelist=("plain", "html")) if isinstance(msg, EmailMessage) else None
    except Exception:
        body = None
    if body is not None and not (body.get_content_disposition() == "attachment"):
        body_ids.add(id(body))
        text = _text_of(body)
        if body.get_content_subtype() == "html":
            blocks = html_blocks(text)[1]
        else:
            blocks = plain_blocks(text.replace("\r\n", "\n"))
        # The HTML alternative of a text/plain body is the same content: not an attachment.
        if body.get_content_subtype() == "plain":
            try:
                alt = msg.get_body(preferencelist=("html",))
            except Exception:
                alt = None
            if alt is not None and alt.get_content_disposition() != "attachment":
                body_ids.add(id(alt))
        meta["body_type"] = body.get_content_type()

    parts: list[Message] = []
    _walk(msg, body_ids, parts)
    if len(parts) > limits.max_archive_members:
        raise LimitExceeded(
            f"e-mail has {len(parts)} attachments, more than the limit of {limits.max_archive_members}"
        )
    children: list[Attachment] = []
    for index, part in enumerate(parts, start=1):
        try:
            payload = _payload_bytes(part)
            filename = part.get_filename()
        except Exception as exc:
            raise CorruptFile(f"attachment {index} of the e-mail cannot be decoded: {exc}") from exc
        if not payload:
            continue
        children.append(Attachment(name=_safe_name(filename, index, part.get_content_type()), data=payload))
    if children:
        meta["attachments"] = [c.name for c in children]
    title = meta.get("subject") or name
    return ParsedDocument(mime=EML, title=title, blocks=blocks, children=children, metadata=meta)
