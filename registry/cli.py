"""``kontor registry …``: publish, review and install servers on the local data root's database.

The commands work on the gateway's database directly (``--db URL``; default
``<data root>/gateway/gateway.db``), through :class:`~kontor.registry.service.RegistryService`, like
the other ``kontor`` admin commands: whoever runs them holds the database, so they act as the
*operator* — a tenant admin of every tenant for ``install``/``uninstall``, recorded as
``cli:<login>`` — except where a person must be named: ``publish --as EMAIL`` (the publisher's
owner) and ``review approve|reject --as EMAIL`` (the reviewer; a publisher never decides on their
own version, and the store refuses it here too). The schema is migrated first, so the commands work
on a fresh data root.

``publish FILE`` exits 1 and lists every problem with its JSON path when the file is not a valid
``server.json``; otherwise it prints the version's id and state (``in_review``, or
``checks_failed`` with the failing rules — exit 0, or 2 with ``--strict``). The automated review
runs with the production checks (https only, public addresses only); tests swap
:data:`review_config`.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
import typer
from sqlalchemy.exc import SQLAlchemyError

from kontor.gateway.db import GatewayDB, GatewayDBError, InstallationState
from kontor.gateway.naming import NamingError
from kontor.registry.lifecycle import ProofMethod, VersionState
from kontor.registry.service import InvalidSubmission, RegistryService
from kontor.registry.store import Publisher, RegistryStore, SecretBox, normalise_actor
from kontor.settings import get_settings
from kontor.tenancy import InvalidTenant

__all__ = ["app", "db_factory", "review_app", "review_config"]

T = TypeVar("T")

app = typer.Typer(help="Registry: publish servers, review and approve them, install them for tenants.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
review_app = typer.Typer(help="The review queue and decisions (list, show, approve, reject).", no_args_is_help=True)
publisher_app = typer.Typer(help="Publishers and their namespaces.", no_args_is_help=True)
app.add_typer(review_app, name="review")
app.add_typer(publisher_app, name="publisher")

#: How commands open the database, and the review's configuration (tests swap these).
db_factory: Callable[[str], GatewayDB] = GatewayDB
review_config: Callable[[], Any] | None = None  # () -> ReviewConfig; None: the production defaults

DbOpt = Annotated[str | None, typer.Option("--db", help="SQLAlchemy async URL (default: SQLite under the data root)")]


class OperatorService(RegistryService):
    """The service as the CLI operator uses it: the holder of the database is a tenant admin of every tenant."""

    async def _tenant_admin(self, tenant: str, actor: str) -> str:
        return normalise_actor(actor)


def _operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=code)


def _default_db_url() -> str:
    folder = Path(get_settings().data_root) / "gateway"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{folder / 'gateway.db'}"


def _run(db_url: str | None, action: Callable[[OperatorService], Awaitable[T]]) -> T:
    """Migrate, open the store and the service, run ``action``; known errors become exit code 1."""
    url = db_url or _default_db_url()

    async def main() -> T:
        from kontor.registry.migrations import upgrade_async
        from kontor.registry.review import ReviewConfig  # the review's imports are heavy: only when used
        from kontor.registry.reviewer import registry_review

        await upgrade_async(url)
        async with db_factory(url) as db:
            box = SecretBox.from_file(Path(get_settings().data_root) / "gateway" / "registry" / "secrets.key")
            store = RegistryStore(db, secret_box=box)
            config = review_config() if review_config is not None else ReviewConfig()
            return await action(OperatorService(store, registry_review(store, config)))

    try:
        return anyio.run(main)
    except InvalidSubmission:
        raise
    except (GatewayDBError, InvalidTenant, NamingError) as exc:
        raise _fail(str(exc)) from None
    except (SQLAlchemyError, OSError) as exc:
        raise _fail(f"database: {type(exc).__name__}: {exc}") from None


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=False)]
    for line in (header, *rows):
        typer.echo("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def _failing(report: dict[str, Any]) -> list[dict[str, Any]]:
    from kontor.registry.api import failing_findings

    return failing_findings(report)


# --- publishers -----------------------------------------------------------------------------------


async def _find_publisher(service: RegistryService, ref: str | None, owner: str | None) -> Publisher:
    store = service.store
    if ref is not None:
        try:
            return await store.get_publisher(ref)
        except GatewayDBError:
            pass
        named = [p for p in await store.list_publishers() if p.display_name == ref]
        if len(named) == 1:
            return named[0]
        raise GatewayDBError(f"no publisher {ref!r}" if not named else
                             f"{len(named)} publishers are called {ref!r}; give the id")
    if owner is None:
        raise GatewayDBError("name the publisher (--publisher ID or NAME) or its owner (--as EMAIL)")
    owned = await store.list_publishers(owner=owner)
    if len(owned) != 1:
        raise GatewayDBError(f"{owner} owns {len(owned)} publishers; choose one with --publisher")
    return owned[0]


@publisher_app.command("create")
def publisher_create(
    name: Annotated[str, typer.Argument(help="display name")],
    owner: Annotated[str, typer.Option("--as", help="the owner's e-mail address")],
    namespace: Annotated[list[str] | None, typer.Option(
        "--namespace", help="grant a namespace (repeatable; proven by the operator, method 'admin')")] = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="the owner's tenant")] = None,
    db: DbOpt = None,
) -> None:
    """Create a publisher; namespaces given here are granted by the operator (an admin proof)."""

    async def action(service: RegistryService) -> Publisher:
        publisher = await service.store.create_publisher(name, owner, owner_tenant=tenant, actor=_operator())
        for ns in namespace or []:
            await service.store.add_namespace(publisher.id, ns, ProofMethod.admin, actor=_operator(),
                                              evidence={"granted_by": _operator(), "reason": "kontor registry CLI"})
        return publisher

    publisher = _run(db, action)
    typer.echo(f"publisher {publisher.id} ({publisher.display_name}, owner {publisher.owner})"
               + (f", namespaces {', '.join(namespace)}" if namespace else ""))


@publisher_app.command("list")
def publisher_list(db: DbOpt = None) -> None:
    """List publishers with their namespaces."""

    async def action(service: RegistryService) -> list[tuple[str, ...]]:
        rows = []
        for p in await service.store.list_publishers():
            names = [n.namespace for n in await service.store.list_namespaces(p.id)]
            rows.append((str(p.id), p.display_name, p.owner, ", ".join(names) or "-"))
        return rows

    rows = _run(db, action)
    if not rows:
        typer.echo("no publishers")
        return
    _table(("ID", "NAME", "OWNER", "NAMESPACES"), rows)


# --- publish --------------------------------------------------------------------------------------


@app.command("publish")
def publish(
    file: Annotated[Path, typer.Argument(help="the server.json to submit")],
    publisher: Annotated[str | None, typer.Option("--publisher", help="publisher id or display name")] = None,
    as_: Annotated[str | None, typer.Option("--as", help="who submits (the publisher's owner, by default)")] = None,
    private: Annotated[str | None, typer.Option(
        "--private", metavar="TENANT", help="make the server private to this tenant")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="exit 2 when the automated checks fail")] = False,
    db: DbOpt = None,
) -> None:
    """Submit FILE: invalid → exit 1 listing every problem with its JSON path; else the version's id and state."""
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise _fail(f"cannot read {file}: {exc.strerror or exc}") from None

    async def action(service: RegistryService) -> tuple[Any, Any]:
        found = await _find_publisher(service, publisher, as_)
        actor = as_ or found.owner
        version = await service.submit(found.id, raw, actor, tenant=private)
        return version, await service.store.latest_review_run(version.id)

    try:
        version, run = _run(db, action)
    except InvalidSubmission as exc:
        typer.echo(f"error: {file} is not a valid server.json: {len(exc.problems)} problem(s)", err=True)
        for problem in exc.problems:
            typer.echo(f"  {problem.path}: {problem.message} [{problem.rule}]", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"version {version.id}")
    typer.echo(f"state {version.state.value}")
    typer.echo(f"server {version.server_name} {version.version} (gateway name {version.slug})")
    if run is not None:
        typer.echo(f"risk {run.risk or '-'}")
        for finding in _failing(run.report):
            where = " ".join(x for x in (finding.get("tool") or "", finding.get("field") or "") if x)
            typer.echo(f"  {finding['severity']}: {finding['rule']}{' at ' + where if where else ''}: "
                       f"{finding['message']}")
    if strict and version.state == VersionState.checks_failed:
        raise typer.Exit(code=2)


