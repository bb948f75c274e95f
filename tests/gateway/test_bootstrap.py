"""First-run bootstrap: demo tenant, first-party installations through the registry, dev admin; idempotent."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

from argon2 import PasswordHasher

from kontor.gateway.bootstrap import (
    DEMO_TENANT,
    DEV_ADMIN_EMAIL,
    DEV_LOGIN_FILE,
    BootstrapResult,
    read_dev_password,
    run_bootstrap,
)
from kontor.gateway.config import GatewaySettings
from kontor.gateway.db import GatewayDB, InstallationState, PinState, Role
from kontor.gateway.pinning import definition_hash
from kontor.registry.service import list_first_party_tools, needed_scopes
from kontor.registry.store import CONFIG_KEY


def fast_db(url: str) -> GatewayDB:
    return GatewayDB(url, hasher=PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))


def boot(**kw: object) -> BootstrapResult:
    return run_bootstrap(GatewaySettings(), db_factory=fast_db, **kw)  # type: ignore[arg-type]


_TOOLS: dict[str, list] = {}


def list_tools(name: str) -> list:
    """The first-party server's tools as the seed lists them (in process), cached per test session."""
    if name not in _TOOLS:
        _TOOLS[name] = asyncio.run(list_first_party_tools(name))[0]
    return _TOOLS[name]


def query(coro_fn):  # noqa: ANN001, ANN201 - a small helper: run fn(db) against the default database
    async def main():  # noqa: ANN202
        async with fast_db(GatewaySettings().database_url) as db:
            return await coro_fn(db)

    return asyncio.run(main())


def test_fresh_data_root_gets_tenant_servers_and_admin(data_root: Path) -> None:
    result = boot()
    assert result.tenant == DEMO_TENANT and result.created_tenant and result.created_user
    assert sorted(result.enabled) == ["ingest", "lakehouse"]
    assert (data_root / "gateway" / "gateway.db").is_file()

    installs = {i.server: i for i in query(lambda db: db.list_enabled(DEMO_TENANT))}
    assert set(installs) == {"lakehouse", "ingest"}
    assert installs["lakehouse"].upstream_url == "http://127.0.0.1:8711/mcp"
    assert installs["ingest"].upstream_url == "http://127.0.0.1:8712/mcp"
    # Installed through the registry: the scopes the approved tools need, the registry's facts in the config
    # (the first_party flag is what the gateway's /health probes), and the approved snapshot pinned.
    assert installs["lakehouse"].granted_scopes == needed_scopes("lakehouse", list_tools("lakehouse"))
    assert installs["ingest"].granted_scopes == ["ingest:read", "ingest:write"]
    for name, inst in installs.items():
        assert inst.config["first_party"] is True and inst.state == InstallationState.enabled
        assert inst.config[CONFIG_KEY]["server"] == f"io.kontor/{name}" and inst.version == inst.config[
            CONFIG_KEY]["version"]
        pins = query(lambda db, name=name: db.list_pins(DEMO_TENANT, name))
        assert {p.tool: p.definition_hash for p in pins} == {
            t["name"]: definition_hash(t) for t in list_tools(name)}  # what the seed's review listed
        assert all(p.state == PinState.approved for p in pins)
    # the first-party catalog entries are approved versions of the bundled server.json files
    assert (data_root / "gateway" / "registry" / "platform-admins.txt").read_text().splitlines()[-1] == (
        f"{DEMO_TENANT}:{DEV_ADMIN_EMAIL}")  # the dev admin reviews in the registry (dev mode only)

    login_file = data_root / "gateway" / DEV_LOGIN_FILE
    assert result.login is not None and result.login.file == login_file
    assert stat.S_IMODE(login_file.stat().st_mode) == 0o600
    password = read_dev_password(login_file)
    assert password and result.login.password == password and len(password) >= 20
    assert DEV_ADMIN_EMAIL in login_file.read_text()
    user = query(lambda db: db.authenticate(DEMO_TENANT, DEV_ADMIN_EMAIL, password))
    assert user.role == Role.admin


def test_bootstrap_is_idempotent(data_root: Path) -> None:
    first = boot()
    events = len(query(lambda db: db.list_events(DEMO_TENANT)))
    second = boot()
    assert not second.created_tenant and not second.created_user and second.enabled == []
    assert second.login is not None and first.login is not None
    assert second.login.password == first.login.password  # printed again, not regenerated
    assert len(query(lambda db: db.list_events(DEMO_TENANT))) == events  # nothing was written
    assert [t.id for t in query(lambda db: db.list_tenants())] == [DEMO_TENANT]
    assert len(query(lambda db: db.list_users(DEMO_TENANT))) == 1


def test_an_admins_choices_survive_a_rerun(data_root: Path) -> None:
    boot()
    query(lambda db: db.disable_server(DEMO_TENANT, "ingest", actor="admin"))
    query(lambda db: db.enable_server(DEMO_TENANT, "lakehouse", "http://127.0.0.1:9999/mcp",
                                      ["lakehouse:read"], config={"write_roles": ["admin"]}))
    result = boot()
    assert result.kept_disabled == ["ingest"] and result.enabled == ["lakehouse"]
    ingest = query(lambda db: db.get_installation(DEMO_TENANT, "ingest"))
    assert ingest.state == InstallationState.disabled  # not re-enabled behind the admin's back
    lakehouse = query(lambda db: db.get_installation(DEMO_TENANT, "lakehouse"))
    assert lakehouse.upstream_url == "http://127.0.0.1:8711/mcp"  # pointed back at the local server
    # an installation made outside the registry is adopted: the approved version's scopes and the registry's facts
    assert lakehouse.granted_scopes == needed_scopes("lakehouse", list_tools("lakehouse"))
    assert {k: v for k, v in lakehouse.config.items() if k != CONFIG_KEY} == {
        "write_roles": ["admin"], "first_party": True}  # the admin's config kept
    assert lakehouse.config[CONFIG_KEY]["server"] == "io.kontor/lakehouse"


def test_login_file_written_before_the_user_is_repaired(data_root: Path) -> None:
    """A crash between writing the file and adding the user: the next run adds the user with that password."""
    folder = data_root / "gateway"
    folder.mkdir(parents=True)
    (folder / DEV_LOGIN_FILE).write_text(f"tenant=demo\nemail={DEV_ADMIN_EMAIL}\npassword=kept-from-before-42\n")
    (folder / DEV_LOGIN_FILE).chmod(0o644)
    result = boot()
    assert result.created_user and result.login is not None and result.login.password == "kept-from-before-42"
    assert stat.S_IMODE((folder / DEV_LOGIN_FILE).stat().st_mode) == 0o600  # tightened
    query(lambda db: db.authenticate(DEMO_TENANT, DEV_ADMIN_EMAIL, "kept-from-before-42"))


def test_missing_login_file_is_reported_and_can_be_reset(data_root: Path) -> None:
    first = boot()
    assert first.login is not None and first.login.password is not None
    first.login.file.unlink()
    unknown = boot()
    assert unknown.login is not None and unknown.login.password is None  # the password was not changed
    query(lambda db: db.authenticate(DEMO_TENANT, DEV_ADMIN_EMAIL, first.login.password))

    reset = boot(reset_dev_password=True)
    assert reset.login is not None and reset.login.password not in (None, first.login.password)
    assert read_dev_password(reset.login.file) == reset.login.password
    query(lambda db: db.authenticate(DEMO_TENANT, DEV_ADMIN_EMAIL, reset.login.password))
