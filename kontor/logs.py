"""Logging to stderr (stdout belongs to the MCP stdio transport)."""

from __future__ import annotations

import logging
import sys


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record, not the one at configuration:
    a replaced stderr (a test runner's capture, a redirect) that is closed later must not break logging."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def configure_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if any(getattr(h, "_kontor", False) for h in root.handlers):
        root.setLevel(level.upper())
        return
    handler = _StderrHandler()
    handler._kontor = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "urllib3", "sentence_transformers", "lance", "lancedb", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