# --- review ---------------------------------------------------------------------------------------


@review_app.command("list")
def review_list(
    state: Annotated[str, typer.Option("--state", help="versions in this state (default: waiting for review)")]
    = VersionState.in_review.value,
    db: DbOpt = None,
) -> None:
    """List versions (by default those waiting for a platform admin)."""
    try:
        wanted = VersionState(state)
    except ValueError:
        raise _fail(f"unknown state {state!r}: use one of {', '.join(s.value for s in VersionState)}") from None

    async def action(service: RegistryService) -> list[tuple[str, ...]]:
        rows = []
        for v in await service.store.list_versions(states=[wanted]):
            run = await service.store.latest_review_run(v.id)
            rows.append((str(v.id), v.server_name, v.version, v.state.value, (run.risk if run else None) or "-",
                         v.submitted_by, v.created_at.isoformat(timespec="seconds")))
        return rows

    rows = _run(db, action)
    if not rows:
        typer.echo(f"no versions {wanted.value}")
        return
    _table(("ID", "SERVER", "VERSION", "STATE", "RISK", "SUBMITTED BY", "SUBMITTED"), rows)


@review_app.command("show")
def review_show(
    version_id: Annotated[str, typer.Argument(help="version id")],
    as_json: Annotated[bool, typer.Option("--json", help="print the whole evidence report as JSON")] = False,
    db: DbOpt = None,
) -> None:
    """Show a version: state, review verdict, failing findings, tools, decisions."""

    async def action(service: RegistryService) -> tuple[Any, Any, Any, Any]:
        version = await service.store.get_version(version_id)
        run = await service.store.latest_review_run(version.id)
        tools = await service.store.snapshot(run.id) if run is not None else []
        return version, run, tools, await service.store.list_decisions(version.id)

    version, run, tools, decisions = _run(db, action)
    if as_json:
        typer.echo(json.dumps({"id": str(version.id), "server": version.server_name, "version": version.version,
                               "state": version.state.value, "report": run.report if run else None},
                              indent=2, ensure_ascii=False))
        return
    typer.echo(f"version {version.id}: {version.server_name} {version.version}")
    typer.echo(f"state {version.state.value} (submitted by {version.submitted_by})")
    if run is None:
        typer.echo("no finished review run")
    else:
        typer.echo(f"review run {run.number}: {'passed' if run.passed else 'failed'}, risk {run.risk or '-'}")
        for finding in _failing(run.report):
            typer.echo(f"  {finding['severity']}: {finding['rule']}: {finding['message']}")
        for tool in tools:
            typer.echo(f"  tool {tool.tool_name} {tool.definition_hash[:16]}")
    for d in decisions:
        typer.echo(f"decision {d.decision.value} by {d.approver} at {d.decided_at.isoformat(timespec='seconds')}: "
                   f"{d.reason}")


