"""The registry's JSON API (``/registry/api/…``) and the official registry's read API (``/v0.1/…``).

Every handler answers JSON. Errors are ``{"error": "<what is wrong>", …}`` with a 4xx status that
names the kind of problem — 400 a request that cannot be read (not JSON, a field of the wrong
type, a bad cursor), 401 no or a refused token (``WWW-Authenticate: Bearer``), 403 a caller who
may not do this, 404 something that does not exist *or that the caller may not see* (another
tenant's private server is never "forbidden", so its existence is not revealed), 409 a state that
does not allow it (an illegal transition, a concurrent change, a taken name), 413 a body over the
limit, 422 a body that was read but is not acceptable (``problems`` lists every problem of a
``server.json`` with its JSON path). An unexpected error is logged and answered 500 without detail.

The operations are module-level async functions (``submit_version``, ``decide``, ``install``, …)
taking the :class:`~kontor.registry.app.RegistryContext` and the :class:`~kontor.registry.app.Caller`,
so the pages can call the same rules; the ``*_json`` functions are the response shapes.
See :mod:`kontor.registry.app` for authentication and roles, :mod:`kontor.registry.openapi` for
the document that describes every route here.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kontor.gateway.db import (
    SERVED_STATES,
    AlreadyExists,
    Conflict,
    GatewayDBError,
    Installation,
    InstallationState,
    InvalidValue,
    NotFound,
    PinState,
)
from kontor.gateway.naming import SEPARATOR, NameCollision, NamingError
from kontor.gateway.resource_server import TokenRejected
from kontor.registry.app import Caller, RegistryContext, context_of
from kontor.registry.lifecycle import Decision, IllegalTransition, ProofMethod, VersionState, Visibility
from kontor.registry.ownership import OwnershipProof
from kontor.registry.server_json import Problem
from kontor.registry.service import (
    InvalidSubmission,
    declared_secrets,
    needed_scopes,
    tool_diff,
)
from kontor.registry.store import (
    CONFIG_KEY,
    CatalogEntry,
    Namespace,
    PermissionDenied,
    Publisher,
    ReviewRun,
    SecretRef,
    SecretsUnavailable,
    Server,
    Version,
    VersionDecision,
    latest_version,
    normalise_reason,
)
from kontor.tenancy import InvalidTenant, validate_tenant

__all__ = [
    "ApiError",
    "api_routes",
    "apply_decision",
    "authorize_decision",
    "catalog_entry_json",
    "connector_json",
    "error_response",
    "grant_installation_scopes",
    "installation_json",
    "official_entry",
    "publisher_json",
    "read_api_routes",
    "require_installation_admin",
    "version_json",
]

log = logging.getLogger(__name__)

OFFICIAL_META = "io.modelcontextprotocol.registry/official"
KONTOR_META = "io.kontor/review"
DEFAULT_LIMIT, MAX_LIMIT = 30, 100
MAX_FINDINGS_SHOWN = 50
FAILING = ("high", "critical")


# --- errors ------------------------------------------------------------------------------------


class ApiError(Exception):
    """An answer other than success: ``status``, a message naming the problem, extra JSON fields."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, dict(headers or {}), extra


def _error(status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=dict(headers or {}))


def error_response(exc: BaseException) -> JSONResponse:
    """The JSON answer for an exception raised by an operation (see the module docstring for the statuses)."""
    if isinstance(exc, ApiError):
        return _error(exc.status, exc.message, exc.headers, **exc.extra)
    if isinstance(exc, TokenRejected):
        status = 400 if exc.malformed else 401
        code = "invalid_request" if exc.malformed else "invalid_token"
        safe = exc.reason.replace("\\", "").replace('"', "'")
        return _error(status, exc.reason, {"WWW-Authenticate": f'Bearer error="{code}", error_description="{safe}"'})
    if isinstance(exc, InvalidSubmission):
        return _error(422, str(exc), problems=[p.to_dict() for p in exc.problems])
    if isinstance(exc, PermissionDenied):
        return _error(403, str(exc))
    if isinstance(exc, NotFound | InvalidTenant):
        return _error(404, str(exc))
    if isinstance(exc, NameCollision):
        return _error(409, str(exc), collisions=list(exc.collisions))
    if isinstance(exc, NamingError):
        return _error(422, str(exc))
    if isinstance(exc, IllegalTransition | Conflict | AlreadyExists):
        return _error(409, str(exc))
    if isinstance(exc, InvalidValue):
        return _error(422, str(exc))
    if isinstance(exc, SecretsUnavailable):
        return _error(503, str(exc))
    if isinstance(exc, GatewayDBError):
        return _error(400, str(exc))
    log.exception("registry API error")
    return _error(500, "internal error")


Handler = Callable[[Request, RegistryContext], Awaitable[Response]]


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request, context_of(request))
        except ClientDisconnect:
            return Response(status_code=400)
        except Exception as exc:  # noqa: BLE001 - every error becomes a JSON answer
            return error_response(exc)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


def ok(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status)


# --- reading requests ---------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or 413 as soon as it grows past ``limit`` (nothing more is read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body of {declared} bytes is larger than the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body larger than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_object(request: Request, ctx: RegistryContext, *, required: bool = True) -> dict[str, Any]:
    """The body as a JSON object (400 when it is not one; ``{}`` for an empty optional body)."""
    raw = await read_body(request, ctx.max_body_bytes)
    if not raw.strip():
        if required:
            raise ApiError(400, "a JSON object is required as the request body")
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {type(value).__name__}")
    return value


def field_str(body: Mapping[str, Any], key: str, *, required: bool = False, max_len: int = 2000) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise ApiError(400, f"field {key!r} is required")
        return None
    if not isinstance(value, str):
        raise ApiError(400, f"field {key!r} must be a string")
    if len(value) > max_len:
        raise ApiError(422, f"field {key!r} is longer than {max_len} characters")
    if "\x00" in value:
        raise ApiError(422, f"field {key!r} contains a NUL character")
    return value


def field_str_list(body: Mapping[str, Any], key: str, *, max_items: int = 200) -> list[str] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, f"field {key!r} must be a list of strings")
    if len(value) > max_items:
        raise ApiError(422, f"field {key!r} has more than {max_items} entries")
    return list(value)


