"""The registry's operations: submit and review versions, decide on them, install them for tenants.

:class:`RegistryService` is what the JSON API, the pages and the CLI call. It holds the rules
(who may do what, which version is installable, which scopes and secrets an installation needs)
and leaves storage and the state machines to :class:`~kontor.registry.store.RegistryStore` and
:mod:`kontor.registry.lifecycle`.

The automated review is injected: ``review(server_json, publisher_namespaces)`` is an async
callable returning a dict (or an object) with ``passed``, ``risk``, ``report`` and ``snapshot``
(``{"tools": [...], "instructions": ...}`` or None) — :mod:`kontor.registry.review` in
production, a small function in tests.

Authorization the service enforces itself:

* only a publisher's owner (or a platform admin) submits for that publisher;
* a publisher never approves, rejects or requests changes on their own version (the store
  checks it inside the decision's transaction);
* with ``platform_admins`` configured, only they approve, reject, request changes and revoke,
  and only they or the publisher deprecate (without it, the caller — the API behind the
  gateway's login — decides who is a platform admin);
* only an enabled admin user of a tenant installs, upgrades, enables, disables, uninstalls
  and enters secrets for that tenant; a tenant sees (and installs) approved public servers and
  its own private ones only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from kontor.gateway.db import Installation, InstallationState, InvalidValue, NotFound, contains_nul
from kontor.gateway.pinning import canonical_json
from kontor.registry.checks.annotations import required_scopes
from kontor.registry.endpoints import expand_url_template
from kontor.registry.lifecycle import Decision, ProofMethod, VersionState, Visibility
from kontor.registry.server_json import MAX_DOCUMENT_BYTES, Problem, format_path, validate_server_json
from kontor.registry.store import (
    CONFIG_KEY,
    CatalogEntry,
    Conflict,
    PermissionDenied,
    RegistryError,
    RegistryStore,
    ReviewRecord,
    SecretRef,
    Server,
    Version,
    changed_fields,
    normalise_actor,
    normalise_reason,
    pinned_definitions,
)

__all__ = [
    "FIRST_PARTY_NAMESPACE",
    "FIRST_PARTY_OWNER",
    "InvalidSubmission",
    "RegistryService",
    "ReviewFn",
    "ToolChange",
    "Transport",
    "UpgradeDiff",
    "UpgradeResult",
    "declared_secrets",
    "first_party_documents",
    "first_party_review",
    "list_first_party_tools",
    "needed_scopes",
    "seed_first_party",
    "tool_diff",
]

log = logging.getLogger(__name__)

#: ``review(server_json, publisher_namespaces) -> {"passed", "risk", "report", "snapshot"}``
ReviewFn = Callable[[dict[str, Any], list[str]], Awaitable[Any]]

FIRST_PARTY_NAMESPACE = "io.kontor"
FIRST_PARTY_OWNER = "first-party@kontor.invalid"  # the publisher account of Kontor's own servers (nobody signs in)
SEED_ACTOR = "kontor-seed"
MAX_CONFIG_BYTES = 16 * 1024


class InvalidSubmission(RegistryError, ValueError):
    """A ``server.json`` that cannot be accepted; ``problems`` lists every problem with its JSON path."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        lines = "; ".join(str(p) for p in self.problems[:20])
        more = f" (and {len(self.problems) - 20} more)" if len(self.problems) > 20 else ""
        super().__init__(f"server.json refused with {len(self.problems)} problem(s): {lines}{more}")

    def to_dict(self) -> dict[str, Any]:
        return {"ok": False, "problems": [p.to_dict() for p in self.problems]}


@dataclass(frozen=True)
class ToolChange:
    """One tool that differs between two versions: ``added``, ``removed`` or ``changed`` (with the fields)."""

    name: str
    change: str
    before: dict[str, Any] | None = field(repr=False)
    after: dict[str, Any] | None = field(repr=False)
    fields: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "change": self.change, "fields": list(self.fields), "before": self.before,
                "after": self.after}


