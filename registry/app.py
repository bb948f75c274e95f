"""The registry on the gateway's origin: the JSON API, the official read API, and where pages plug in.

Two ASGI apps, both mounted by :func:`kontor.gateway.app.build_app` (see :func:`gateway_mounts`):

* ``/registry`` — :func:`build_registry_app`: the JSON API under ``/registry/api/…``
  (:mod:`kontor.registry.api`) and its OpenAPI 3.1 document at ``/registry/openapi.json``
  (:mod:`kontor.registry.openapi`);
* ``/v0.1`` — :func:`build_read_api_app`: the read API of the official MCP registry
  (``GET /v0.1/servers``, ``…/{serverName}/versions``, ``…/{serverName}/versions/{version|latest}``).

**Authentication.** The registry accepts the gateway's own user access tokens (``Authorization:
Bearer``), verified by the gateway's :class:`~kontor.gateway.resource_server.UserTokenVerifier`
exactly as at the tenant's MCP endpoint: signature, issuer of that tenant, expiry, revocation, and
the **audience rule — the token's audience must be the tenant's MCP resource URI**
(``<origin>/t/<tenant>/mcp``), which is what the built-in authorization server issues (and what a
tenant's external issuer is configured to issue). No second audience exists, so a token for one
tenant is useless for another, and the registry never sees a token the gateway would not accept.
The tenant a token is checked against is, in this order: the ``X-Kontor-Tenant`` header, the
token's ``tenant`` claim, the tenant of a built-in issuer (``<origin>/t/<tenant>``), else the
tenant in the path (``/registry/api/tenants/<tenant>/…``) — all only to *choose* the tenant; the
verification decides. A route of a tenant then answers 403 to a caller of another tenant.

**Who may do what** (:class:`Caller`):

* *anyone* (no token): the read API's approved public entries, the OpenAPI document;
* *any user of a tenant*: the read API plus that tenant's private entries; the tenant's catalog;
  create publishers (owned by the e-mail address and tenant of the token) and act on the
  publishers they own — prove namespaces, submit versions, read their evidence, re-run the
  review, deprecate;
* *tenant admin* — a token with the scope ``tenant:admin`` (granted to admins only) **and** an
  enabled admin user in the gateway's database (the service checks): installations, upgrades,
  scopes, secrets, the connector;
* *platform admin* — a ``tenant:email`` entry of ``KONTOR_GATEWAY_PLATFORM_ADMINS`` (plus, in dev
  mode, the entries of ``<data_root>/gateway/registry/platform-admins.txt`` that ``kontor up``'s
  bootstrap writes for its demo admin): the review queue, every version's evidence, approve /
  reject / request changes / revoke, and namespaces granted by ``admin`` proof. A platform admin
  never decides on a version they published (the store refuses it in the decision's transaction).

**Extension points** (the pages build on these):

* :class:`RegistryContext` — everything a request needs (store, service, settings, platform
  admins, :meth:`RegistryContext.caller`); :func:`context_of` returns it inside a handler of
  either app;
* :data:`EXTRA_ROUTE_FACTORIES` and ``build_registry_app(..., extra_routes=...)`` — more routes
  under ``/registry``: a factory gets the context provider and returns Starlette routes; the API's
  paths (``/api/…``, ``/openapi.json``) are taken, and on the gateway (:func:`gateway_mounts`) so
  are the pages' (:func:`kontor.registry.pages.page_routes`: ``/``, ``/login``, ``/logout``,
  ``/review``, ``/versions/…``, ``/publish``, ``/publishers/…``, ``/catalog…``, ``/install``,
  ``/installations…``, ``/connect``, ``/static/…``);
* :mod:`kontor.registry.api` — the handlers' building blocks are public: the JSON shapes
  (``version_json``, ``installation_json``, …), the error mapping (``error_response``), and the
  operations with their authorization rules as plain async functions taking a context and a
  caller, so a page and its JSON twin share one rule;
* :func:`record_drift` — what the gateway calls when it withholds a tool of a registry
  installation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import BaseRoute, Mount

from kontor.gateway.bootstrap import PLATFORM_ADMINS_FILE as _BOOTSTRAP_FILE
from kontor.gateway.config import GatewaySettings, parse_platform_admins
from kontor.gateway.db import SERVED_STATES, GatewayDB
from kontor.gateway.resource_server import Principal, TokenRejected, bearer_token
from kontor.gateway.scopes import ADMIN_SCOPE
from kontor.registry.ownership import OwnershipChecker
from kontor.registry.review import ReviewConfig
from kontor.registry.reviewer import registry_review
from kontor.registry.service import RegistryService
from kontor.registry.store import CONFIG_KEY, IllegalTransition, RegistryStore, SecretBox, normalise_actor
from kontor.tenancy import InvalidTenant, validate_tenant

__all__ = [
    "EXTRA_ROUTE_FACTORIES",
    "PLATFORM_ADMINS_FILE",
    "Caller",
    "ContextProvider",
    "PlatformAdmins",
    "RegistryContext",
    "build_read_api_app",
    "build_registry_app",
    "context_of",
    "gateway_mounts",
    "record_drift",
]

log = logging.getLogger(__name__)

#: Where the dev bootstrap names its demo admin as a platform admin (read in dev mode only).
PLATFORM_ADMINS_FILE = Path("registry") / _BOOTSTRAP_FILE
TENANT_HEADER = "x-kontor-tenant"


# --- who is calling ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """A verified user of one tenant, as the registry sees them."""

    tenant: str
    email: str
    subject: str
    roles: tuple[str, ...]
    scopes: frozenset[str]
    platform_admin: bool

    @property
    def actor(self) -> str:
        """The actor id the registry records (the e-mail address)."""
        return self.email

    @property
    def tenant_admin(self) -> bool:
        """The token carries ``tenant:admin`` (the service still checks the user is an enabled admin)."""
        return ADMIN_SCOPE in self.scopes

    def to_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "email": self.email, "subject": self.subject, "roles": list(self.roles),
                "scopes": sorted(self.scopes), "tenant_admin": self.tenant_admin,
                "platform_admin": self.platform_admin}


class NoIdentity(TokenRejected):
    """A verified token without an e-mail address: the registry records people by e-mail."""


class PlatformAdmins:
    """The platform admins: configured ``(tenant, email)`` pairs, plus (dev mode) those of a file.

    The file (one ``tenant:email`` per line) is re-read when it changes; a malformed file is
    logged and ignored, never half-applied.
    """

    def __init__(self, entries: Iterable[tuple[str, str]] = (), file: Path | None = None) -> None:
        self.entries = frozenset((t, e.lower()) for t, e in entries)
        self.file = file
        self._file_state: tuple[float, int] | None = None
        self._file_entries: frozenset[tuple[str, str]] = frozenset()

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> PlatformAdmins:
        return cls(settings.platform_admin_entries,
                   settings.data_dir / PLATFORM_ADMINS_FILE if settings.dev_mode else None)

    def _from_file(self) -> frozenset[tuple[str, str]]:
        if self.file is None:
            return frozenset()
        try:
            stat = self.file.stat()
        except OSError:
            self._file_state, self._file_entries = None, frozenset()
            return self._file_entries
        state = (stat.st_mtime, stat.st_size)
        if state != self._file_state:
            try:
                self._file_entries = parse_platform_admins(self.file.read_text(encoding="utf-8"))
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                log.warning("ignoring %s: %s", self.file, exc)
                self._file_entries = frozenset()
            self._file_state = state
        return self._file_entries

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, tuple) or len(item) != 2:
            return False
        tenant, email = item
        key = (tenant, str(email).lower())
        return key in self.entries or key in self._from_file()


class RegistryContext:
    """Everything a registry request needs; one per running gateway (see :meth:`for_gateway`).

    ``verifier``: an object with ``async verify(token, tenant) -> Principal`` (the gateway's
    :class:`~kontor.gateway.resource_server.UserTokenVerifier`). Limits: ``max_body_bytes`` for
    JSON bodies, ``max_submission_bytes`` for a submitted ``server.json`` (larger: 413; the
    document's own limit of 64 KiB answers 422 with the problem's JSON path).
    """

    def __init__(self, *, settings: GatewaySettings, store: RegistryStore, service: RegistryService,
                 verifier: Any, platform_admins: PlatformAdmins | None = None,
                 ownership: OwnershipChecker | None = None, max_body_bytes: int = 64 * 1024,
                 max_submission_bytes: int = 1024 * 1024) -> None:
        self.settings = settings
        self.store = store
        self.service = service
        self.verifier = verifier
        self.platform_admins = platform_admins if platform_admins is not None else PlatformAdmins()
        self.ownership = ownership or OwnershipChecker()
        self.max_body_bytes = max_body_bytes
        self.max_submission_bytes = max_submission_bytes

    @classmethod
    def build(cls, settings: GatewaySettings, db: GatewayDB, verifier: Any, *,
              review_config: ReviewConfig | None = None, secret_box: SecretBox | None = None,
              local_urls: dict[str, str] | None = None,
              platform_admins: PlatformAdmins | None = None) -> RegistryContext:
        """A context over ``db``: one ownership checker shared by the namespace proofs and the review."""
        ownership = (review_config.ownership_checker if review_config is not None
                     and review_config.ownership_checker is not None else OwnershipChecker())
        config = (review_config or ReviewConfig()).with_(ownership_checker=ownership)
        box = secret_box or SecretBox.from_file(settings.data_dir / "registry" / "secrets.key")
        store = RegistryStore(db, secret_box=box)
        service = RegistryService(store, registry_review(store, config), local_urls=local_urls)
        return cls(settings=settings, store=store, service=service, verifier=verifier,
                   platform_admins=platform_admins or PlatformAdmins.from_settings(settings), ownership=ownership)

    @classmethod
    def for_gateway(cls, runtime: Any) -> RegistryContext:
        """The context of a running gateway (:class:`kontor.gateway.app.Runtime`): its database and verifier."""
        return cls.build(runtime.settings, runtime.db, runtime.verifier)

    def is_platform_admin(self, tenant: str, email: str) -> bool:
        return (tenant, email.lower()) in self.platform_admins

    def _token_tenant(self, request: Request, token: str) -> str | None:
        hinted = request.headers.get(TENANT_HEADER)
        if hinted:
            return hinted.strip()
        import base64
        import json

        try:
            payload = token.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (IndexError, ValueError, UnicodeDecodeError):
            return None
        if not isinstance(claims, dict):
            return None
        tenant = claims.get("tenant")
        if isinstance(tenant, str):
            return tenant
        iss = claims.get("iss")
        prefix = f"{self.settings.origin}/t/"
        if isinstance(iss, str) and iss.startswith(prefix):
            return iss[len(prefix):]
        return None

    async def caller(self, request: Request, tenant: str | None = None) -> Caller | None:
        """The verified caller, or None without an ``Authorization`` header.

        The token is verified for its own tenant (``X-Kontor-Tenant``, its ``tenant`` claim or
        built-in issuer), falling back to ``tenant`` (the path's) when it names none; a handler
        compares :attr:`Caller.tenant` with the tenant it serves.

        Raises :class:`~kontor.gateway.resource_server.TokenRejected` for a token the gateway
        would refuse (or one without an e-mail address), naming why.
        """
        query = request.query_params
        if "access_token" in query:
            raise TokenRejected("access tokens are accepted only in the Authorization header", malformed=True)
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            return None
        chosen = self._token_tenant(request, token) or tenant
        if chosen is None:
            raise TokenRejected("cannot tell the token's tenant: send the X-Kontor-Tenant header")
        try:
            validate_tenant(chosen)
        except InvalidTenant:
            raise TokenRejected("token is for an unknown tenant") from None
        principal: Principal = await self.verifier.verify(token, chosen)
        if not principal.email:
            raise NoIdentity("the token carries no e-mail address; the registry records people by e-mail")
        try:
            email = normalise_actor(principal.email)
        except ValueError:
            raise NoIdentity("the token's e-mail address is not usable") from None
        return Caller(tenant=principal.tenant, email=email, subject=principal.subject, roles=tuple(principal.roles),
                      scopes=frozenset(principal.scopes),
                      platform_admin=self.is_platform_admin(principal.tenant, email))


#: ``() -> RegistryContext``: the context of the running gateway (built lazily, once it runs).
ContextProvider = Callable[[], RegistryContext]
#: Factories of further ``/registry`` routes (the pages): ``factory(provider) -> routes``.
EXTRA_ROUTE_FACTORIES: list[Callable[[ContextProvider], Sequence[BaseRoute]]] = []


def context_of(request: Request) -> RegistryContext:
    """The :class:`RegistryContext` inside a handler of the registry app or the read API app."""
    provider: ContextProvider = request.app.state.registry_context
    return provider()


# --- the apps ----------------------------------------------------------------------------------


def build_registry_app(provider: ContextProvider, *, extra_routes: Sequence[BaseRoute] = ()) -> Starlette:
    """The app mounted at ``/registry``: the JSON API, ``/openapi.json``, then the extra routes (the gateway
    passes the pages, :func:`kontor.registry.pages.page_routes`; see :func:`gateway_mounts`)."""
    from kontor.registry.api import api_routes

    routes: list[BaseRoute] = [*api_routes(), *extra_routes]
    for factory in EXTRA_ROUTE_FACTORIES:
        routes.extend(factory(provider))
    app = Starlette(routes=routes)
    app.state.registry_context = provider
    return app


def build_read_api_app(provider: ContextProvider) -> Starlette:
    """The app mounted at ``/v0.1``: the official registry's read API."""
    from kontor.registry.api import read_api_routes

    app = Starlette(routes=read_api_routes())
    app.state.registry_context = provider
    return app


def gateway_mounts(runtime: Callable[[], Any]) -> list[Mount]:
    """The gateway's mounts of the registry (``/registry`` and ``/v0.1``) over its running ``Runtime``."""
    cache: dict[str, Any] = {}

    def provider() -> RegistryContext:
        rt = runtime()
        if cache.get("runtime") is not rt:
            cache["context"] = RegistryContext.for_gateway(rt)
            cache["runtime"] = rt
        return cache["context"]

    from kontor.registry.pages import page_routes

    return [Mount("/registry", app=build_registry_app(provider, extra_routes=page_routes(provider))),
            Mount("/v0.1", app=build_read_api_app(provider))]


# --- the gateway's drift report ----------------------------------------------------------------


async def _no_review(server_json: Any, namespaces: list[str]) -> dict[str, Any]:  # pragma: no cover - unused
    raise RuntimeError("the drift hook does not review")


async def record_drift(db: GatewayDB, tenant: str, server: str, tool: str, reason: str) -> bool:
    """The gateway withheld ``tool`` of ``server`` for ``tenant``: a registry installation → ``needs_reapproval``.

    Installations made outside the registry (no registry facts in their config) are left alone —
    the gateway's own pin approval covers them. Returns whether the registry recorded anything.
    An installation already in ``needs_reapproval`` gets one more event naming the tool.
    """
    store = RegistryStore(db)
    installation = await store.get_installation(tenant, server)
    if installation is None or CONFIG_KEY not in installation.config or installation.state not in SERVED_STATES:
        return False
    service = RegistryService(store, _no_review, local_urls={})
    why = f"the live definition of tool {tool!r} no longer matches the approved snapshot: {reason}"
    try:
        await service.mark_needs_reapproval(tenant, server, [(tool, reason)], why)
    except IllegalTransition as exc:  # another replica moved it first; its event is written
        log.info("drift of %s/%s for %s already recorded: %s", server, tool, tenant, exc)
    return True

