"""First-run setup of a local Kontor: the ``demo`` tenant, its first-party servers, a dev admin.

Idempotent: run it before every start of the gateway (``kontor up`` does). It

* brings the database schema to the newest migration (:func:`kontor.registry.migrations.upgrade_async`:
  the gateway's, the OAuth server's and the registry's tables; an older database is adopted);
* creates tenant ``demo`` if it is missing;
* seeds the registry with Kontor's own servers as approved catalog entries
  (:func:`kontor.registry.service.seed_first_party`: each bundled ``server.json``, reviewed on the
  tools the server really lists, approved by the seed) and installs them for the tenant through
  the registry (:meth:`~kontor.registry.service.RegistryService.install_defaults`): ``lakehouse`` at
  ``http://127.0.0.1:8711/mcp``, ``ingest`` at ``http://127.0.0.1:8712/mcp``, with the scopes their
  approved tools need, the approved snapshot pinned (so the gateway serves exactly what was
  approved and withholds drift), and config ``{"first_party": true, "registry": {…}}``. An
  installation made before the registry existed is adopted (its state and the admin's config
  kept); an enabled one is pointed at the right URL again; one an admin disabled or uninstalled
  stays so;
* adds the dev admin ``admin@demo.local`` with a random password generated once and kept in
  ``<data_root>/gateway/dev-login.txt`` (mode 0600), so every start can print the login, and
  names it a platform admin of the registry in ``<data_root>/gateway/registry/platform-admins.txt``
  (read by the gateway in dev mode only; production names platform admins in
  ``KONTOR_GATEWAY_PLATFORM_ADMINS``).

``kontor up`` also records the gateway's public origin in ``<data_root>/gateway/origin.txt``
(:func:`write_gateway_origin`), so ``kontor token`` on the same data root mints tokens whose issuer
and audience match the running gateway even when it was started with another ``--port``.

The password file is written before the user is added, so a crash in between is repaired by
the next run (which adds the user with the password from the file). If the user exists but the
file is gone, the password is left alone; ``reset_dev_password`` sets a new one (and a new file).
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from kontor.gateway.config import GatewaySettings, get_gateway_settings
from kontor.gateway.db import AlreadyExists, GatewayDB, InstallationState, Role

log = logging.getLogger(__name__)

DEMO_TENANT = "demo"
DEV_ADMIN_EMAIL = "admin@demo.local"
DEV_LOGIN_FILE = "dev-login.txt"
#: Where ``kontor up`` records the public origin of the gateway it runs (one line, ``scheme://host:port``).
ORIGIN_FILE = "origin.txt"
#: First-party servers and their loopback ports (the same as ``kontor.cli.DEFAULT_PORTS``).
FIRST_PARTY_PORTS: dict[str, int] = {"lakehouse": 8711, "ingest": 8712}
ACTOR = "bootstrap"
#: Installation config flag: a server the local mesh runs (the gateway's /health probes these).
FIRST_PARTY_FLAG = "first_party"
#: File (under ``<data_dir>/registry``) naming the registry's platform admins on a dev data root.
PLATFORM_ADMINS_FILE = "platform-admins.txt"


def first_party_urls(host: str = "127.0.0.1", ports: Mapping[str, int] = FIRST_PARTY_PORTS) -> dict[str, str]:
    """Server name -> its Streamable HTTP URL (also the audience of the tokens minted for it)."""
    return {name: f"http://{host}:{port}/mcp" for name, port in ports.items()}


@dataclass(frozen=True)
class DevLogin:
    tenant: str
    email: str
    password: str | None  # None: unknown (the file was removed after the user was created)
    file: Path


@dataclass
class BootstrapResult:
    tenant: str
    created_tenant: bool = False
    enabled: list[str] = field(default_factory=list)  # installations created or re-pointed by this run
    kept_disabled: list[str] = field(default_factory=list)
    created_user: bool = False
    login: DevLogin | None = None


def _import_oauth_tables() -> None:
    # The OAuth package (written separately) declares its tables on the gateway's metadata; import it
    # before db.init() so create_all makes them too. Until it exists there is nothing to import.
    try:
        import kontor.gateway.oauth  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name not in ("kontor.gateway.oauth",):
            raise  # the package exists but something it imports is missing: that is a real error


def read_dev_password(path: Path) -> str | None:
    """The password stored in the dev login file, or None if the file is missing or has none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "password" and value.strip():
            return value.strip()
    return None