@dataclass(frozen=True)
class UpgradeDiff:
    """What an upgrade changes: tools (with their definitions), scopes and secrets. ``fingerprint`` identifies it."""

    server: str
    slug: str
    from_version: str | None
    to_version: str
    tools: tuple[ToolChange, ...]
    unchanged: tuple[str, ...]
    scopes_granted: tuple[str, ...]
    scopes_before: tuple[str, ...]
    scopes_after: tuple[str, ...]
    secrets_before: tuple[str, ...]
    secrets_after: tuple[str, ...]

    @property
    def added(self) -> list[ToolChange]:
        return [t for t in self.tools if t.change == "added"]

    @property
    def removed(self) -> list[ToolChange]:
        return [t for t in self.tools if t.change == "removed"]

    @property
    def changed(self) -> list[ToolChange]:
        return [t for t in self.tools if t.change == "changed"]

    @property
    def scopes_added(self) -> list[str]:
        return sorted(set(self.scopes_after) - set(self.scopes_before))

    @property
    def scopes_removed(self) -> list[str]:
        return sorted(set(self.scopes_before) - set(self.scopes_after))

    def to_dict(self) -> dict[str, Any]:
        return {
            "server": self.server, "slug": self.slug, "from_version": self.from_version,
            "to_version": self.to_version,
            "tools": {"added": [t.to_dict() for t in self.added], "removed": [t.to_dict() for t in self.removed],
                      "changed": [t.to_dict() for t in self.changed], "unchanged": list(self.unchanged)},
            "scopes": {"granted": list(self.scopes_granted), "before": list(self.scopes_before),
                       "after": list(self.scopes_after), "added": self.scopes_added,
                       "removed": self.scopes_removed},
            "secrets": {"before": list(self.secrets_before), "after": list(self.secrets_after)},
        }

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the canonical :meth:`to_dict`; :meth:`RegistryService.upgrade` takes it as ``expected``."""
        return hashlib.sha256(canonical_json(self.to_dict())).hexdigest()


@dataclass(frozen=True)
class UpgradeResult:
    installation: Installation
    diff: UpgradeDiff


@dataclass(frozen=True)
class Transport:
    """How the gateway reaches an installed version: the URL, where it came from, the secrets it uses."""

    url: str
    source: str  # "$.remotes[0]" or "local"
    secrets: tuple[str, ...]
    required_secrets: tuple[str, ...]


def needed_scopes(slug: str, tools: Sequence[Mapping[str, Any]]) -> list[str]:
    """The scopes the tools need (``<slug>:read`` for read-only tools, ``<slug>:write`` for the others)."""
    return sorted(set(required_scopes(slug, tools).values()))


def tool_diff(before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]],
              ) -> tuple[list[ToolChange], list[str]]:
    """Added, removed and changed tools (comparing the pinned fields), and the names that did not change."""
    old, new = pinned_definitions(before), pinned_definitions(after)
    changes: list[ToolChange] = []
    unchanged: list[str] = []
    for name in sorted(set(old) | set(new)):
        if name not in old:
            changes.append(ToolChange(name, "added", None, new[name]))
        elif name not in new:
            changes.append(ToolChange(name, "removed", old[name], None))
        else:
            fields = changed_fields(old[name], new[name])
            if fields:
                changes.append(ToolChange(name, "changed", old[name], new[name], tuple(fields)))
            else:
                unchanged.append(name)
    return changes, unchanged


def _secret_inputs(inputs: Any, name_key: str = "name") -> list[tuple[str, bool]]:
    out = []
    for item in inputs or ():
        if not isinstance(item, Mapping) or item.get("isSecret") is not True:
            continue
        name = item.get(name_key) or item.get("valueHint")
        if isinstance(name, str) and name:
            required = item.get("isRequired") is True and not item.get("value") and not item.get("default")
            out.append((name, required))
    return out


def declared_secrets(document: Mapping[str, Any]) -> list[str]:
    """Every secret input a ``server.json`` declares: secret headers of its remotes, secret environment
    variables and arguments of its packages."""
    names: list[tuple[str, bool]] = []
    for remote in document.get("remotes") or ():
        if isinstance(remote, Mapping):
            names += _secret_inputs(remote.get("headers"))
    for package in document.get("packages") or ():
        if isinstance(package, Mapping):
            for key in ("environmentVariables", "runtimeArguments", "packageArguments"):
                names += _secret_inputs(package.get(key))
    return sorted({n for n, _ in names})


def _kontor_problems(document: Mapping[str, Any]) -> list[Problem]:
    """Limits of Kontor's own storage on top of the schema: no NUL anywhere, a version that fits an installation."""
    problems: list[Problem] = []
    version = document.get("version")
    if isinstance(version, str) and len(version) > 64:
        problems.append(Problem("$.version", f"the version has {len(version)} characters; Kontor installs versions "
                                "of at most 64", "version-too-long", "semantic"))

    def walk(node: Any, path: tuple[str | int, ...]) -> None:
        if isinstance(node, str):
            if "\x00" in node:
                problems.append(Problem(format_path(path), "contains a NUL character (U+0000)", "nul-character",
                                        "json"))
        elif isinstance(node, Mapping):
            for key, value in node.items():
                if "\x00" in key:
                    problems.append(Problem(format_path(path), "a key contains a NUL character (U+0000)",
                                            "nul-character", "json"))
                walk(value, (*path, key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, (*path, i))

    walk(document, ())
    return problems


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2048:
        raise InvalidValue(f"invalid upstream URL {url!r}: use http:// or https:// with a host")
    if parts.username is not None or parts.password is not None:
        raise InvalidValue("an upstream URL must not contain credentials; store them as secrets")
    return url


def _user_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise InvalidValue("config must be a JSON object")
    config = dict(config)
    if CONFIG_KEY in config:
        raise InvalidValue(f"config key {CONFIG_KEY!r} is reserved for the registry")
    if contains_nul(config):
        raise InvalidValue("config must not contain NUL characters")
    try:
        size = len(json.dumps(config, ensure_ascii=False, allow_nan=False).encode())
    except (TypeError, ValueError) as exc:
        raise InvalidValue(f"config must be JSON: {exc}") from None
    if size > MAX_CONFIG_BYTES:
        raise InvalidValue(f"config has {size} bytes, more than {MAX_CONFIG_BYTES}")
    return config


class RegistryService:
    """The registry's operations over a :class:`RegistryStore` (see the module docstring for who may do what).

    ``local_urls``: server name or gateway name → the URL the gateway uses for a server that runs
    from a package (first-party servers, packages run beside the gateway); a server with a
    Streamable HTTP remote uses the remote's URL. Default: the first-party loopback URLs of
    :func:`kontor.gateway.bootstrap.first_party_urls`.
    """

    def __init__(self, store: RegistryStore, review: ReviewFn, *, local_urls: Mapping[str, str] | None = None,
                 platform_admins: Collection[str] | None = None) -> None:
        self.store = store
        self.review = review
        if local_urls is None:
            from kontor.gateway.bootstrap import first_party_urls

            local_urls = first_party_urls()
        self.local_urls = dict(local_urls)
        self.platform_admins = (None if platform_admins is None
                                else frozenset(normalise_actor(a).casefold() for a in platform_admins))

    # --- who may do what

    def _is_platform_admin(self, actor: str) -> bool:
        return self.platform_admins is not None and actor.casefold() in self.platform_admins

    async def _tenant_admin(self, tenant: str, actor: str) -> str:
        actor = normalise_actor(actor)
        if not await self.store.is_tenant_admin(tenant, actor):
            raise PermissionDenied(f"{actor} is not an admin of tenant {tenant!r}; only tenant admins manage "
                                   "installations")
        return actor

    # --- publishing and review

    async def submit(self, publisher_id: uuid.UUID | str, server_json: bytes | str, actor: str, *,
                     visibility: Visibility | str | None = None, tenant: str | None = None) -> Version:
        """Validate, store verbatim, review; returns the version (``checks_failed`` or ``in_review``).

        An invalid document raises :class:`InvalidSubmission` listing every problem with its JSON
        path, and nothing is stored. ``tenant`` makes the server private to that tenant.
        """
        actor = normalise_actor(actor)
        publisher = await self.store.get_publisher(publisher_id)
        if publisher.owner.casefold() != actor.casefold() and not self._is_platform_admin(actor):
            raise PermissionDenied(f"{actor} does not own publisher {publisher.display_name!r}")
        namespaces = [n.namespace for n in await self.store.list_namespaces(publisher.id)]
        raw = server_json.encode("utf-8") if isinstance(server_json, str) else bytes(server_json)
        result = validate_server_json(raw, namespaces=namespaces, max_bytes=MAX_DOCUMENT_BYTES)
        problems = list(result.problems)
        if result.document is not None:
            problems.extend(_kontor_problems(result.document))
        if problems or result.document is None:
            raise InvalidSubmission(problems)
        version = await self.store.create_version(publisher.id, result.document, raw.decode("utf-8"), actor=actor,
                                                  visibility=visibility, owner_tenant=tenant)
        return await self._run_review(version, actor, namespaces, "automated review on submission")

    async def rerun_review(self, version_id: uuid.UUID | str, actor: str) -> Version:
        """Run the automated review again (from checks_failed, in_review, changes_requested, or a stuck checking)."""
        actor = normalise_actor(actor)
        version = await self.store.get_version(version_id)
        server = await self.store.get_server(version.server_id)
        namespaces = [n.namespace for n in await self.store.list_namespaces(server.publisher_id)]
        return await self._run_review(version, actor, namespaces, "automated review run again")

    async def _run_review(self, version: Version, actor: str, namespaces: list[str], reason: str) -> Version:
        version, run = await self.store.start_review(version.id, actor=actor, reason=reason)
        try:
            record = ReviewRecord.from_outcome(await self.review(dict(version.server_json), list(namespaces)))
        except Exception as exc:  # a broken check must not leave the version without a verdict
            log.exception("review of %s %s failed", version.server_name, version.version)
            message = f"{type(exc).__name__}: {exc}"[:2000]
            record = ReviewRecord(False, "high", {"error": message}, error=message)
        version, _ = await self.store.finish_review(run.id, record, actor=actor)
        return version

    # --- decisions

    async def _decide(self, version_id: uuid.UUID | str, decision: Decision, actor: str, reason: str) -> Version:
        actor = normalise_actor(actor)
        reason = normalise_reason(reason)  # type: ignore[assignment]
        if self.platform_admins is not None and not self._is_platform_admin(actor):
            allowed = False
            if decision == Decision.deprecate:
                version = await self.store.get_version(version_id)
                owner_id = (await self.store.get_server(version.server_id)).publisher_id
                publisher = await self.store.get_publisher(owner_id)
                allowed = publisher.owner.casefold() == actor.casefold()
            if not allowed:
                raise PermissionDenied(f"{actor} is not a platform admin and cannot {decision.value.replace('_', ' ')}"
                                       " a version")
        return await self.store.decide(version_id, decision, actor=actor, reason=reason)

    async def approve(self, version_id: uuid.UUID | str, actor: str, reason: str) -> Version:
        return await self._decide(version_id, Decision.approve, actor, reason)

    async def reject(self, version_id: uuid.UUID | str, actor: str, reason: str) -> Version:
        return await self._decide(version_id, Decision.reject, actor, reason)

    async def request_changes(self, version_id: uuid.UUID | str, actor: str, reason: str) -> Version:
        return await self._decide(version_id, Decision.request_changes, actor, reason)

    async def revoke(self, version_id: uuid.UUID | str, actor: str, reason: str) -> Version:
        """Revoke an approved (or deprecated) version; installations at it are disabled in the same transaction."""
        return await self._decide(version_id, Decision.revoke, actor, reason)

    async def deprecate(self, version_id: uuid.UUID | str, actor: str, reason: str) -> Version:
        return await self._decide(version_id, Decision.deprecate, actor, reason)

    # --- catalog

    async def catalog(self, tenant: str | None) -> list[CatalogEntry]:
        """Approved public servers, plus ``tenant``'s own private ones (None: anonymous, public only)."""
        return await self.store.catalog(tenant)

    async def _installable(self, server: Server, version: str | None) -> Version:
        if version is None:
            latest = await self.store.latest_approved(server.id)
            if latest is None:
                raise NotFound(f"server {server.name!r} has no approved version")
            return latest
        found = await self.store.find_version(server.name, version)
        if found is None:
            raise NotFound(f"server {server.name!r} has no version {version!r}")
        if found.state != VersionState.approved:
            raise Conflict(f"version {version!r} of {server.name!r} is {found.state.value}; only approved versions "
                           "can be installed")
        return found

    def transport(self, server: Server, version: Version, config: Mapping[str, Any] | None = None) -> Transport:
        """The URL the gateway uses for ``version`` and the secrets it needs (see the class docstring)."""
        doc = version.server_json
        variables = (config or {}).get("variables") or {}
        if not isinstance(variables, Mapping):
            raise InvalidValue("config 'variables' must map URL variable names to values")
        for index, remote in enumerate(doc.get("remotes") or ()):
            if not isinstance(remote, Mapping) or remote.get("type") != "streamable-http":
                continue
            spec = {k: dict(v) if isinstance(v, Mapping) else {} for k, v in (remote.get("variables") or {}).items()}
            for name, value in variables.items():
                if name in spec and isinstance(value, str) and value:
                    spec[name] = {**spec[name], "default": value}
            url, missing = expand_url_template(str(remote.get("url", "")), spec)
            if missing:
                raise InvalidValue(f"give a value for the URL variables {', '.join(missing)} in config 'variables'")
            secrets = _secret_inputs(remote.get("headers"))
            return Transport(_check_url(url), f"$.remotes[{index}]", tuple(n for n, _ in secrets),
                             tuple(n for n, r in secrets if r))
        local = self.local_urls.get(server.name) or self.local_urls.get(server.slug)
        if local is None:
            raise InvalidValue(f"server {server.name!r} has no Streamable HTTP remote; it runs from a package, so "
                               f"configure its local URL (local_urls[{server.slug!r}])")
        secrets: list[tuple[str, bool]] = []
        packages = doc.get("packages") or []
        package = packages[0] if isinstance(packages, list) and packages else None
        if isinstance(package, Mapping):
            secrets += _secret_inputs(package.get("environmentVariables"))
            secrets += _secret_inputs(package.get("runtimeArguments"))
            secrets += _secret_inputs(package.get("packageArguments"))
        return Transport(_check_url(local), "local", tuple(n for n, _ in secrets), tuple(n for n, r in secrets if r))

    async def _missing_secrets(self, tenant: str, server: Server, transport: Transport) -> list[str]:
        have = {s.name for s in await self.store.list_secrets(tenant, server.id)}
        return [n for n in transport.required_secrets if n not in have]

    def _granted(self, needed: Sequence[str], scopes: Collection[str] | None) -> list[str]:
        if scopes is None:
            return sorted(needed)
        if isinstance(scopes, str):
            raise InvalidValue("scopes must be a list of scope names")
        extra = sorted(set(scopes) - set(needed))
        if extra:
            raise InvalidValue(f"scopes {', '.join(extra)} are not needed by this version's tools (they need "
                               f"{', '.join(needed) or 'none'})")
        return sorted(set(scopes))

    def _config(self, server: Server, version: Version, user: Mapping[str, Any], transport: Transport
                ) -> dict[str, Any]:
        config = dict(user)
        if server.first_party:
            config["first_party"] = True
        config[CONFIG_KEY] = {"server": server.name, "server_id": str(server.id), "version_id": str(version.id),
                              "version": version.version, "transport": transport.source,
                              "secrets": list(transport.secrets)}
        return config

    # --- installations

    async def install(self, tenant: str, server: str, actor: str, *, version: str | None = None,
                      scopes: Collection[str] | None = None, config: Mapping[str, Any] | None = None,
                      enable: bool = True) -> Installation:
        """Install ``server`` (its latest approved version unless ``version``) for ``tenant``; tenant admins only.

        The gateway's installation gets the version's URL, the granted scopes (default: all the
        version's tools need; a subset may be given) and the config, and the approved snapshot's tool
        definitions are pinned. The installation is ``enabled`` — or ``requested`` when required
        secrets are missing or ``enable`` is false. An installation at another version is never
        replaced: use :meth:`upgrade`.
        """
        actor = await self._tenant_admin(tenant, actor)
        return await self._install(tenant, server, actor, version=version, scopes=scopes, config=config,
                                   enable=enable)

    async def _install(self, tenant: str, name: str, actor: str, *, version: str | None,
                       scopes: Collection[str] | None, config: Mapping[str, Any] | None,
                       enable: bool) -> Installation:
        server = await self.store.visible_server(tenant, name)
        target = await self._installable(server, version)
        current = await self.store.get_installation(tenant, server.slug)
        if current is not None and current.state != InstallationState.uninstalled:
            if current.version == target.version:
                raise Conflict(f"{server.name} {target.version} is already installed for tenant {tenant!r} "
                               f"({current.state.value})")
            raise Conflict(f"{server.name} is installed at version {current.version} for tenant {tenant!r}; "
                           f"upgrade to {target.version} to see and accept the difference")
        user = _user_config(config)
        tools = [t.definition for t in await self.store.approved_snapshot(target.id)]
        granted = self._granted(needed_scopes(server.slug, tools), scopes)
        transport = self.transport(server, target, user)
        missing = await self._missing_secrets(tenant, server, transport)
        path = [InstallationState.requested]
        if enable and not missing:
            path.append(InstallationState.enabled)
        reason = "installed" if len(path) == 2 else (
            f"installed; waiting for the secrets {', '.join(missing)}" if missing else "installed, not enabled yet")
        return await self.store.write_installation(
            tenant, server, target, actor=actor, reason=reason, path=path, upstream_url=transport.url,
            granted_scopes=granted, config=self._config(server, target, user, transport), tools=tools,
            allowed_from={None, InstallationState.uninstalled},
            detail={"scopes": granted, "missing_secrets": missing})

    async def _installed(self, tenant: str, name: str) -> tuple[Server, Installation]:
        server = await self.store.visible_server(tenant, name)
        current = await self.store.get_installation(tenant, server.slug)
        if current is None or current.state == InstallationState.uninstalled:
            raise NotFound(f"{server.name} is not installed for tenant {tenant!r}")
        return server, current

    async def _tools_of(self, server: Server, installation: Installation) -> tuple[Version | None, list[dict]]:
        if installation.version is None:
            return None, []
        version = await self.store.find_version(server.name, installation.version)
        if version is None:
            return None, []
        try:
            return version, [t.definition for t in await self.store.approved_snapshot(version.id)]
        except NotFound:
            return version, []

    async def preview_upgrade(self, tenant: str, server: str, to_version: str | None = None) -> UpgradeDiff:
        """What upgrading to ``to_version`` (default: the latest approved) would change: tools, scopes, secrets."""
        srv, current = await self._installed(tenant, server)
        target = await self._installable(srv, to_version)
        before_version, before = await self._tools_of(srv, current)
        after = [t.definition for t in await self.store.approved_snapshot(target.id)]
        changes, unchanged = tool_diff(before, after)
        user = {k: v for k, v in current.config.items() if k not in (CONFIG_KEY, "first_party")}
        secrets_before: tuple[str, ...] = ()
        if before_version is not None:
            try:
                secrets_before = self.transport(srv, before_version, user).secrets
            except InvalidValue:
                pass
        return UpgradeDiff(srv.name, srv.slug, current.version, target.version, tuple(changes), tuple(unchanged),
                           tuple(current.granted_scopes), tuple(needed_scopes(srv.slug, before)),
                           tuple(needed_scopes(srv.slug, after)), secrets_before,
                           self.transport(srv, target, user).secrets)

    async def upgrade(self, tenant: str, server: str, to_version: str | None, actor: str, *,
                      scopes: Collection[str] | None = None, expected: str | None = None) -> UpgradeResult:
        """Move an installation to another approved version, re-pinning that version's approved snapshot.

        ``expected``: the :attr:`UpgradeDiff.fingerprint` the admin looked at; if the difference
        is no longer the same, :class:`Conflict` is raised instead of applying something unseen.
        Granted scopes become ``scopes`` (default: what the new version's tools need). An
        installation waiting for re-approval becomes ``enabled``; other states are kept.
        """
        actor = await self._tenant_admin(tenant, actor)
        srv, current = await self._installed(tenant, server)
        diff = await self.preview_upgrade(tenant, server, to_version)
        if diff.from_version == diff.to_version:
            raise Conflict(f"{srv.name} is already at version {diff.to_version} for tenant {tenant!r}")
        if expected is not None and expected != diff.fingerprint:
            raise Conflict("the difference of this upgrade changed since it was shown; look at it again")
        target = await self._installable(srv, diff.to_version)
        tools = [t.definition for t in await self.store.approved_snapshot(target.id)]
        granted = self._granted(diff.scopes_after, scopes)
        user = {k: v for k, v in current.config.items() if k not in (CONFIG_KEY, "first_party")}
        transport = self.transport(srv, target, user)
        missing = await self._missing_secrets(tenant, srv, transport)
        served = current.state in (InstallationState.enabled, InstallationState.needs_reapproval)
        if missing and served:
            raise Conflict(f"version {target.version} needs the secrets {', '.join(missing)}; set them first")
        path = [InstallationState.enabled] if current.state == InstallationState.needs_reapproval else []
        installation = await self.store.write_installation(
            tenant, srv, target, actor=actor, reason=f"upgraded from {current.version} to {target.version}",
            path=path, upstream_url=transport.url, granted_scopes=granted,
            config=self._config(srv, target, user, transport), tools=tools,
            allowed_from={InstallationState.requested, InstallationState.enabled, InstallationState.disabled,
                          InstallationState.needs_reapproval},
            expect_version=current.version,
            detail={"from_version": current.version, "to_version": target.version, "diff": diff.fingerprint,
                    "added": [t.name for t in diff.added], "removed": [t.name for t in diff.removed],
                    "changed": [t.name for t in diff.changed], "scopes": granted})
        return UpgradeResult(installation, diff)

    async def enable(self, tenant: str, server: str, actor: str, reason: str | None = None) -> Installation:
        """requested | disabled | needs_reapproval → enabled (re-pinning the approved snapshot)."""
        actor = await self._tenant_admin(tenant, actor)
        srv, current = await self._installed(tenant, server)
        version, tools = await self._tools_of(srv, current)
        if version is None:
            raise Conflict(f"the installed version {current.version!r} of {srv.name} is not in the registry")
        if version.state not in (VersionState.approved, VersionState.deprecated):
            raise Conflict(f"version {version.version} of {srv.name} is {version.state.value}; upgrade to an "
                           "approved version")
        user = {k: v for k, v in current.config.items() if k not in (CONFIG_KEY, "first_party")}
        missing = await self._missing_secrets(tenant, srv, self.transport(srv, version, user))
        if missing:
            raise Conflict(f"{srv.name} needs the secrets {', '.join(missing)}; set them before enabling it")
        return await self.store.transition_installation(
            tenant, srv.slug, InstallationState.enabled, actor=actor, reason=normalise_reason(reason, required=False)
            or "enabled", repin=tools)

    async def disable(self, tenant: str, server: str, actor: str, reason: str | None = None) -> Installation:
        actor = await self._tenant_admin(tenant, actor)
        srv, _ = await self._installed(tenant, server)
        return await self.store.transition_installation(
            tenant, srv.slug, InstallationState.disabled, actor=actor,
            reason=normalise_reason(reason, required=False) or "disabled")

    async def uninstall(self, tenant: str, server: str, actor: str, reason: str | None = None) -> Installation:
        """→ uninstalled; the pins and all the tenant's secrets for this server are deleted in the same transaction."""
        actor = await self._tenant_admin(tenant, actor)
        srv, _ = await self._installed(tenant, server)
        return await self.store.transition_installation(
            tenant, srv.slug, InstallationState.uninstalled, actor=actor,
            reason=normalise_reason(reason, required=False) or "uninstalled", delete_pins=True,
            delete_secrets_of=srv.id)

    async def mark_needs_reapproval(self, tenant: str, server: str, tools: Sequence[str | tuple[str, str]],
                                    reason: str, actor: str = "gateway") -> Installation:
        """Runtime drift: the live tools no longer match the approved snapshot → ``needs_reapproval`` (with an event).

        ``server`` is the gateway name (or the registry name); ``tools`` the drifted tool names
        or ``(name, why)`` pairs as :meth:`~kontor.gateway.db.GatewayDB.check_tools` reports them.
        The gateway has already withheld those tools; the installation stays served otherwise.
        Further drift while already in ``needs_reapproval`` only adds an event.
        """
        reason = normalise_reason(reason)  # type: ignore[assignment]
        actor = normalise_actor(actor)
        listed = [{"tool": t, "reason": None} if isinstance(t, str) else {"tool": t[0], "reason": t[1]}
                  for t in tools]
        if not listed:
            raise InvalidValue("name the drifted tools")
        found = await self.store.find_server(server)
        slug = found.slug if found is not None else server
        current = await self.store.get_installation(tenant, slug)
        if current is None:
            raise NotFound(f"{server} is not installed for tenant {tenant!r}")
        if current.state == InstallationState.needs_reapproval:
            await self.store.record_installation_event(tenant, slug, actor=actor, reason=reason,
                                                       detail={"drifted": listed})
            return current
        return await self.store.transition_installation(tenant, slug, InstallationState.needs_reapproval,
                                                        actor=actor, reason=reason, detail={"drifted": listed})

    # --- secrets

    async def set_secret(self, tenant: str, server: str, name: str, value: str, actor: str) -> SecretRef:
        """Store a secret the server declares (a secret header or environment variable), encrypted; admins only."""
        actor = await self._tenant_admin(tenant, actor)
        srv = await self.store.visible_server(tenant, server)
        declared: set[str] = set()
        for version in await self.store.list_versions(srv.id, states=[VersionState.approved,
                                                                      VersionState.deprecated]):
            declared.update(declared_secrets(version.server_json))
        if name not in declared:
            raise InvalidValue(f"{srv.name} declares no secret {name!r}; it declares "
                               f"{', '.join(sorted(declared)) or 'none'}")
        return await self.store.set_secret(tenant, srv.id, name, value, actor=actor)

    async def list_secrets(self, tenant: str, server: str, actor: str) -> list[SecretRef]:
        actor = await self._tenant_admin(tenant, actor)
        srv = await self.store.visible_server(tenant, server)
        return await self.store.list_secrets(tenant, srv.id)

    # --- first-party defaults

    async def install_defaults(self, tenant: str, actor: str = "bootstrap") -> list[Installation]:
        """Install every approved first-party server for ``tenant`` (a new tenant's defaults); idempotent.

        A server the tenant uninstalled stays uninstalled. An installation made outside the
        registry (``kontor up``'s bootstrap) is adopted: it gets the registry's version, config and
        pins, and keeps its state.
        """
        actor = normalise_actor(actor)
        done: list[Installation] = []
        for entry in await self.store.catalog(tenant):
            if not entry.server.first_party:
                continue
            current = entry.installation
            if current is None:
                done.append(await self._install(tenant, entry.server.name, actor, version=None, scopes=None,
                                                config=None, enable=True))
            elif current.state != InstallationState.uninstalled and CONFIG_KEY not in current.config:
                user = {k: v for k, v in current.config.items() if k != "first_party"}
                tools = [t.definition for t in await self.store.approved_snapshot(entry.latest.id)]
                transport = self.transport(entry.server, entry.latest, user)
                done.append(await self.store.write_installation(
                    tenant, entry.server, entry.latest, actor=actor, reason="adopted by the registry", path=[],
                    upstream_url=transport.url, granted_scopes=needed_scopes(entry.server.slug, tools),
                    config=self._config(entry.server, entry.latest, user, transport), tools=tools,
                    allowed_from={InstallationState.requested, InstallationState.enabled,
                                  InstallationState.disabled, InstallationState.needs_reapproval}))
        return done


# --- first-party seed ---------------------------------------------------------------------------


def first_party_documents() -> dict[str, bytes]:
    """File name → bytes of the bundled first-party ``server.json`` files (``registry/first_party/*.server.json``)."""
    folder = resources.files("kontor.registry.first_party")
    return {entry.name: entry.read_bytes() for entry in sorted(folder.iterdir(), key=lambda e: e.name)
            if entry.name.endswith(".server.json")}


async def list_first_party_tools(slug: str) -> tuple[list[dict[str, Any]], str | None]:
    """The tools (as served over MCP) and instructions of a first-party server, listed in process."""
    import anyio.to_thread
    from mcp import Client

    from kontor.settings import Limits, Settings
    from kontor.tenancy import tenant_context

    with tempfile.TemporaryDirectory(prefix="kontor-seed-") as root:
        settings = Settings(data_root=root)
        if slug == "lakehouse":
            from kontor.servers.lakehouse.server import build_server as build_lakehouse

            server = await anyio.to_thread.run_sync(build_lakehouse, settings)
        elif slug == "ingest":
            from kontor.servers.ingest.server import build_server as build_ingest

            server = await anyio.to_thread.run_sync(build_ingest, settings, Limits())
        else:
            raise NotFound(f"no first-party server {slug!r} to list")
        with tenant_context("seed"):
            async with Client(server) as client:
                tools = (await client.list_tools()).tools
                return ([t.model_dump(by_alias=True, mode="json", exclude_none=True) for t in tools],
                        client.instructions)


def first_party_review(document: Mapping[str, Any], slug: str, tools: Sequence[Mapping[str, Any]],
                       instructions: str | None) -> dict[str, Any]:
    """The review outcome of a first-party server: poisoning and annotation checks on its real tools."""
    from kontor.registry.checks.annotations import check_annotations, tool_policies
    from kontor.registry.checks.poisoning import scan_server
    from kontor.registry.checks.report import build_report, risk_label

    findings = [*scan_server(tools, instructions=instructions), *check_annotations(slug, tools)]
    report = build_report(findings, policies=tool_policies(slug, tools), server=str(document.get("name")),
                          version=str(document.get("version")),
                          checks_run=["server_json", "poisoning", "annotations"],
                          extra={"first_party": True, "note": "first-party server: snapshot listed in process"})
    passed = not report["summary"]["failed_checks"]
    return {"passed": passed, "risk": risk_label(findings), "report": report,
            "snapshot": {"tools": [dict(t) for t in tools], "instructions": instructions}}


async def seed_first_party(store: RegistryStore, *,
                           snapshots: Mapping[str, tuple[Sequence[Mapping[str, Any]], str | None]] | None = None,
                           actor: str = SEED_ACTOR) -> list[Version]:
    """Put Kontor's own servers into the catalog as approved versions (idempotent).

    Creates the publisher "Kontor" (owner :data:`FIRST_PARTY_OWNER`, namespace ``io.kontor``
    proven by ``admin``), then for each bundled ``server.json``: submits it verbatim, reviews it
    (the real tools, listed in process, or ``snapshots[slug] = (tools, instructions)``) and approves
    it as ``actor``. A version already seeded is left alone; a bundled file that changed without a
    new version number raises :class:`Conflict` (versions are immutable).
    """
    actor = normalise_actor(actor)
    publishers = await store.list_publishers(owner=FIRST_PARTY_OWNER)
    publisher = publishers[0] if publishers else await store.create_publisher("Kontor", FIRST_PARTY_OWNER,
                                                                              actor=actor)
    if not any(n.namespace == FIRST_PARTY_NAMESPACE for n in await store.list_namespaces(publisher.id)):
        await store.add_namespace(publisher.id, FIRST_PARTY_NAMESPACE, ProofMethod.admin,
                                  evidence={"granted_by": actor, "reason": "Kontor's own servers"}, actor=actor)
    seeded: list[Version] = []
    for file_name, raw in first_party_documents().items():
        result = validate_server_json(raw, namespaces=[FIRST_PARTY_NAMESPACE])
        if not result.ok or result.document is None:
            raise InvalidSubmission(list(result.problems))
        doc = result.document
        version = await store.find_version(doc["name"], doc["version"])
        if version is not None and version.sha256 != hashlib.sha256(raw).hexdigest():
            raise Conflict(f"{file_name} changed but still says version {doc['version']}; versions are immutable, "
                           "give it a new version number")
        if version is None:
            slug = doc["name"].rsplit("/", 1)[-1]
            # submitted by the first-party publisher, approved by the seed: nobody approves their own version
            version = await store.create_version(publisher.id, doc, raw.decode("utf-8"), actor=FIRST_PARTY_OWNER,
                                                 first_party=True, slug=slug)
        if version.state in (VersionState.submitted, VersionState.checking, VersionState.checks_failed):
            if snapshots is not None and version.slug in snapshots:
                tools, instructions = snapshots[version.slug]
            else:
                tools, instructions = await list_first_party_tools(version.slug)
            version, run = await store.start_review(version.id, actor=actor, reason="first-party seed")
            outcome = first_party_review(doc, version.slug, tools, instructions)
            version, _ = await store.finish_review(run.id, ReviewRecord.from_outcome(outcome), actor=actor)
        if version.state == VersionState.in_review:
            version = await store.decide(version.id, Decision.approve, actor=actor,
                                         reason="first-party server, approved by the Kontor seed")
        if version.state != VersionState.approved:
            log.error("first-party %s %s is %s, not approved", version.server_name, version.version,
                      version.state.value)
        seeded.append(version)
    return seeded

