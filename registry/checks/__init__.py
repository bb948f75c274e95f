"""Automated review checks of the registry (issue 4, section 3), pure and database-free.

One module per check, each returning :class:`~kontor.registry.checks.findings.Finding` objects:
``poisoning`` (check 5), ``shadowing`` (check 6), ``annotations`` (check 7); ``report`` combines
them, with the ``server.json`` problems of check 1 (:mod:`kontor.registry.server_json`), into the
evidence report and its risk label.
"""

from .findings import SEVERITIES, Finding, Severity, Span

__all__ = ["SEVERITIES", "Finding", "Severity", "Span"]
