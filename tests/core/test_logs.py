"""Logging follows the current stderr: a captured stderr closed later (CLI test runners) breaks nothing."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from kontor.logs import configure_logging


def test_logging_writes_to_the_current_stderr_after_the_old_one_was_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = list(root.handlers)
    try:
        captured = io.StringIO()
        monkeypatch.setattr(sys, "stderr", captured)
        configure_logging("INFO")
        captured.close()  # what a test runner does with its capture
        now = io.StringIO()
        monkeypatch.setattr(sys, "stderr", now)
        logging.getLogger("kontor.test").warning("after the capture")
        assert "after the capture" in now.getvalue() and "Logging error" not in now.getvalue()
    finally:
        root.handlers[:] = saved
