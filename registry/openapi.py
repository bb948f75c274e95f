"""The OpenAPI 3.1 document of the registry (``GET /registry/openapi.json``), written by hand.

It describes every route of :mod:`kontor.registry.api` — the JSON API under ``/registry/api`` and
the official registry's read API under ``/v0.1`` — with the shapes the handlers answer, including
every error status a route can give. The fuzz test (``tests/registry/test_registry_fuzz.py``)
generates requests from it and checks the answers against it, so a handler and its description
cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["openapi"]

STR = {"type": "string"}
NSTR = {"type": ["string", "null"]}
BOOL = {"type": "boolean"}
INT = {"type": "integer"}
OBJ = {"type": "object"}
NOBJ = {"type": ["object", "null"]}
STR_LIST = {"type": "array", "items": STR}
TIME = {"type": ["string", "null"], "format": "date-time"}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": "the request cannot be read (not JSON, a field of the wrong type, a bad parameter)",
    "401": "no token, or a token the gateway refuses",
    "403": "the caller may not do this",
    "404": "not found, or not visible to the caller",
    "409": "the current state does not allow it (illegal transition, concurrent change, name taken)",
    "413": "the request body is larger than the limit",
    "422": "the body was read but is not acceptable",
}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: {"$ref": f"#/components/responses/E{code}"} for code in codes}


def _op(summary: str, ok_code: str, ok_schema: dict[str, Any] | None, errors: tuple[str, ...], *,
        auth: str = "required", body: dict[str, Any] | None = None, params: list[dict[str, Any]] | None = None,
        description: str | None = None, body_required: bool = True, tag: str = "registry") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": {}}
    if description:
        op["description"] = description
    if ok_schema is None:
        op["responses"][ok_code] = {"description": "done"}
    else:
        op["responses"][ok_code] = _json(ok_schema, "success")
    op["responses"].update(_errors(*errors))
    if auth == "required":
        op["security"] = [{"bearerAuth": []}]
    elif auth == "optional":
        op["security"] = [{}, {"bearerAuth": []}]
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": body_required, "content": {"application/json": {"schema": body}}}
    return op


def _path_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


UUID = {"type": "string", "format": "uuid"}
TENANT = _path_param("tenant", {"type": "string", "pattern": "^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"},
                     "tenant id")
SERVER = _path_param("server", {"type": "string", "minLength": 1, "maxLength": 255},
                     "the server's gateway name (slug), e.g. weather")
PUBLISHER = _path_param("publisher_id", UUID, "publisher id")
VERSION = _path_param("version_id", UUID, "version id")
SECRET = _path_param("name", {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,128}$"}, "secret name")
STATE = _query("state", {"type": "string", "enum": ["submitted", "checking", "checks_failed", "in_review",
                                                    "changes_requested", "rejected", "approved", "deprecated",
                                                    "revoked"]}, "only versions in this state")
REASON_BODY = {"type": "object", "properties": {"reason": {"type": "string", "maxLength": 2000}}}
AUTH_ERRORS = ("400", "401", "403", "404")


def _schemas() -> dict[str, Any]:
    finding = _obj(["rule", "severity", "message"], {
        "rule": STR, "check": NSTR, "severity": STR, "tool": NSTR, "field": NSTR, "message": STR})
    review = {"type": ["object", "null"], "required": ["run", "passed", "risk", "failing_rules"], "properties": {
        "run": INT, "passed": {"type": ["boolean", "null"]}, "risk": NSTR, "started_at": TIME, "finished_at": TIME,
        "error": NSTR, "failing_rules": STR_LIST, "findings": {"type": "array", "items": _ref("Finding")}}}
    version = _obj(["id", "server", "slug", "version", "state", "sha256", "visibility", "review"], {
        "id": UUID, "server": STR, "slug": STR, "version": STR,
        "state": {"type": "string", "enum": ["submitted", "checking", "checks_failed", "in_review",
                                             "changes_requested", "rejected", "approved", "deprecated", "revoked"]},
        "sha256": STR, "submitted_by": STR, "publisher_id": UUID,
        "visibility": {"type": "string", "enum": ["public", "private"]}, "owner_tenant": NSTR, "first_party": BOOL,
        "created_at": TIME, "updated_at": TIME, "approved_at": TIME, "review": _ref("Review"),
        "decisions": {"type": "array", "items": _ref("Decision")}, "server_json": OBJ,
        "events": {"type": "array", "items": _ref("Event")},
        "publisher": _ref("Publisher"), "own": BOOL})
    installation = _obj(["server", "version", "state", "granted_scopes", "upstream_url"], {
        "server": STR, "registry_server": NSTR, "version": NSTR,
        "state": {"type": "string", "enum": ["requested", "enabled", "disabled", "uninstalled", "needs_reapproval"]},
        "granted_scopes": STR_LIST, "upstream_url": STR, "config": OBJ, "registry": NOBJ, "first_party": BOOL,
        "created_at": TIME, "updated_at": TIME, "tools": STR_LIST,
        "withheld": {"type": "array", "items": _obj(["tool"], {
            "tool": STR, "reason": NSTR, "approved": NOBJ, "live": NOBJ})},
        "events": {"type": "array", "items": _ref("Event")}, "connector": _ref("Connector"),
        "diff": _ref("UpgradeDiff")})
    tool_change = _obj(["name", "change"], {"name": STR, "change": STR, "fields": STR_LIST, "before": NOBJ,
                                            "after": NOBJ})
    server_detail = {
        "type": "object", "required": ["name", "description", "version"],
        "description": "the server.json exactly as the publisher submitted it (the official server.json schema)",
        "properties": {"name": STR, "description": STR, "version": STR, "title": STR, "$schema": STR,
                       "websiteUrl": STR, "repository": OBJ, "packages": {"type": "array"},
                       "remotes": {"type": "array"}, "icons": {"type": "array"}, "_meta": OBJ}}
    official = _obj(["status", "publishedAt", "isLatest"], {
        "status": {"type": "string", "enum": ["active", "deprecated", "deleted"]},
        "statusMessage": STR, "statusChangedAt": {"type": "string", "format": "date-time"},
        "publishedAt": {"type": "string", "format": "date-time"},
        "updatedAt": {"type": "string", "format": "date-time"}, "isLatest": BOOL})
    official["additionalProperties"] = False
    kontor = _obj(["status", "risk", "approvedAt"], {
        "status": STR, "risk": NSTR, "approvedAt": TIME, "versionId": UUID,
        "visibility": {"type": "string", "enum": ["public", "private"]}, "firstParty": BOOL, "gatewayName": STR})
    return {
        "Error": _obj(["error"], {"error": STR}),
        "Problem": _obj(["path", "message", "rule"], {"path": STR, "message": STR, "rule": STR, "stage": STR}),
        "Finding": finding,
        "Review": review,
        "Decision": _obj(["decision", "approver", "reason"], {"decision": STR, "approver": STR, "reason": STR,
                                                               "decided_at": TIME}),
        "Event": _obj(["time"], {"time": TIME, "actor": NSTR, "from_state": NSTR, "to_state": NSTR,
                                 "reason": NSTR, "detail": OBJ}),
        "Caller": _obj(["tenant", "email", "scopes", "tenant_admin", "platform_admin"], {
            "tenant": STR, "email": STR, "subject": STR, "roles": STR_LIST, "scopes": STR_LIST,
            "tenant_admin": BOOL, "platform_admin": BOOL}),
        "Namespace": _obj(["namespace", "proof_method"], {"namespace": STR, "proof_method": STR, "proven_at": TIME}),
        "Publisher": _obj(["id", "display_name", "owner"], {
            "id": UUID, "display_name": STR, "owner": STR, "owner_tenant": NSTR, "created_at": TIME,
            "namespaces": {"type": "array", "items": _ref("Namespace")}}),
        "PublisherList": _obj(["publishers"], {"publishers": {"type": "array", "items": _ref("Publisher")}}),
        "Version": version,
        "VersionList": _obj(["versions"], {"versions": {"type": "array", "items": _ref("Version")}}),
        "Report": _obj(["version_id", "server", "version", "report", "tools"], {
            "version_id": UUID, "server": STR, "version": STR, "review": _ref("Review"), "report": OBJ,
            "tools": {"type": "array", "items": _obj(["name", "hash", "definition"], {
                "name": STR, "hash": STR, "definition": OBJ})}, "instructions": NSTR}),
        "ToolChange": tool_change,
        "Diff": _obj(["server", "version", "added", "removed", "changed", "unchanged"], {
            "server": STR, "version": STR,
            "against": {"type": ["object", "null"], "properties": {"id": UUID, "version": STR}},
            "added": {"type": "array", "items": _ref("ToolChange")},
            "removed": {"type": "array", "items": _ref("ToolChange")},
            "changed": {"type": "array", "items": _ref("ToolChange")}, "unchanged": STR_LIST,
            "scopes": _obj(["before", "after"], {"before": STR_LIST, "after": STR_LIST})}),
        "CatalogEntry": _obj(["server", "slug", "latest_version", "approved_versions", "visibility"], {
            "server": STR, "slug": STR, "title": NSTR, "description": NSTR, "latest_version": STR,
            "latest_version_id": UUID, "approved_versions": STR_LIST,
            "visibility": {"type": "string", "enum": ["public", "private"]}, "first_party": BOOL,
            "approved_at": TIME, "secrets": STR_LIST,
            "installation": {"type": ["object", "null"], "properties": {
                "state": STR, "version": NSTR, "upgrade_available": BOOL}}}),
        "Catalog": _obj(["tenant", "servers"], {"tenant": STR,
                                                "servers": {"type": "array", "items": _ref("CatalogEntry")}}),
        "Connector": _obj(["url", "remote_connector", "claude_desktop"], {
            "url": STR, "remote_connector": _obj(["url"], {"url": STR, "transport": STR, "authorization": STR}),
            "claude_desktop": _obj(["command_line", "config"], {"command_line": STR, "config": OBJ, "note": STR})}),
        "Installation": installation,
        "InstallationList": _obj(["tenant", "installations"], {
            "tenant": STR, "installations": {"type": "array", "items": _ref("Installation")}}),
        "UpgradeDiff": _obj(["server", "to_version", "tools", "scopes", "fingerprint"], {
            "server": STR, "slug": STR, "from_version": NSTR, "to_version": STR,
            "tools": _obj(["added", "removed", "changed", "unchanged"], {
                "added": {"type": "array", "items": _ref("ToolChange")},
                "removed": {"type": "array", "items": _ref("ToolChange")},
                "changed": {"type": "array", "items": _ref("ToolChange")}, "unchanged": STR_LIST}),
            "scopes": OBJ, "secrets": OBJ, "fingerprint": STR}),
        "Secret": _obj(["name"], {"name": STR, "updated_by": NSTR, "updated_at": TIME}),
        "SecretList": _obj(["server", "declared", "secrets"], {
            "server": STR, "declared": STR_LIST, "secrets": {"type": "array", "items": _ref("Secret")}}),
        "ServerDetail": server_detail,
        "ServerResponse": _obj(["server", "_meta"], {
            "server": _ref("ServerDetail"),
            "_meta": _obj(["io.modelcontextprotocol.registry/official"], {
                "io.modelcontextprotocol.registry/official": official, "io.kontor/review": kontor})}),
        "ServerList": _obj(["servers", "metadata"], {
            "servers": {"type": "array", "items": _ref("ServerResponse")},
            "metadata": _obj(["count"], {"nextCursor": STR, "count": INT})}),
    }


def _paths() -> dict[str, Any]:
    inst = "/registry/api/tenants/{tenant}/installations/{server}"
    version_body = _ref("Version")
    submit_body = {"type": "object", "description": "the server.json document (official schema); stored verbatim"}
    return {
        "/registry/openapi.json": {"get": _op("This document", "200", OBJ, (), auth="none")},
        "/registry/api/me": {"get": _op("Who the token belongs to, and the caller's registry roles", "200",
                                        _ref("Caller"), ("400", "401"))},
        "/registry/api/publishers": {
            "get": _op("My publishers (with their proven namespaces)", "200", _ref("PublisherList"), ("400", "401")),
            "post": _op("Create a publisher owned by the caller", "201", _ref("Publisher"),
                        ("400", "401", "413", "422"),
                        body=_obj(["display_name"], {"display_name": {"type": "string", "maxLength": 200}}))},
        "/registry/api/publishers/{publisher_id}": {"get": _op(
            "A publisher I own (platform admins: any)", "200", _ref("Publisher"), AUTH_ERRORS, params=[PUBLISHER])},
        "/registry/api/publishers/{publisher_id}/namespaces": {"post": _op(
            "Prove a namespace (HTTP or DNS proof, verified now; admin: granted by a platform admin)", "201",
            _ref("Namespace"), (*AUTH_ERRORS, "409", "413", "422"), params=[PUBLISHER],
            body=_obj(["namespace", "method"], {
                "namespace": {"type": "string", "maxLength": 255, "examples": ["com.example", "com.example.*"]},
                "method": {"type": "string", "enum": ["http", "dns", "admin"]},
                "domain": STR, "challenge": {"type": "string", "description": "RFC 3339 timestamp that was signed"},
                "signature": {"type": "string", "description": "hex signature of the challenge"},
                "reason": {"type": "string", "description": "required for admin grants"}}))},
        "/registry/api/publishers/{publisher_id}/versions": {
            "get": _op("The publisher's versions", "200", _ref("VersionList"), AUTH_ERRORS,
                       params=[PUBLISHER, STATE]),
            "post": _op("Submit a server.json: validated (422 lists every problem with its JSON path), stored "
                        "verbatim and reviewed; 201 with the version in checks_failed or in_review", "201",
                        version_body, (*AUTH_ERRORS, "409", "413", "422"), body=submit_body,
                        params=[PUBLISHER, _query("visibility", {"type": "string", "enum": ["public", "private"]},
                                                  "private: only the submitter's tenant sees and installs it")])},
        "/registry/api/versions": {"get": _op("Versions of my publishers", "200", _ref("VersionList"),
                                              ("400", "401"), params=[STATE])},
        "/registry/api/versions/{version_id}": {"get": _op(
            "A version with its server.json, review, decisions and events", "200", version_body, AUTH_ERRORS,
            params=[VERSION])},
        "/registry/api/versions/{version_id}/report": {"get": _op(
            "The evidence report of a review run, with the snapshot of tool definitions", "200", _ref("Report"),
            AUTH_ERRORS, params=[VERSION, _query("run", {"type": "integer", "minimum": 1}, "review run number")])},
        "/registry/api/versions/{version_id}/diff": {"get": _op(
            "Tool definitions of this version against the latest other approved version", "200", _ref("Diff"),
            AUTH_ERRORS, params=[VERSION])},
        "/registry/api/versions/{version_id}/review": {"post": _op(
            "Run the automated review again", "200", version_body, (*AUTH_ERRORS, "409"), params=[VERSION])},
        "/registry/api/versions/{version_id}/decisions": {"post": _op(
            "Decide on a version with a reason (approve, reject, request_changes, revoke: platform admins; "
            "deprecate: the publisher too); never on one's own version", "200", version_body,
            (*AUTH_ERRORS, "409", "413", "422"), params=[VERSION],
            body=_obj(["decision", "reason"], {
                "decision": {"type": "string", "enum": ["approve", "reject", "request_changes", "revoke",
                                                        "deprecate"]},
                "reason": {"type": "string", "minLength": 1, "maxLength": 2000}}))},
        "/registry/api/review-queue": {"get": _op("Versions waiting for a platform admin", "200",
                                                  _ref("VersionList"), ("400", "401", "403"))},
        "/registry/api/tenants/{tenant}/catalog": {"get": _op(
            "What the tenant may install: approved public servers and its own private ones", "200",
            _ref("Catalog"), AUTH_ERRORS, params=[TENANT])},
        "/registry/api/tenants/{tenant}/connector": {"get": _op(
            "The connector URL and client configuration snippets (the exact command is shown)", "200",
            _ref("Connector"), AUTH_ERRORS, params=[TENANT])},
        "/registry/api/tenants/{tenant}/installations": {
            "get": _op("The tenant's installations (tenant admins)", "200", _ref("InstallationList"), AUTH_ERRORS,
                       params=[TENANT]),
            "post": _op("Install a server at its latest (or the given) approved version", "201",
                        _ref("Installation"), (*AUTH_ERRORS, "409", "413", "422"), params=[TENANT],
                        body=_obj(["server"], {
                            "server": {"type": "string", "description": "server.json name or gateway name"},
                            "version": STR, "scopes": STR_LIST, "config": OBJ, "enable": BOOL}))},
        inst: {
            "get": _op("An installation: state, granted scopes, served and withheld tools, events, connector",
                       "200", _ref("Installation"), AUTH_ERRORS, params=[TENANT, SERVER]),
            "delete": _op("Uninstall (the tenant's secrets for the server are deleted with it)", "200",
                          _ref("Installation"), (*AUTH_ERRORS, "409", "413", "422"), params=[TENANT, SERVER],
                          body=REASON_BODY, body_required=False)},
        inst + "/upgrade": {
            "get": _op("What an upgrade would change (tools, scopes, secrets) and its fingerprint", "200",
                       _ref("UpgradeDiff"), (*AUTH_ERRORS, "409"),
                       params=[TENANT, SERVER, _query("to", STR, "target version (default: latest approved)")]),
            "post": _op("Upgrade to an approved version (pass the fingerprint you looked at as 'expected')", "200",
                        _ref("Installation"), (*AUTH_ERRORS, "409", "413", "422"), params=[TENANT, SERVER],
                        body={"type": "object", "properties": {"to_version": STR, "scopes": STR_LIST,
                                                               "expected": STR}}, body_required=False)},
        inst + "/enable": {"post": _op("Enable (re-pinning the approved snapshot)", "200", _ref("Installation"),
                                       (*AUTH_ERRORS, "409", "413", "422"), params=[TENANT, SERVER],
                                       body=REASON_BODY, body_required=False)},
        inst + "/disable": {"post": _op("Disable", "200", _ref("Installation"), (*AUTH_ERRORS, "409", "413", "422"),
                                        params=[TENANT, SERVER], body=REASON_BODY, body_required=False)},
        inst + "/scopes": {"put": _op("Set the granted scopes (a subset of what the approved tools need)", "200",
                                      _ref("Installation"), (*AUTH_ERRORS, "409", "413", "422"),
                                      params=[TENANT, SERVER], body=_obj(["scopes"], {"scopes": STR_LIST}))},
        inst + "/secrets": {"get": _op("The secrets the server declares and which are set (never their values)",
                                       "200", _ref("SecretList"), AUTH_ERRORS, params=[TENANT, SERVER])},
        inst + "/secrets/{name}": {
            "put": _op("Set a secret (write-only)", "200", _ref("Secret"), (*AUTH_ERRORS, "409", "413", "422"),
                       params=[TENANT, SERVER, SECRET],
                       body=_obj(["value"], {"value": {"type": "string", "minLength": 1, "maxLength": 16384}})),
            "delete": _op("Delete a secret", "204", None, AUTH_ERRORS, params=[TENANT, SERVER, SECRET])},
        "/v0.1/servers": {"get": _op(
            "List servers (official registry read API): approved public entries, plus the private ones of the "
            "token's tenant", "200", _ref("ServerList"), ("400", "401"), auth="optional", tag="servers",
            params=[_query("cursor", STR, "the metadata.nextCursor of the previous page"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 100, "default": 30},
                           "entries per page"),
                    _query("search", STR, "substring of the server name"),
                    _query("updated_since", {"type": "string", "format": "date-time"}, "RFC 3339 timestamp"),
                    _query("version", STR, "'latest' or an exact version"),
                    _query("include_deleted", BOOL, "also revoked versions (status deleted)")])},
        "/v0.1/servers/{serverName}/versions": {"get": _op(
            "All listed versions of a server, newest first", "200", _ref("ServerList"), ("400", "401", "404"),
            auth="optional", tag="servers",
            params=[_path_param("serverName", STR, "URL-encoded server name, e.g. com.example%2Fweather"),
                    _query("include_deleted", BOOL, "also revoked versions")])},
        "/v0.1/servers/{serverName}/versions/{version}": {"get": _op(
            "One version of a server ('latest' for the latest)", "200", _ref("ServerResponse"),
            ("400", "401", "404"), auth="optional", tag="servers",
            params=[_path_param("serverName", STR, "URL-encoded server name, e.g. com.example%2Fweather"),
                    _path_param("version", STR, "URL-encoded version, or latest"),
                    _query("include_deleted", BOOL, "also revoked versions")])},
    }


def openapi(origin: str | None = None) -> dict[str, Any]:
    """The document; ``origin`` (the gateway's public origin) becomes its server URL."""
    responses = {f"E{code}": _json({"$ref": "#/components/schemas/Error"}, text) for code, text in ERRORS.items()}
    responses["E422"] = _json({"allOf": [_ref("Error"), {"type": "object", "properties": {
        "problems": {"type": "array", "items": _ref("Problem")},
        "findings": {"type": "array", "items": OBJ}, "collisions": STR_LIST}}]}, ERRORS["422"])
    responses["E409"] = _json({"allOf": [_ref("Error"), {"type": "object", "properties": {
        "collisions": STR_LIST}}]}, ERRORS["409"])
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "Kontor registry", "version": "1",
                 "description": "Publish MCP servers, review and approve them, install them per tenant; and the "
                                "official MCP registry's read API (v0.1). Authenticate with the gateway's access "
                                "token (audience: your tenant's MCP endpoint)."},
        "paths": _paths(),
        "components": {
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "an access token of the gateway's authorization server; its audience is the "
                               "tenant's MCP endpoint <origin>/t/<tenant>/mcp (a token of a tenant's external "
                               "issuer without a tenant claim names its tenant in the X-Kontor-Tenant header)"}},
            "schemas": _schemas(),
            "responses": responses,
        },
    }
    if origin:
        doc["servers"] = [{"url": origin}]
    return doc
