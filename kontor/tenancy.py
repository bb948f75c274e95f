"""Tenant ids and the request-scoped tenant context.

The tenant of a request is never a tool argument. A first-party server reads it through
:class:`kontor.auth.ServerAuth`: behind the gateway only from the request's verified internal
token (:func:`kontor.auth.tenant_from_request`), standalone (stdio, loopback HTTP) from the
context here — :func:`set_default_tenant` from ``KONTOR_TENANT``, or :func:`tenant_context`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_current: ContextVar[str | None] = ContextVar("kontor_tenant", default=None)


class InvalidTenant(ValueError):
    pass


class NoTenant(RuntimeError):
    """Raised when tenant data is touched outside a tenant context."""


def validate_tenant(tenant: str) -> str:
    """Return ``tenant`` if it is a valid slug (lowercase letters, digits, inner hyphens; 1-63)."""
    if not isinstance(tenant, str) or not _SLUG.fullmatch(tenant):
        raise InvalidTenant(
            f"invalid tenant id {tenant!r}: use 1-63 lowercase letters, digits and inner hyphens"
        )
    return tenant


def current_tenant() -> str:
    tenant = _current.get()
    if tenant is None:
        raise NoTenant("no tenant in context")
    return tenant


@contextmanager
def tenant_context(tenant: str) -> Iterator[str]:
    token = _current.set(validate_tenant(tenant))
    try:
        yield tenant
    finally:
        _current.reset(token)


def set_default_tenant(tenant: str) -> None:
    """Set the process-wide fallback tenant (a server configured for exactly one tenant)."""
    _current.set(validate_tenant(tenant))
