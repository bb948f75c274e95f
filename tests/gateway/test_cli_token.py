"""``kontor token``: the claims of the dev token, scope narrowing and refusal, clear errors.

The database is the one ``kontor up`` bootstraps (tenant ``demo`` with lakehouse and ingest, the
dev admin), plus a member and a server whose writes are reserved for admins. Most cases go
through the mounted ``kontor`` app with CliRunner; one runs the real ``kontor`` executable.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from joserfc import jwt
from joserfc.jwk import KeySet
from typer.testing import CliRunner

from kontor.cli import app
from kontor.gateway.bootstrap import DEMO_TENANT, DEV_ADMIN_EMAIL, run_bootstrap, write_gateway_origin
from kontor.gateway.config import GatewaySettings, get_gateway_settings
from kontor.gateway.db import GatewayDB, User
from kontor.gateway.keys import KeyStore

MEMBER = "member@demo.local"
# members get lakehouse:interactions too (recording one's own interactions); no sealed:write for them
MEMBER_SCOPES = "ingest:read ingest:write lakehouse:interactions lakehouse:read lakehouse:write sealed:read"
ADMIN_SCOPES = " ".join(sorted([*MEMBER_SCOPES.split(), "sealed:write", "tenant:admin"]))
GATEWAY_ENV = ("KONTOR_GATEWAY_PUBLIC_ORIGIN", "KONTOR_GATEWAY_HOST", "KONTOR_GATEWAY_PORT", "KONTOR_GATEWAY_DB_URL")
runner = CliRunner()


def fast_db(url: str) -> GatewayDB:
    return GatewayDB(url, hasher=PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1))


@pytest.fixture
def mesh_db(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, User]]:
    """The bootstrapped demo tenant plus a member, a second tenant and an admin-write-only server."""
    for name in GATEWAY_ENV:
        monkeypatch.delenv(name, raising=False)
    get_gateway_settings.cache_clear()
    run_bootstrap(GatewaySettings(), db_factory=fast_db)

    async def seed() -> dict[str, User]:
        async with fast_db(GatewaySettings().database_url) as db:
            await db.add_user(DEMO_TENANT, MEMBER, "correct horse battery staple", "member")
            await db.enable_server(DEMO_TENANT, "sealed", "http://127.0.0.1:9/mcp", ["sealed:read", "sealed:write"],
                                   config={"write_roles": ["admin"]})
            await db.create_tenant("other")
            users = {email: await db.get_user(DEMO_TENANT, email) for email in (DEV_ADMIN_EMAIL, MEMBER)}
            return {k: v for k, v in users.items() if v is not None}

    yield asyncio.run(seed())
    get_gateway_settings.cache_clear()


def token(*args: str) -> Any:
    return runner.invoke(app, ["token", *args])


def claims(token_text: str) -> dict[str, Any]:
    keys = KeyStore(GatewaySettings().data_dir / "keys" / "oauth").jwks()
    decoded = jwt.decode(token_text, KeySet.import_key_set(keys), algorithms=["ES256"])
    assert decoded.header["typ"] == "at+jwt"
    return decoded.claims


def ok(result: Any) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    text = result.stdout.strip()
    assert result.stdout == text + "\n" and text.count(".") == 2  # only the token on stdout
    return claims(text)


def refused(result: Any, *needles: str) -> str:
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)
    return result.stderr


def test_default_token_carries_issuer_audience_subject_and_the_role_scopes(mesh_db: dict[str, User]) -> None:
    got = ok(token("--tenant", DEMO_TENANT, "--user", DEV_ADMIN_EMAIL))
    assert got["iss"] == "http://127.0.0.1:8700/t/demo"  # the tenant's issuer at the default origin
    assert got["aud"] == "http://127.0.0.1:8700/t/demo/mcp"  # the tenant endpoint's canonical URI
    assert got["sub"] == str(mesh_db[DEV_ADMIN_EMAIL].id) and got["email"] == DEV_ADMIN_EMAIL
    assert got["tenant"] == DEMO_TENANT and got["roles"] == ["admin"] and got["client_id"] == "kontor-cli"
    assert got["scope"] == ADMIN_SCOPES
    assert got["exp"] - got["iat"] == GatewaySettings().access_token_ttl_s and got["nbf"] <= got["iat"]

    member = ok(token("--tenant", DEMO_TENANT, "--user", MEMBER.upper()))  # e-mail addresses are case-insensitive
    assert member["sub"] == str(mesh_db[MEMBER].id) and member["roles"] == ["member"]
    assert member["scope"] == MEMBER_SCOPES  # no tenant:admin, no write where writes are for admins


def test_scopes_narrow_the_token(mesh_db: dict[str, User]) -> None:
    assert ok(token("--tenant", DEMO_TENANT, "--user", MEMBER, "--scopes", "lakehouse:read"))["scope"] == (
        "lakehouse:read")
    both = ok(token("--tenant", DEMO_TENANT, "--user", DEV_ADMIN_EMAIL, "--scopes", "lakehouse:read, ingest:write",
                    "--scopes", "tenant:admin"))
    assert both["scope"] == "ingest:write lakehouse:read tenant:admin"


def test_a_scope_the_user_lacks_is_refused(mesh_db: dict[str, User]) -> None:
    refused(token("--tenant", DEMO_TENANT, "--user", MEMBER, "--scopes", "tenant:admin"),
            "may not have tenant:admin", "role member", MEMBER)
    # one lacking scope among allowed ones refuses the whole request (nothing is dropped silently)
    message = refused(token("--tenant", DEMO_TENANT, "--user", MEMBER, "--scopes", "lakehouse:read sealed:write"),
                      "may not have sealed:write")
    assert "lakehouse:read lakehouse:write" in message  # says what the user may have
    refused(token("--tenant", DEMO_TENANT, "--user", DEV_ADMIN_EMAIL, "--scopes", "crm:read"), "may not have crm:read")


def test_unknown_tenant_or_user_is_a_clear_error(mesh_db: dict[str, User]) -> None:
    refused(token("--tenant", "nosuch", "--user", DEV_ADMIN_EMAIL), "tenant 'nosuch' does not exist")
    refused(token("--tenant", "nosuch", "--user", DEV_ADMIN_EMAIL, "--scopes", "lakehouse:read"),
            "tenant 'nosuch' does not exist")
    refused(token("--tenant", DEMO_TENANT, "--user", "nobody@demo.local"), "no user 'nobody@demo.local'")
    refused(token("--tenant", "other", "--user", DEV_ADMIN_EMAIL), "no user", "'other'")  # users are per tenant
    refused(token("--tenant", "../demo", "--user", DEV_ADMIN_EMAIL), "invalid tenant id")
    missing = token("--user", DEV_ADMIN_EMAIL)
    assert missing.exit_code == 2 and "--tenant" in missing.output  # usage error


def test_origin_follows_kontor_up_then_settings_then_option(mesh_db: dict[str, User],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    write_gateway_origin(GatewaySettings().data_dir, "http://127.0.0.1:18999")  # what `kontor up --port 18999` records
    got = ok(token("--tenant", DEMO_TENANT, "--user", DEV_ADMIN_EMAIL))
    assert got["iss"] == "http://127.0.0.1:18999/t/demo" and got["aud"] == "http://127.0.0.1:18999/t/demo/mcp"

    monkeypatch.setenv("KONTOR_GATEWAY_PORT", "18123")  # explicit settings win over the record
    get_gateway_settings.cache_clear()
    assert ok(token("--tenant", DEMO_TENANT, "--user", DEV_ADMIN_EMAIL))["aud"] == "http://127.0.0.1:18123/t/demo/mcp"

    got = ok(token("--tenant", DEMO_TENANT, "--user", DEV_ADMIN_EMAIL, "--origin", "https://kontor.example.com"))
    assert got["iss"] == "https://kontor.example.com/t/demo"
    assert got["aud"] == "https://kontor.example.com/t/demo/mcp"
    refused(token("--tenant", DEMO_TENANT, "--user", DEV_ADMIN_EMAIL, "--origin", "ftp://x/y"), "gateway origin")


def test_the_real_executable_prints_only_the_token_and_fails_with_exit_1(mesh_db: dict[str, User],
                                                                        data_root: Path) -> None:
    kontor = Path(sys.executable).with_name("kontor")
    argv = [str(kontor)] if kontor.exists() else [sys.executable, "-m", "kontor.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KONTOR_")}
    env["KONTOR_DATA_ROOT"] = str(data_root)
    good = subprocess.run([*argv, "token", "--tenant", DEMO_TENANT, "--user", DEV_ADMIN_EMAIL, "--scopes",
                           "lakehouse:read"], env=env, capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    assert claims(good.stdout.strip())["scope"] == "lakehouse:read"
    bad = subprocess.run([*argv, "token", "--tenant", DEMO_TENANT, "--user", MEMBER, "--scopes", "tenant:admin"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stdout == ""
    assert "error:" in bad.stderr and "tenant:admin" in bad.stderr and "Traceback" not in bad.stderr
