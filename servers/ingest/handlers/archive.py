"""ZIP handler: members become children, after the archive passed its limits.

Before anything is decompressed the central directory is checked: member count, the sum of declared
uncompressed sizes, and the expansion ratio (``check_zip_limits``). While reading, actual bytes are
counted, so a header that lies about sizes cannot push past the limit either. Member names that are
absolute or contain '..' make the whole archive UnsafeContent (such an archive is crafted, not made by
accident). Directories, ``__MACOSX/`` and AppleDouble ``._*`` files are skipped.

Encrypted members: skipped, each with its reason in ``metadata["skipped"]``, so the readable members of
a partly encrypted archive are still ingested; when every file member is encrypted the archive is
CorruptFile ("password-protected"), since nothing at all could be read.
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from typing import Any

from kontor.servers.ingest.detect import ZIP
from kontor.servers.ingest.handlers.common import check_zip_limits
from kontor.servers.ingest.model import (
    Attachment,
    Block,
    CorruptFile,
    IngestError,
    LimitExceeded,
    ParsedDocument,
    UnsafeContent,
)
from kontor.settings import Limits

_READ_CHUNK = 64 * 1024
_DRIVE = re.compile(r"^[A-Za-z]:")


def check_member_name(name: str) -> None:
    """Refuse absolute paths and '..' components (zip slip)."""
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or _DRIVE.match(normalized):
        raise UnsafeContent(f"archive member {name!r} has an absolute path; refused")
    if any(part == ".." for part in normalized.split("/")):
        raise UnsafeContent(f"archive member {name!r} points outside the archive ('..'); refused")
    if "\x00" in name:
        raise UnsafeContent(f"archive member {name!r} contains a NUL byte; refused")


def _skip_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename.replace("\\", "/")
    if not name:
        return "member without a name"
    if name.endswith("/"):
        return "directory"
    parts = name.split("/")
    if parts[0] == "__MACOSX" or parts[-1].startswith("._") or parts[-1] == ".DS_Store":
        return "macOS metadata"
    return None


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: int) -> bytes:
    """Read one member, counting real bytes against its declared size and the remaining budget."""
    out = bytearray()
    with zf.open(info) as fh:
        while True:
            chunk = fh.read(_READ_CHUNK)
            if not chunk:
                break
            out += chunk
            if len(out) > info.file_size:
                raise LimitExceeded(
                    f"archive member {info.filename!r} expands beyond its declared size of "
                    f"{info.file_size} bytes"
                )
            if len(out) > budget:
                raise LimitExceeded(
                    "archive expands beyond the limit of max_archive_total_bytes while reading "
                    f"{info.filename!r}"
                )
    return bytes(out)


def parse(data: bytes, name: str, limits: Limits) -> ParsedDocument:
    """Parse a ZIP archive into children (nested archives are children too; the pipeline recurses)."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError,
            UnicodeDecodeError) as exc:
        raise CorruptFile(f"ZIP archive cannot be opened: {exc}") from exc
    with zf:
        check_zip_limits(zf, limits)
        infos = zf.infolist()
        for info in infos:
            check_member_name(info.filename)
        children: list[Attachment] = []
        skipped: list[dict[str, str]] = []
        listing: list[str] = []
        budget = limits.max_archive_total_bytes
        encrypted = 0
        files = 0
        for info in infos:
            reason = _skip_reason(info)
            if reason == "directory":
                continue
            if reason:
                skipped.append({"name": info.filename, "reason": reason})
                continue
            files += 1
            if info.flag_bits & 0x1:
                encrypted += 1
                skipped.append({"name": info.filename, "reason": "encrypted (password-protected) member"})
                continue
            if info.file_size > limits.max_file_bytes:
                skipped.append({"name": info.filename,
                                "reason": f"{info.file_size} bytes, more than max_file_bytes"})
                continue
            try:
                content = _read_member(zf, info, budget)
            except IngestError:
                raise
            except NotImplementedError as exc:  # e.g. an unsupported compression method
                skipped.append({"name": info.filename, "reason": f"cannot be decompressed: {exc}"})
                continue
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, RuntimeError) as exc:
                raise CorruptFile(f"archive member {info.filename!r} is damaged: {exc}") from exc
            budget -= len(content)
            if not content:
                skipped.append({"name": info.filename, "reason": "empty file"})
                continue
            children.append(Attachment(name=info.filename, data=content))
            listing.append(f"- {info.filename} ({len(content)} bytes)")
    if files and encrypted == files:
        raise CorruptFile(f"archive is password-protected: all {files} file members are encrypted")
    meta: dict[str, Any] = {"members": len(children)}
    if skipped:
        meta["skipped"] = skipped
    blocks = [Block(kind="list", text="\n".join(listing), section=name)] if listing else []
    return ParsedDocument(mime=ZIP, title=name, blocks=blocks, children=children, metadata=meta)
