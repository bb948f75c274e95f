"""The registry's state machines, as explicit transition tables.

**Version** of a server (what a publisher submitted)::

    submitted ─► checking ─┬─► checks_failed ──(rerun)──► checking
                           └─► in_review ─┬─► approved ─┬─► deprecated ─► revoked
                                          │             └─► revoked
                                          ├─► changes_requested ──(rerun)──► checking
                                          ├─► rejected
                                          └──(rerun)──► checking

* ``checking`` is entered on submission and on every re-run of the automated review; the run
  ends in ``checks_failed`` (a check failed) or ``in_review`` (waiting for a platform admin).
* A re-run is possible from ``checks_failed``, ``in_review`` and ``changes_requested`` (the
  ``server.json`` is immutable, but a remote server's live tools can be fixed and checked again).
* ``rejected`` and ``revoked`` are final. ``deprecated`` versions keep running where installed
  but are never installed or upgraded to again; ``revoked`` ones stop being served.

Each decision of a person maps onto one transition (:data:`DECISIONS`). A publisher never makes
a review decision (:data:`REVIEW_DECISIONS`) on their own version.

**Installation** of a server for a tenant (the gateway's ``installations`` row)::

    (none) ─► requested ─► enabled ⇄ disabled
                              │   ▲
                              ▼   │
                         needs_reapproval ─► disabled

    requested | enabled | disabled | needs_reapproval ─► uninstalled ─► requested (install again)

* ``requested``: installed but not served yet — required secrets are missing, or the tenant
  admin has not enabled it.
* ``needs_reapproval``: the live tool definitions drifted from the approved snapshot; the
  gateway still serves the installation but withholds the drifted tools (their pins).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from kontor.gateway.db import Conflict, InstallationState

__all__ = [
    "DECISIONS",
    "INSTALLABLE_STATES",
    "INSTALLATION_TRANSITIONS",
    "REVIEW_DECISIONS",
    "RERUN_FROM",
    "VERSION_TRANSITIONS",
    "Decision",
    "IllegalTransition",
    "InstallationState",
    "ProofMethod",
    "VersionState",
    "Visibility",
    "check_installation_transition",
    "check_version_transition",
]


class VersionState(StrEnum):
    submitted = "submitted"
    checking = "checking"
    checks_failed = "checks_failed"
    in_review = "in_review"
    changes_requested = "changes_requested"
    rejected = "rejected"
    approved = "approved"
    deprecated = "deprecated"
    revoked = "revoked"


class Decision(StrEnum):
    approve = "approve"
    reject = "reject"
    request_changes = "request_changes"
    revoke = "revoke"
    deprecate = "deprecate"


class Visibility(StrEnum):
    public = "public"
    private = "private"


class ProofMethod(StrEnum):
    http = "http"
    dns = "dns"
    admin = "admin"  # granted by a platform admin (first-party namespaces, manual verification)


V = VersionState
VERSION_TRANSITIONS: Mapping[VersionState, frozenset[VersionState]] = {
    V.submitted: frozenset({V.checking}),
    V.checking: frozenset({V.checks_failed, V.in_review}),
    V.checks_failed: frozenset({V.checking}),
    V.in_review: frozenset({V.checking, V.changes_requested, V.rejected, V.approved}),
    V.changes_requested: frozenset({V.checking}),
    V.rejected: frozenset(),
    V.approved: frozenset({V.deprecated, V.revoked}),
    V.deprecated: frozenset({V.revoked}),
    V.revoked: frozenset(),
}

#: decision → the state it leads to (its legal sources follow from :data:`VERSION_TRANSITIONS`).
DECISIONS: Mapping[Decision, VersionState] = {
    Decision.approve: V.approved,
    Decision.reject: V.rejected,
    Decision.request_changes: V.changes_requested,
    Decision.deprecate: V.deprecated,
    Decision.revoke: V.revoked,
}

#: Decisions of the review itself: never by the publisher of the version (owner or submitter).
REVIEW_DECISIONS = frozenset({Decision.approve, Decision.reject, Decision.request_changes})

#: States from which the automated review can run again (``checking`` itself: a crashed run is resumed).
RERUN_FROM = frozenset({V.checking, V.checks_failed, V.in_review, V.changes_requested})

#: Version states a tenant may install or upgrade to.
INSTALLABLE_STATES = frozenset({V.approved})

I = InstallationState  # noqa: E741 - a table reads better with short names
INSTALLATION_TRANSITIONS: Mapping[InstallationState | None, frozenset[InstallationState]] = {
    None: frozenset({I.requested}),
    I.requested: frozenset({I.enabled, I.uninstalled}),
    I.enabled: frozenset({I.disabled, I.needs_reapproval, I.uninstalled}),
    I.disabled: frozenset({I.enabled, I.uninstalled}),
    I.needs_reapproval: frozenset({I.enabled, I.disabled, I.uninstalled}),
    I.uninstalled: frozenset({I.requested}),
}


class IllegalTransition(Conflict):
    """A transition the state machine does not allow; the message names the from and to states."""

    def __init__(self, kind: str, subject: str, from_state: str | None, to_state: str,
                 allowed: frozenset[str] | None = None, detail: str | None = None) -> None:
        self.kind, self.subject = kind, subject
        self.from_state, self.to_state = from_state, to_state
        shown = "(none)" if from_state is None else repr(str(from_state))
        message = f"illegal {kind} transition of {subject}: from {shown} to {str(to_state)!r}"
        if detail:
            message += f" ({detail})"
        elif allowed is not None:
            message += (f"; from {shown} only {', '.join(sorted(repr(str(a)) for a in allowed))} "
                        "can follow" if allowed else f"; {shown} is final")
        super().__init__(message)


def check_version_transition(subject: str, from_state: str, to_state: str) -> VersionState:
    """``to_state`` as a :class:`VersionState` if the table allows ``from_state → to_state``, else raise."""
    source, target = VersionState(from_state), VersionState(to_state)
    allowed = VERSION_TRANSITIONS[source]
    if target not in allowed:
        raise IllegalTransition("version", subject, source, target, frozenset(allowed))
    return target


def check_installation_transition(subject: str, from_state: str | None, to_state: str) -> InstallationState:
    source = InstallationState(from_state) if from_state is not None else None
    target = InstallationState(to_state)
    allowed = INSTALLATION_TRANSITIONS[source]
    if target not in allowed:
        raise IllegalTransition("installation", subject, source, target, frozenset(allowed))
    return target