def field_bool(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"field {key!r} must be true or false")
    return value


def field_object(body: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ApiError(400, f"field {key!r} must be a JSON object")
    return value


def _path_tenant(request: Request) -> str:
    tenant = request.path_params["tenant"]
    try:
        return validate_tenant(tenant)
    except InvalidTenant:
        raise ApiError(404, f"no tenant {tenant[:80]!r}") from None


def _path_uuid(request: Request, key: str, what: str) -> uuid.UUID:
    value = request.path_params[key]
    try:
        return uuid.UUID(value)
    except ValueError:
        raise ApiError(404, f"no {what} {value[:80]!r}") from None


# --- who is calling ------------------------------------------------------------------------------


def _www_authenticate(ctx: RegistryContext, tenant: str | None) -> dict[str, str]:
    if tenant is not None:
        return {"WWW-Authenticate": f'Bearer resource_metadata="{ctx.settings.resource_metadata_url(tenant)}"'}
    return {"WWW-Authenticate": "Bearer"}


async def require_caller(request: Request, ctx: RegistryContext, tenant: str | None = None) -> Caller:
    """The verified caller (401 without a token); with ``tenant``, a user of exactly that tenant (403)."""
    caller = await ctx.caller(request, tenant)
    if caller is None:
        raise ApiError(401, "authorization required: send the gateway's access token as 'Authorization: Bearer "
                            "<token>' (audience: your tenant's MCP endpoint)", _www_authenticate(ctx, tenant))
    if tenant is not None and caller.tenant != tenant:
        raise ApiError(403, f"your token is for tenant {caller.tenant!r}, not {tenant!r}")
    return caller


def require_tenant_admin(caller: Caller, tenant: str) -> None:
    if caller.tenant != tenant:
        raise ApiError(403, f"your token is for tenant {caller.tenant!r}, not {tenant!r}")
    if not caller.tenant_admin:
        raise ApiError(403, f"managing the installations of tenant {tenant!r} needs a tenant admin's token "
                            "(scope tenant:admin)")


def require_platform_admin(caller: Caller, what: str) -> None:
    if not caller.platform_admin:
        raise ApiError(403, f"{caller.email} of tenant {caller.tenant!r} is not a platform admin and cannot {what}")


def owns(caller: Caller, publisher: Publisher) -> bool:
    """The caller owns the publisher: the same e-mail address, in the tenant the publisher was created from."""
    return (publisher.owner.casefold() == caller.email.casefold()
            and publisher.owner_tenant_id in (None, caller.tenant))


async def owned_publisher(ctx: RegistryContext, caller: Caller, publisher_id: uuid.UUID, *,
                          admin_may: bool = False) -> Publisher:
    publisher = await ctx.store.get_publisher(publisher_id)
    if owns(caller, publisher) or (admin_may and caller.platform_admin):
        return publisher
    raise ApiError(403, f"you ({caller.email}) do not own publisher {publisher.display_name!r}")


async def readable_version(ctx: RegistryContext, caller: Caller, version_id: uuid.UUID
                           ) -> tuple[Version, Server, Publisher]:
    """A version the caller may read in full: their own publisher's, or any for a platform admin (else 404)."""
    version = await ctx.store.get_version(version_id)
    server = await ctx.store.get_server(version.server_id)
    publisher = await ctx.store.get_publisher(server.publisher_id)
    if not (caller.platform_admin or owns(caller, publisher)):
        raise ApiError(404, f"no version {version_id}")
    return version, server, publisher


def authorize_decision(caller: Caller, decision: Decision, version: Version, server: Server,
                       publisher: Publisher) -> None:
    """Who may take ``decision`` on ``version`` (the API's and the pages' rule; raises :class:`ApiError`).

    Deprecate: the publisher's owner or a platform admin (anyone else: 404, the version is not theirs to
    see). Everything else: platform admins only (403); the store still refuses a platform admin's decision
    on a version they published, inside the decision's transaction.
    """
    if decision == Decision.deprecate:
        if not (owns(caller, publisher) or caller.platform_admin):
            raise ApiError(404 if not caller.platform_admin else 403, f"no version {version.id}")
    elif not caller.platform_admin:
        if owns(caller, publisher):
            raise ApiError(403, f"{caller.email} published version {version.version!r} of {server.name!r} and "
                                f"cannot {decision.value.replace('_', ' ')} it; a platform admin must")
        raise ApiError(403, f"{caller.email} of tenant {caller.tenant!r} is not a platform admin and cannot "
                            f"{decision.value.replace('_', ' ')} a version")


async def apply_decision(ctx: RegistryContext, caller: Caller, decision: Decision, version_id: uuid.UUID,
                         reason: str) -> Version:
    """Carry out a decision :func:`authorize_decision` allowed (the service records actor, reason, event)."""
    operation = {Decision.approve: ctx.service.approve, Decision.reject: ctx.service.reject,
                 Decision.request_changes: ctx.service.request_changes, Decision.revoke: ctx.service.revoke,
                 Decision.deprecate: ctx.service.deprecate}[decision]
    return await operation(version_id, caller.actor, reason)


# --- shapes -----------------------------------------------------------------------------------------


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def publisher_json(publisher: Publisher, namespaces: Sequence[Namespace] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": str(publisher.id), "display_name": publisher.display_name, "owner": publisher.owner,
                           "owner_tenant": publisher.owner_tenant_id, "created_at": iso(publisher.created_at)}
    if namespaces is not None:
        out["namespaces"] = [namespace_json(n) for n in namespaces]
    return out


def namespace_json(namespace: Namespace) -> dict[str, Any]:
    return {"namespace": namespace.namespace, "proof_method": namespace.proof_method.value,
            "proven_at": iso(namespace.proven_at)}


def failing_findings(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The high and critical findings of a review report (the reasons it failed), most severe first."""
    out: list[dict[str, Any]] = []
    checks = report.get("checks") if isinstance(report, Mapping) else None
    for check in (checks or {}).values():
        for item in (check or {}).get("findings") or ():
            if isinstance(item, Mapping) and item.get("severity") in FAILING:
                out.append({k: item.get(k) for k in ("rule", "check", "severity", "tool", "field", "message")})
    out.sort(key=lambda f: 0 if f["severity"] == "critical" else 1)
    return out


def review_json(run: ReviewRun | None, *, findings: bool = False) -> dict[str, Any] | None:
    if run is None:
        return None
    failing = failing_findings(run.report)
    out: dict[str, Any] = {"run": run.number, "passed": run.passed, "risk": run.risk,
                           "started_at": iso(run.started_at), "finished_at": iso(run.finished_at),
                           "error": run.error, "failing_rules": list(dict.fromkeys(f["rule"] for f in failing))}
    if findings:
        out["findings"] = failing[:MAX_FINDINGS_SHOWN]
    return out


def decision_json(decision: VersionDecision) -> dict[str, Any]:
    return {"decision": decision.decision.value, "approver": decision.approver, "reason": decision.reason,
            "decided_at": iso(decision.decided_at)}


def version_json(version: Version, server: Server, *, run: ReviewRun | None = None, findings: bool = False,
                 decisions: Sequence[VersionDecision] | None = None, document: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": str(version.id), "server": version.server_name, "slug": version.slug, "version": version.version,
        "state": version.state.value, "sha256": version.sha256, "submitted_by": version.submitted_by,
        "publisher_id": str(server.publisher_id), "visibility": server.visibility.value,
        "owner_tenant": server.owner_tenant_id, "first_party": server.first_party,
        "created_at": iso(version.created_at), "updated_at": iso(version.updated_at),
        "approved_at": iso(version.approved_at), "review": review_json(run, findings=findings)}
    if decisions is not None:
        out["decisions"] = [decision_json(d) for d in decisions]
    if document:
        out["server_json"] = version.server_json
    return out


def secret_json(ref: SecretRef) -> dict[str, Any]:
    """A secret without its value (there is no way to read a value back)."""
    return {"name": ref.name, "updated_by": ref.updated_by, "updated_at": iso(ref.updated_at)}


def connector_json(ctx: RegistryContext, tenant: str) -> dict[str, Any]:
    """How clients reach the tenant's servers: the gateway endpoint, and the exact client configuration."""
    url = ctx.settings.resource_uri(tenant)
    args = ["-y", "mcp-remote", url]
    return {
        "url": url,
        "remote_connector": {"url": url, "transport": "streamable-http",
                             "authorization": "OAuth 2.1 through the gateway's authorization server "
                                              f"({ctx.settings.issuer(tenant)})"},
        "claude_desktop": {
            "command_line": " ".join(["npx", *args]),
            "config": {"mcpServers": {f"kontor-{tenant}": {"command": "npx", "args": args}}},
            "note": "Claude Desktop runs this command (Node.js's npx with the mcp-remote package) to bridge "
                    "to the gateway; it opens a browser window for the sign-in.",
        },
    }


def installation_json(installation: Installation, *, pins: Sequence[Any] | None = None) -> dict[str, Any]:
    registry = installation.config.get(CONFIG_KEY)
    out: dict[str, Any] = {
        "server": installation.server,
        "registry_server": registry.get("server") if isinstance(registry, Mapping) else None,
        "version": installation.version, "state": installation.state.value,
        "granted_scopes": list(installation.granted_scopes), "upstream_url": installation.upstream_url,
        "config": {k: v for k, v in installation.config.items() if k not in (CONFIG_KEY, "first_party")},
        "registry": dict(registry) if isinstance(registry, Mapping) else None,
        "first_party": bool(installation.config.get("first_party")),
        "created_at": iso(installation.created_at), "updated_at": iso(installation.updated_at)}
    if pins is not None:
        out["tools"] = [f"{installation.server}{SEPARATOR}{p.tool}" for p in pins if p.state == PinState.approved]
        out["withheld"] = [{"tool": p.tool, "reason": p.reason, "approved": p.definition, "live": p.live_definition}
                           for p in pins if p.state == PinState.withheld]
    return out


def catalog_entry_json(entry: CatalogEntry) -> dict[str, Any]:
    doc = entry.latest.server_json
    inst = entry.installation
    return {
        "server": entry.server.name, "slug": entry.server.slug,
        "title": doc.get("title") if isinstance(doc.get("title"), str) else None,
        "description": doc.get("description") if isinstance(doc.get("description"), str) else None,
        "latest_version": entry.latest.version, "latest_version_id": str(entry.latest.id),
        "approved_versions": list(entry.approved_versions), "visibility": entry.server.visibility.value,
        "first_party": entry.server.first_party, "approved_at": iso(entry.latest.approved_at),
        "secrets": declared_secrets(doc),
        "installation": None if inst is None else {"state": inst.state.value, "version": inst.version,
                                                   "upgrade_available": inst.version != entry.latest.version
                                                   and inst.state != InstallationState.uninstalled},
    }


def event_json(event: Any) -> dict[str, Any]:
    return {"time": iso(event.time), "actor": event.actor, "from_state": event.from_state,
            "to_state": event.to_state, "reason": event.reason, "detail": event.detail}


# --- meta --------------------------------------------------------------------------------------------


async def openapi_document(request: Request, ctx: RegistryContext) -> Response:
    """The OpenAPI 3.1 document of the registry's JSON API and read API."""
    from kontor.registry.openapi import openapi

    return ok(openapi(ctx.settings.origin))


async def me(request: Request, ctx: RegistryContext) -> Response:
    caller = await require_caller(request, ctx)
    return ok(caller.to_dict())


# --- publishers and namespaces ---------------------------------------------------------------------


async def create_publisher(request: Request, ctx: RegistryContext) -> Response:
    caller = await require_caller(request, ctx)
    body = await json_object(request, ctx)
    name = field_str(body, "display_name", required=True, max_len=200)
    assert name is not None
    publisher = await ctx.store.create_publisher(name, caller.email, owner_tenant=caller.tenant, actor=caller.actor)
    return ok(publisher_json(publisher, []), 201)


async def list_publishers(request: Request, ctx: RegistryContext) -> Response:
    caller = await require_caller(request, ctx)
    mine = [p for p in await ctx.store.list_publishers(owner=caller.email) if owns(caller, p)]
    return ok({"publishers": [publisher_json(p, await ctx.store.list_namespaces(p.id)) for p in mine]})


async def get_publisher(request: Request, ctx: RegistryContext) -> Response:
    caller = await require_caller(request, ctx)
    publisher = await owned_publisher(ctx, caller, _path_uuid(request, "publisher_id", "publisher"), admin_may=True)
    return ok(publisher_json(publisher, await ctx.store.list_namespaces(publisher.id)))


async def add_namespace(request: Request, ctx: RegistryContext) -> Response:
    """Prove a namespace: an HTTP or DNS proof is verified now (422 naming why when it fails); ``admin``
    proofs are granted by a platform admin."""
    caller = await require_caller(request, ctx)
    body = await json_object(request, ctx)
    publisher = await owned_publisher(ctx, caller, _path_uuid(request, "publisher_id", "publisher"), admin_may=True)
    namespace = field_str(body, "namespace", required=True, max_len=255)
    method = field_str(body, "method", required=True, max_len=16)
    assert namespace is not None and method is not None
    if method not in {m.value for m in ProofMethod}:
        raise ApiError(422, f"unknown proof method {method!r}: use http, dns or admin")
    wildcard = namespace.endswith(".*")
    if method == ProofMethod.admin.value:
        require_platform_admin(caller, "grant a namespace without a proof")
        reason = normalise_reason(field_str(body, "reason"), required=True)
        stored = await ctx.store.add_namespace(publisher.id, namespace, ProofMethod.admin, actor=caller.actor,
                                               evidence={"granted_by": caller.actor, "reason": reason})
        return ok(namespace_json(stored), 201)
    if wildcard and method != ProofMethod.dns.value:
        raise ApiError(422, f"{namespace!r} covers every sub-namespace; only a DNS proof grants that")
    proof = OwnershipProof(method, field_str(body, "domain", required=True, max_len=253) or "",
                           field_str(body, "challenge", required=True, max_len=1000) or "",
                           field_str(body, "signature", required=True, max_len=1000) or "")
    base = namespace.removesuffix(".*")
    result = await ctx.ownership.check(base, proof)
    if not result.passed:
        findings = [{"rule": f.rule, "severity": f.severity, "message": f.message} for f in result.findings]
        raise ApiError(422, f"the {method} proof does not show control of {base}: "
                            + "; ".join(f["message"] for f in findings if f["severity"] in FAILING),
                       findings=findings)
    stored = await ctx.store.add_namespace(publisher.id, namespace, method, actor=caller.actor,
                                           evidence=json.loads(json.dumps(result.evidence, default=str)))
    return ok(namespace_json(stored), 201)


# --- versions ----------------------------------------------------------------------------------------


async def submit_version(request: Request, ctx: RegistryContext) -> Response:
    """Submit a ``server.json`` (the body, stored byte for byte): 201 with the reviewed version, or 422."""
    caller = await require_caller(request, ctx)
    publisher = await owned_publisher(ctx, caller, _path_uuid(request, "publisher_id", "publisher"))
    visibility = request.query_params.get("visibility", Visibility.public.value)
    if visibility not in (Visibility.public.value, Visibility.private.value):
        raise ApiError(400, f"visibility must be public or private, not {visibility[:40]!r}")
    raw = await read_body(request, ctx.max_submission_bytes)
    if not raw.strip():
        raise InvalidSubmission([Problem("$", "the request body must be the server.json document", "empty",
                                         "json")])
    tenant = caller.tenant if visibility == Visibility.private.value else None
    version = await ctx.service.submit(publisher.id, raw, caller.actor,
                                       visibility=Visibility(visibility), tenant=tenant)
    server = await ctx.store.get_server(version.server_id)
    run = await ctx.store.latest_review_run(version.id)
    return ok(version_json(version, server, run=run, findings=True), 201)


async def _versions_of(ctx: RegistryContext, publishers: Sequence[Publisher], state: str | None
                       ) -> list[dict[str, Any]]:
    out = []
    for publisher in publishers:
        for server in await ctx.store.list_servers(publisher_id=publisher.id):
            for version in await ctx.store.list_versions(server.id):
                if state is None or version.state.value == state:
                    out.append(version_json(version, server, run=await ctx.store.latest_review_run(version.id)))
    return out


def _state_filter(request: Request) -> str | None:
    state = request.query_params.get("state")
    if state is not None and state not in {s.value for s in VersionState}:
        raise ApiError(400, f"unknown state {state[:40]!r}: use one of {', '.join(s.value for s in VersionState)}")
    return state


async def list_publisher_versions(request: Request, ctx: RegistryContext) -> Response:
    caller = await require_caller(request, ctx)
    publisher = await owned_publisher(ctx, caller, _path_uuid(request, "publisher_id", "publisher"), admin_may=True)
    return ok({"versions": await _versions_of(ctx, [publisher], _state_filter(request))})


async def list_my_versions(request: Request, ctx: RegistryContext) -> Response:
    caller = await require_caller(request, ctx)
    state = _state_filter(request)
    mine = [p for p in await ctx.store.list_publishers(owner=caller.email) if owns(caller, p)]
    return ok({"versions": await _versions_of(ctx, mine, state)})


async def get_version(request: Request, ctx: RegistryContext) -> Response:
    caller = await require_caller(request, ctx)
    version, server, _ = await readable_version(ctx, caller, _path_uuid(request, "version_id", "version"))
    run = await ctx.store.latest_review_run(version.id)
    body = version_json(version, server, run=run, findings=True,
                        decisions=await ctx.store.list_decisions(version.id), document=True)
    body["events"] = [event_json(e) for e in await ctx.store.list_events(subject_type="version",
                                                                        subject_id=version.id, limit=100)]
    return ok(body)


async def get_report(request: Request, ctx: RegistryContext) -> Response:
    """The evidence report of the latest finished review run (or ``?run=N``), as JSON."""
    caller = await require_caller(request, ctx)
    version, server, _ = await readable_version(ctx, caller, _path_uuid(request, "version_id", "version"))
    runs = [r for r in await ctx.store.list_review_runs(version.id) if r.finished_at is not None]
    wanted = request.query_params.get("run")
    if wanted is not None:
        if not wanted.isdigit() or len(wanted) > 9:
            raise ApiError(400, "run must be a positive number")
        runs = [r for r in runs if r.number == int(wanted)]
    if not runs:
        raise ApiError(404, f"version {version.version} of {server.name} has no finished review run"
                       + (f" number {wanted}" if wanted else ""))
    run = runs[-1]
    snapshot = [{"name": t.tool_name, "hash": t.definition_hash, "definition": t.definition}
                for t in await ctx.store.snapshot(run.id)]
    return ok({"version_id": str(version.id), "server": server.name, "version": version.version,
               "review": review_json(run, findings=True), "report": run.report, "tools": snapshot,
               "instructions": run.instructions})


async def get_diff(request: Request, ctx: RegistryContext) -> Response:
    """The tool definitions of this version's latest review against the latest approved other version."""
    caller = await require_caller(request, ctx)
    version, server, _ = await readable_version(ctx, caller, _path_uuid(request, "version_id", "version"))
    run = await ctx.store.latest_review_run(version.id)
    after = [t.definition for t in await ctx.store.snapshot(run.id)] if run is not None else []
    approved = [v for v in await ctx.store.list_versions(server.id, states=[VersionState.approved,
                                                                            VersionState.deprecated])
                if v.id != version.id]
    base = latest_version(approved) if approved else None
    before = [t.definition for t in await ctx.store.approved_snapshot(base.id)] if base is not None else []
    changes, unchanged = tool_diff(before, after)
    return ok({"server": server.name, "version": version.version,
               "against": None if base is None else {"id": str(base.id), "version": base.version},
               "added": [c.to_dict() for c in changes if c.change == "added"],
               "removed": [c.to_dict() for c in changes if c.change == "removed"],
               "changed": [c.to_dict() for c in changes if c.change == "changed"], "unchanged": unchanged,
               "scopes": {"before": needed_scopes(server.slug, before), "after": needed_scopes(server.slug, after)}})


async def rerun_review(request: Request, ctx: RegistryContext) -> Response:
    caller = await require_caller(request, ctx)
    version, server, publisher = await readable_version(ctx, caller, _path_uuid(request, "version_id", "version"))
    version = await ctx.service.rerun_review(version.id, caller.actor)
    run = await ctx.store.latest_review_run(version.id)
    return ok(version_json(version, server, run=run, findings=True))


async def decide(request: Request, ctx: RegistryContext) -> Response:
    """A decision with its reason: approve / reject / request_changes / revoke (platform admins), deprecate
    (the publisher or a platform admin). Nobody decides on a version they published (403)."""
    caller = await require_caller(request, ctx)
    body = await json_object(request, ctx)
    version_id = _path_uuid(request, "version_id", "version")
    decision_text = field_str(body, "decision", required=True, max_len=32)
    try:
        decision = Decision(decision_text)
    except ValueError:
        raise ApiError(422, f"unknown decision {decision_text!r}: use one of "
                            f"{', '.join(d.value for d in Decision)}") from None
    reason = field_str(body, "reason")
    if reason is None or not reason.strip():
        raise ApiError(422, "a reason is required (field 'reason': what the publisher and the tenants will read)")
    version = await ctx.store.get_version(version_id)
    server = await ctx.store.get_server(version.server_id)
    publisher = await ctx.store.get_publisher(server.publisher_id)
    authorize_decision(caller, decision, version, server, publisher)
    decided = await apply_decision(ctx, caller, decision, version.id, reason)
    run = await ctx.store.latest_review_run(decided.id)
    return ok(version_json(decided, server, run=run, decisions=await ctx.store.list_decisions(decided.id)))


async def review_queue(request: Request, ctx: RegistryContext) -> Response:
    caller = await require_caller(request, ctx)
    require_platform_admin(caller, "see the review queue")
    out = []
    for version in await ctx.store.review_queue():
        server = await ctx.store.get_server(version.server_id)
        entry = version_json(version, server, run=await ctx.store.latest_review_run(version.id))
        publisher = await ctx.store.get_publisher(server.publisher_id)
        entry["publisher"] = publisher_json(publisher)
        entry["own"] = owns(caller, publisher) or version.submitted_by.casefold() == caller.email.casefold()
        out.append(entry)
    return ok({"versions": out})


# --- catalog and installations -------------------------------------------------------------------------


async def catalog(request: Request, ctx: RegistryContext) -> Response:
    tenant = _path_tenant(request)
    await require_caller(request, ctx, tenant)
    return ok({"tenant": tenant, "servers": [catalog_entry_json(e) for e in await ctx.service.catalog(tenant)]})


async def connector(request: Request, ctx: RegistryContext) -> Response:
    tenant = _path_tenant(request)
    await require_caller(request, ctx, tenant)
    return ok(connector_json(ctx, tenant))


async def require_installation_admin(ctx: RegistryContext, caller: Caller, tenant: str) -> None:
    """The caller manages ``tenant``'s installations: ``tenant:admin`` for that tenant and an enabled admin user."""
    require_tenant_admin(caller, tenant)
    if not await ctx.store.is_tenant_admin(tenant, caller.actor):
        raise ApiError(403, f"{caller.email} is not an enabled admin of tenant {tenant!r}")


async def _admin(request: Request, ctx: RegistryContext) -> tuple[str, Caller]:
    tenant = _path_tenant(request)
    caller = await require_caller(request, ctx, tenant)
    await require_installation_admin(ctx, caller, tenant)
    return tenant, caller


def _server_param(request: Request) -> str:
    server = request.path_params["server"]
    if not server or len(server) > 255 or "\x00" in server:
        raise ApiError(404, f"no server {server[:80]!r}")
    return server


async def _installation_detail(ctx: RegistryContext, tenant: str, slug: str) -> dict[str, Any]:
    current = await ctx.store.get_installation(tenant, slug)
    if current is None:
        raise ApiError(404, f"{slug} is not installed for tenant {tenant!r}")
    body = installation_json(current, pins=await ctx.store.gateway.list_pins(tenant, slug))
    body["events"] = [event_json(e) for e in await ctx.store.list_events(subject_type="installation",
                                                                        subject_id=current.id, limit=50)]
    body["connector"] = connector_json(ctx, tenant)
    return body


async def list_installations(request: Request, ctx: RegistryContext) -> Response:
    tenant, _ = await _admin(request, ctx)
    return ok({"tenant": tenant, "installations": [installation_json(i)
                                                   for i in await ctx.store.list_installations(tenant)]})


async def install(request: Request, ctx: RegistryContext) -> Response:
    tenant, caller = await _admin(request, ctx)
    body = await json_object(request, ctx)
    server = field_str(body, "server", required=True, max_len=255)
    assert server is not None
    installed = await ctx.service.install(tenant, server, caller.actor, version=field_str(body, "version", max_len=255),
                                          scopes=field_str_list(body, "scopes"), config=field_object(body, "config"),
                                          enable=field_bool(body, "enable", True))
    return ok(await _installation_detail(ctx, tenant, installed.server), 201)


async def _slug(ctx: RegistryContext, tenant: str, server: str) -> str:
    """The gateway name of a registry server the tenant may see, or of an installation made outside the registry."""
    try:
        return (await ctx.store.visible_server(tenant, server)).slug
    except NotFound:
        if "/" not in server and await ctx.store.get_installation(tenant, server) is not None:
            return server
        raise


async def get_installation(request: Request, ctx: RegistryContext) -> Response:
    tenant, _ = await _admin(request, ctx)
    return ok(await _installation_detail(ctx, tenant, await _slug(ctx, tenant, _server_param(request))))


async def uninstall(request: Request, ctx: RegistryContext) -> Response:
    tenant, caller = await _admin(request, ctx)
    body = await json_object(request, ctx, required=False)
    done = await ctx.service.uninstall(tenant, _server_param(request), caller.actor, field_str(body, "reason"))
    return ok(installation_json(done))


async def preview_upgrade(request: Request, ctx: RegistryContext) -> Response:
    tenant, _ = await _admin(request, ctx)
    to = request.query_params.get("to")
    diff = await ctx.service.preview_upgrade(tenant, _server_param(request), to)
    return ok({**diff.to_dict(), "fingerprint": diff.fingerprint})


async def upgrade(request: Request, ctx: RegistryContext) -> Response:
    tenant, caller = await _admin(request, ctx)
    body = await json_object(request, ctx, required=False)
    result = await ctx.service.upgrade(tenant, _server_param(request), field_str(body, "to_version", max_len=255),
                                       caller.actor, scopes=field_str_list(body, "scopes"),
                                       expected=field_str(body, "expected", max_len=128))
    detail = await _installation_detail(ctx, tenant, result.installation.server)
    return ok({**detail, "diff": {**result.diff.to_dict(), "fingerprint": result.diff.fingerprint}})


async def enable(request: Request, ctx: RegistryContext) -> Response:
    tenant, caller = await _admin(request, ctx)
    body = await json_object(request, ctx, required=False)
    done = await ctx.service.enable(tenant, _server_param(request), caller.actor, field_str(body, "reason"))
    return ok(await _installation_detail(ctx, tenant, done.server))


async def disable(request: Request, ctx: RegistryContext) -> Response:
    tenant, caller = await _admin(request, ctx)
    body = await json_object(request, ctx, required=False)
    done = await ctx.service.disable(tenant, _server_param(request), caller.actor, field_str(body, "reason"))
    return ok(await _installation_detail(ctx, tenant, done.server))


async def grant_scopes(request: Request, ctx: RegistryContext) -> Response:
    """Set the scopes granted to an installation: a subset of what its version's approved tools need."""
    tenant, caller = await _admin(request, ctx)
    body = await json_object(request, ctx)
    scopes = field_str_list(body, "scopes")
    if scopes is None:
        raise ApiError(400, "field 'scopes' (a list of scope names) is required")
    slug = await grant_installation_scopes(ctx, caller, tenant, _server_param(request), scopes)
    return ok(await _installation_detail(ctx, tenant, slug))


async def grant_installation_scopes(ctx: RegistryContext, caller: Caller, tenant: str, server_name: str,
                                    scopes: Sequence[str]) -> str:
    """Set an installation's granted scopes to a subset of what its version's approved tools need (422 for more).

    The caller must already be an installation admin of ``tenant`` (:func:`require_installation_admin`).
    Returns the installation's gateway name.
    """
    server = await ctx.store.visible_server(tenant, server_name)
    current = await ctx.store.get_installation(tenant, server.slug)
    if current is None or current.state == InstallationState.uninstalled or current.version is None:
        raise ApiError(404, f"{server.name} is not installed for tenant {tenant!r}")
    version = await ctx.store.find_version(server.name, current.version)
    if version is None:
        raise ApiError(409, f"the installed version {current.version!r} of {server.name} is not in the registry")
    tools = [t.definition for t in await ctx.store.approved_snapshot(version.id)]
    needed = needed_scopes(server.slug, tools)
    extra = sorted(set(scopes) - set(needed))
    if extra:
        raise ApiError(422, f"scopes {', '.join(extra)} are not needed by version {version.version} of "
                            f"{server.name} (its tools need {', '.join(needed) or 'none'})")
    await ctx.store.write_installation(
        tenant, server, version, actor=caller.actor, reason=f"granted scopes {' '.join(sorted(set(scopes))) or '-'}",
        path=[], upstream_url=current.upstream_url, granted_scopes=sorted(set(scopes)), config=current.config,
        tools=tools, allowed_from={InstallationState.requested, *SERVED_STATES, InstallationState.disabled},
        expect_version=current.version, detail={"scopes": sorted(set(scopes))})
    return server.slug


async def list_secrets(request: Request, ctx: RegistryContext) -> Response:
    tenant, caller = await _admin(request, ctx)
    server = await ctx.store.visible_server(tenant, _server_param(request))
    refs = await ctx.service.list_secrets(tenant, server.slug, caller.actor)
    declared: set[str] = set()
    for version in await ctx.store.list_versions(server.id, states=[VersionState.approved,
                                                                    VersionState.deprecated]):
        declared.update(declared_secrets(version.server_json))
    return ok({"server": server.name, "declared": sorted(declared), "secrets": [secret_json(r) for r in refs]})


def _secret_name(request: Request) -> str:
    return unquote(request.path_params["name"])


async def set_secret(request: Request, ctx: RegistryContext) -> Response:
    """Store a secret (write-only: the answer, and every later read, carries its name and time, never its value)."""
    tenant, caller = await _admin(request, ctx)
    body = await json_object(request, ctx)
    value = field_str(body, "value", required=True, max_len=16384)
    assert value is not None
    ref = await ctx.service.set_secret(tenant, _server_param(request), _secret_name(request), value, caller.actor)
    return ok(secret_json(ref))


async def delete_secret(request: Request, ctx: RegistryContext) -> Response:
    tenant, caller = await _admin(request, ctx)
    server = await ctx.store.visible_server(tenant, _server_param(request))
    name = _secret_name(request)
    if not await ctx.store.delete_secret(tenant, server.id, name, actor=caller.actor):
        raise ApiError(404, f"no secret {name[:80]!r} is set for {server.name}")
    return Response(status_code=204)


def api_routes() -> list[Route]:
    """The routes of the JSON API (relative to the ``/registry`` mount)."""
    e = _endpoint
    inst = "/api/tenants/{tenant}/installations/{server}"
    return [
        Route("/openapi.json", e(openapi_document), methods=["GET"], name="registry_openapi"),
        Route("/api/me", e(me), methods=["GET"], name="registry_me"),
        Route("/api/publishers", e(list_publishers), methods=["GET"], name="registry_publishers"),
        Route("/api/publishers", e(create_publisher), methods=["POST"], name="registry_create_publisher"),
        Route("/api/publishers/{publisher_id}", e(get_publisher), methods=["GET"], name="registry_publisher"),
        Route("/api/publishers/{publisher_id}/namespaces", e(add_namespace), methods=["POST"],
              name="registry_add_namespace"),
        Route("/api/publishers/{publisher_id}/versions", e(list_publisher_versions), methods=["GET"],
              name="registry_publisher_versions"),
        Route("/api/publishers/{publisher_id}/versions", e(submit_version), methods=["POST"], name="registry_submit"),
        Route("/api/versions", e(list_my_versions), methods=["GET"], name="registry_versions"),
        Route("/api/versions/{version_id}", e(get_version), methods=["GET"], name="registry_version"),
        Route("/api/versions/{version_id}/report", e(get_report), methods=["GET"], name="registry_report"),
        Route("/api/versions/{version_id}/diff", e(get_diff), methods=["GET"], name="registry_diff"),
        Route("/api/versions/{version_id}/review", e(rerun_review), methods=["POST"], name="registry_rerun"),
        Route("/api/versions/{version_id}/decisions", e(decide), methods=["POST"], name="registry_decide"),
        Route("/api/review-queue", e(review_queue), methods=["GET"], name="registry_review_queue"),
        Route("/api/tenants/{tenant}/catalog", e(catalog), methods=["GET"], name="registry_catalog"),
        Route("/api/tenants/{tenant}/connector", e(connector), methods=["GET"], name="registry_connector"),
        Route("/api/tenants/{tenant}/installations", e(list_installations), methods=["GET"],
              name="registry_installations"),
        Route("/api/tenants/{tenant}/installations", e(install), methods=["POST"], name="registry_install"),
        Route(inst, e(get_installation), methods=["GET"], name="registry_installation"),
        Route(inst, e(uninstall), methods=["DELETE"], name="registry_uninstall"),
        Route(inst + "/upgrade", e(preview_upgrade), methods=["GET"], name="registry_preview_upgrade"),
        Route(inst + "/upgrade", e(upgrade), methods=["POST"], name="registry_upgrade"),
        Route(inst + "/enable", e(enable), methods=["POST"], name="registry_enable"),
        Route(inst + "/disable", e(disable), methods=["POST"], name="registry_disable"),
        Route(inst + "/scopes", e(grant_scopes), methods=["PUT"], name="registry_scopes"),
        Route(inst + "/secrets", e(list_secrets), methods=["GET"], name="registry_secrets"),
        Route(inst + "/secrets/{name}", e(set_secret), methods=["PUT"], name="registry_set_secret"),
        Route(inst + "/secrets/{name}", e(delete_secret), methods=["DELETE"], name="registry_delete_secret"),
    ]


# --- the official read API ---------------------------------------------------------------------------

#: What the official read API shows of each version state (others are not listed).
OFFICIAL_STATUS = {VersionState.approved: "active", VersionState.deprecated: "deprecated",
                   VersionState.revoked: "deleted"}


def official_entry(version: Version, server: Server, *, is_latest: bool, run: ReviewRun | None) -> dict[str, Any]:
    """A ``ServerResponse`` of the official registry: the ``server.json`` as submitted, and ``_meta``."""
    status = OFFICIAL_STATUS[version.state]
    official: dict[str, Any] = {"status": status, "publishedAt": iso(version.approved_at or version.created_at),
                                "updatedAt": iso(version.updated_at), "isLatest": is_latest}
    if status != "active":
        official["statusChangedAt"] = iso(version.updated_at)
    return {"server": version.server_json, "_meta": {
        OFFICIAL_META: official,
        KONTOR_META: {"status": version.state.value, "risk": run.risk if run is not None else None,
                      "approvedAt": iso(version.approved_at), "versionId": str(version.id),
                      "visibility": server.visibility.value, "firstParty": server.first_party,
                      "gatewayName": server.slug}}}


async def _read_caller_tenant(request: Request, ctx: RegistryContext) -> str | None:
    """The tenant whose private entries the reader may see: None for an anonymous reader."""
    caller = await ctx.caller(request)
    return caller.tenant if caller is not None else None


def _visible(server: Server, tenant: str | None) -> bool:
    return server.visibility == Visibility.public or (tenant is not None and server.owner_tenant_id == tenant)


async def _listed(ctx: RegistryContext, tenant: str | None, *, include_deleted: bool,
                  server_name: str | None = None) -> list[tuple[Version, Server, bool]]:
    """(version, server, is_latest) of every listed version the reader may see, by server name then version."""
    states = [VersionState.approved, VersionState.deprecated]
    if include_deleted:
        states.append(VersionState.revoked)
    servers = {s.id: s for s in await ctx.store.list_servers() if _visible(s, tenant)}
    if server_name is not None:
        servers = {k: s for k, s in servers.items() if s.name.lower() == server_name.lower()}
    grouped: dict[uuid.UUID, list[Version]] = {}
    for version in await ctx.store.list_versions(states=states):
        if version.server_id in servers:
            grouped.setdefault(version.server_id, []).append(version)
    out: list[tuple[Version, Server, bool]] = []
    for server_id, versions in grouped.items():
        approved = [v for v in versions if v.state == VersionState.approved]
        latest = latest_version(approved) if approved else latest_version(versions)
        for version in versions:
            out.append((version, servers[server_id], version.id == latest.id))
    out.sort(key=lambda item: _sort_key(item[0]))
    return out


def _sort_key(version: Version) -> tuple[str, str, str]:
    return (version.server_name.lower(), iso(version.created_at) or "", str(version.id))


def _encode_cursor(key: tuple[str, str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str, str]:
    try:
        if len(cursor) > 2048:
            raise ValueError("too long")
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value)):
            raise ValueError("not a cursor")
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ApiError(400, "invalid cursor: use the exact metadata.nextCursor of the previous page") from None
    return value[0], value[1], value[2]


def _flag(request: Request, key: str) -> bool:
    value = request.query_params.get(key)
    if value is None:
        return False
    if value.lower() not in ("true", "false", "1", "0"):
        raise ApiError(400, f"{key} must be true or false")
    return value.lower() in ("true", "1")


async def list_servers(request: Request, ctx: RegistryContext) -> Response:
    """``GET /v0.1/servers``: approved public entries (plus the reader's tenant's private ones), paginated."""
    params = request.query_params
    limit_text = params.get("limit")
    limit = DEFAULT_LIMIT
    if limit_text is not None:
        if not limit_text.isdigit() or not 1 <= int(limit_text[:6]) <= MAX_LIMIT:
            raise ApiError(400, f"limit must be a number from 1 to {MAX_LIMIT}")
        limit = int(limit_text)
    since: datetime | None = None
    if params.get("updated_since") is not None:
        text = params["updated_since"]
        try:
            since = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ApiError(400, "invalid updated_since: expected an RFC 3339 timestamp such as "
                                "2025-08-07T13:15:04.280Z") from None
        if since.tzinfo is None:
            raise ApiError(400, "invalid updated_since: the timestamp needs a time zone (Z or +hh:mm)")
    search = params.get("search")
    version_filter = params.get("version")
    include_deleted = _flag(request, "include_deleted") or since is not None
    after = _decode_cursor(params["cursor"]) if params.get("cursor") else None
    tenant = await _read_caller_tenant(request, ctx)
    entries = await _listed(ctx, tenant, include_deleted=include_deleted)
    selected = []
    for version, server, is_latest in entries:
        if search and search.lower() not in server.name.lower():
            continue
        if version_filter == "latest" and not is_latest:
            continue
        if version_filter not in (None, "latest") and version.version != version_filter:
            continue
        if since is not None and version.updated_at < since:
            continue
        if after is not None and _sort_key(version) <= after:
            continue
        selected.append((version, server, is_latest))
    page = selected[:limit]
    body: dict[str, Any] = {"servers": [official_entry(v, s, is_latest=latest,
                                                       run=await ctx.store.latest_review_run(v.id))
                                        for v, s, latest in page], "metadata": {"count": len(page)}}
    if len(selected) > limit:
        body["metadata"]["nextCursor"] = _encode_cursor(_sort_key(page[-1][0]))
    return ok(body)


def _server_path(request: Request) -> tuple[str, str | None]:
    """``(server name, version or None)`` from ``/servers/<name>/versions[/<version>]``, the name URL-encoded
    (``com.example%2Fweather``) or not."""
    raw = request.scope.get("raw_path")
    root = request.scope.get("root_path", "")
    if isinstance(raw, bytes | bytearray):
        path = raw.decode("latin-1").split("?", 1)[0]
        prefix = (root + "/servers/").encode("utf-8").decode("latin-1")
        rest = path[len(prefix):] if path.startswith(prefix) else path.split("/servers/", 1)[-1]
        try:
            segments = [unquote(s, errors="strict") for s in rest.split("/")]
        except UnicodeDecodeError:
            raise ApiError(404, "Server not found") from None
    else:
        segments = request.path_params["rest"].split("/")
    if len(segments) >= 3 and segments[1] == "versions" and "/" in segments[0]:
        name, tail = segments[0], segments[2:]
    elif len(segments) >= 3 and segments[2] == "versions":
        name, tail = f"{segments[0]}/{segments[1]}", segments[3:]
    elif len(segments) >= 2 and segments[1] == "versions":
        name, tail = segments[0], segments[2:]
    else:
        raise ApiError(404, "not found: use /v0.1/servers/{serverName}/versions[/{version}]")
    if len(tail) > 1:
        raise ApiError(404, "not found: use /v0.1/servers/{serverName}/versions[/{version}]")
    version = tail[0] if tail else None
    if version == "":
        version = None
    return name, version


async def server_versions(request: Request, ctx: RegistryContext) -> Response:
    """``GET /v0.1/servers/{serverName}/versions`` and ``…/versions/{version|latest}``."""
    name, wanted = _server_path(request)
    tenant = await _read_caller_tenant(request, ctx)
    include_deleted = _flag(request, "include_deleted")
    entries = await _listed(ctx, tenant, include_deleted=include_deleted, server_name=name)
    if not entries:
        raise ApiError(404, "Server not found")
    if wanted is None:
        entries.sort(key=lambda e: iso(e[0].approved_at or e[0].created_at) or "", reverse=True)
        return ok({"servers": [official_entry(v, s, is_latest=latest, run=await ctx.store.latest_review_run(v.id))
                               for v, s, latest in entries], "metadata": {"count": len(entries)}})
    for version, server, is_latest in entries:
        if (wanted == "latest" and is_latest) or version.version == wanted:
            return ok(official_entry(version, server, is_latest=is_latest,
                                     run=await ctx.store.latest_review_run(version.id)))
    raise ApiError(404, "Server version not found")


def read_api_routes() -> list[Route]:
    """The routes of the official read API (relative to the ``/v0.1`` mount)."""
    return [Route("/servers", _endpoint(list_servers), methods=["GET"], name="registry_v01_servers"),
            Route("/servers/{rest:path}", _endpoint(server_versions), methods=["GET"],
                  name="registry_v01_server_versions")]