def _decide(version_id: str, decision: str, reason: str, reviewer: str | None, db: str | None) -> None:
    async def action(service: RegistryService) -> Any:
        operation = service.approve if decision == "approve" else service.reject
        return await operation(version_id, reviewer or _operator(), reason)

    version = _run(db, action)
    typer.echo(f"version {version.id} ({version.server_name} {version.version}) is {version.state.value}")


ReasonOpt = Annotated[str, typer.Option("--reason", help="why (recorded with the decision; required)")]
ReviewerOpt = Annotated[str | None, typer.Option("--as", help="the reviewer's e-mail (default: cli:<login>)")]


@review_app.command("approve")
def review_approve(version_id: Annotated[str, typer.Argument(help="version id")], reason: ReasonOpt,
                   reviewer: ReviewerOpt = None, db: DbOpt = None) -> None:
    """Approve a version that passed its checks (never one you published)."""
    _decide(version_id, "approve", reason, reviewer, db)


@review_app.command("reject")
def review_reject(version_id: Annotated[str, typer.Argument(help="version id")], reason: ReasonOpt,
                  reviewer: ReviewerOpt = None, db: DbOpt = None) -> None:
    """Reject a version (final)."""
    _decide(version_id, "reject", reason, reviewer, db)


# --- installations ----------------------------------------------------------------------------------


TenantOpt = Annotated[str, typer.Option("--tenant", "-t", help="tenant id")]


@app.command("install")
def install(
    server: Annotated[str, typer.Argument(help="server.json name or gateway name")],
    tenant: TenantOpt,
    version: Annotated[str | None, typer.Option("--version", help="an approved version (default: latest)")] = None,
    db: DbOpt = None,
) -> None:
    """Install an approved server for a tenant (its approved tool definitions are pinned)."""

    async def action(service: RegistryService) -> Any:
        return await service.install(tenant, server, _operator(), version=version)

    inst = _run(db, action)
    note = "" if inst.state == InstallationState.enabled else " (set the required secrets, then enable it)"
    typer.echo(f"installed {inst.server} {inst.version} for tenant {inst.tenant_id}: {inst.state.value}{note}")
    typer.echo(f"scopes {' '.join(inst.granted_scopes) or '-'}")


@app.command("uninstall")
def uninstall(
    server: Annotated[str, typer.Argument(help="server.json name or gateway name")],
    tenant: TenantOpt,
    db: DbOpt = None,
) -> None:
    """Uninstall a server for a tenant (its pins and the tenant's secrets for it are deleted)."""

    async def action(service: RegistryService) -> Any:
        return await service.uninstall(tenant, server, _operator(), "uninstalled with kontor registry")

    inst = _run(db, action)
    typer.echo(f"uninstalled {inst.server} for tenant {inst.tenant_id}")