def write_dev_login(path: Path, tenant: str, email: str, password: str) -> None:
    """Write the dev login file atomically with mode 0600 (created that way, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    body = (
        "# Kontor development login, generated by `kontor up`. Not for production.\n"
        f"tenant={tenant}\nemail={email}\npassword={password}\n"
    )
    tmp.unlink(missing_ok=True)  # left over by a crashed run with the same pid
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_gateway_origin(data_dir: Path, origin: str) -> Path:
    """Record ``origin`` as the public origin of the gateway running on this data root (atomically)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / ORIGIN_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(origin.strip() + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_gateway_origin(data_dir: Path) -> str | None:
    """The origin :func:`write_gateway_origin` recorded, or None when there is none."""
    try:
        origin = (data_dir / ORIGIN_FILE).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return origin or None


def _new_password() -> str:
    while True:
        password = secrets.token_urlsafe(18)  # 24 characters, 144 bits
        if len(set(password)) >= 8:
            return password


async def bootstrap(
    db: GatewayDB,
    data_dir: Path,
    *,
    tenant: str = DEMO_TENANT,
    servers: Mapping[str, str] | None = None,
    admin_email: str = DEV_ADMIN_EMAIL,
    reset_dev_password: bool = False,
    snapshots: Mapping[str, tuple[Sequence[Mapping[str, Any]], str | None]] | None = None,
) -> BootstrapResult:
    """Bring ``db`` (already migrated) and ``data_dir`` (``<data_root>/gateway``) to the dev baseline.

    ``snapshots``: first-party server → ``(tools, instructions)`` to seed instead of listing the
    servers in process (tests).
    """
    result = BootstrapResult(tenant)
    if await db.get_tenant(tenant) is None:
        try:
            await db.create_tenant(tenant, "Demo", actor=ACTOR)
            result.created_tenant = True
        except AlreadyExists:  # another bootstrap got there first
            pass

    await _install_first_party(db, tenant, servers if servers is not None else first_party_urls(), result,
                               snapshots=snapshots)

    login_file = data_dir / DEV_LOGIN_FILE
    password = read_dev_password(login_file)
    if login_file.exists():
        os.chmod(login_file, 0o600)  # tighten a file someone copied in with looser permissions
    user = await db.get_user(tenant, admin_email)
    if user is None:
        if password is None:
            password = _new_password()
            write_dev_login(login_file, tenant, admin_email, password)
        try:
            await db.add_user(tenant, admin_email, password, Role.admin, actor=ACTOR)
            result.created_user = True
        except AlreadyExists:
            pass
    elif reset_dev_password:
        password = _new_password()
        write_dev_login(login_file, tenant, admin_email, password)
        await db.set_password(tenant, admin_email, password, actor=ACTOR)
    result.login = DevLogin(tenant, admin_email, password, login_file)
    name_platform_admin(data_dir, tenant, admin_email)
    return result


async def _no_review(server_json: Any, namespaces: list[str]) -> Any:  # pragma: no cover - never called
    raise RuntimeError("bootstrap installs approved first-party servers only; it reviews nothing")


async def _install_first_party(db: GatewayDB, tenant: str, urls: Mapping[str, str], result: BootstrapResult, *,
                               snapshots: Mapping[str, tuple[Sequence[Mapping[str, Any]], str | None]] | None
                               ) -> None:
    """Seed the registry's first-party entries and install them for ``tenant`` (see the module docstring)."""
    from kontor.registry.service import RegistryService, seed_first_party
    from kontor.registry.store import RegistryStore

    store = RegistryStore(db)
    await seed_first_party(store, snapshots=snapshots)
    before = {name: await db.get_installation(tenant, name) for name in urls}
    done = await RegistryService(store, _no_review, local_urls=urls).install_defaults(tenant, actor=ACTOR)
    changed = {i.server for i in done}
    for name, url in urls.items():
        current = await db.get_installation(tenant, name)
        if current is None:
            continue
        if current.state == InstallationState.enabled and current.upstream_url != url:
            await db.enable_server(tenant, name, url, current.granted_scopes, config=current.config, actor=ACTOR)
            changed.add(name)
        elif current.state != InstallationState.enabled and before.get(name) is not None:
            result.kept_disabled.append(name)
            log.info("server %s is %s for tenant %s; bootstrap leaves it so", name, current.state.value, tenant)
    result.enabled.extend(sorted(changed))


async def install_first_party_for(db: GatewayDB, tenant: str, urls: Mapping[str, str] | None = None,
                                  *, snapshots: Mapping[str, tuple[Sequence[Mapping[str, Any]], str | None]]
                                  | None = None) -> list[str]:
    """Install the approved first-party servers for a new ``tenant`` (``kontor tenant create`` does);
    the names installed. The database must be migrated (:func:`kontor.registry.migrations.upgrade_async`)."""
    result = BootstrapResult(tenant)
    await _install_first_party(db, tenant, urls or first_party_urls(), result, snapshots=snapshots)
    return result.enabled


def name_platform_admin(data_dir: Path, tenant: str, email: str) -> Path:
    """Add ``tenant:email`` to ``<data_dir>/registry/platform-admins.txt`` (dev only; kept if already there)."""
    path = data_dir / "registry" / PLATFORM_ADMINS_FILE
    entry = f"{tenant}:{email.strip().lower()}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ("# Platform admins of the registry on this data root (tenant:email per line), read by the gateway\n"
                "# in dev mode only; production uses KONTOR_GATEWAY_PLATFORM_ADMINS. Written by `kontor up`.\n")
    if entry in (line.strip().lower() for line in text.splitlines()):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text + ("" if text.endswith("\n") or not text else "\n") + entry + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def run_bootstrap(
    settings: GatewaySettings | None = None,
    *,
    db_factory: Callable[[str], GatewayDB] = GatewayDB,
    servers: Mapping[str, str] | None = None,
    reset_dev_password: bool = False,
    snapshots: Mapping[str, tuple[Sequence[Mapping[str, Any]], str | None]] | None = None,
) -> BootstrapResult:
    """:func:`bootstrap` against the gateway's database (``settings.database_url``), synchronously,
    after bringing its schema to the newest migration."""
    settings = settings or get_gateway_settings()
    _import_oauth_tables()

    async def main() -> BootstrapResult:
        from kontor.registry.migrations import upgrade_async

        await upgrade_async(settings.database_url)  # one schema: gateway, OAuth and registry tables
        async with db_factory(settings.database_url) as db:
            return await bootstrap(db, settings.data_dir, servers=servers, reset_dev_password=reset_dev_password,
                                   snapshots=snapshots)

    return anyio.run(main)
