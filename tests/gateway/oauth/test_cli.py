"""``kontor token``: prints only a token, scopes cut to the user's role; errors exit 1."""

from __future__ import annotations

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from typer.testing import CliRunner

from kontor.gateway.config import GatewaySettings
from kontor.gateway.db import GatewayDB
from kontor.gateway.keys import KeyStore
from kontor.gateway.oauth import cli
from tests.gateway.oauth.conftest import ADMIN, MEMBER, RESOURCE, TENANT

runner = CliRunner()


@pytest.fixture
def db_url(db: GatewayDB, settings: GatewaySettings, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("KONTOR_GATEWAY_PUBLIC_ORIGIN", settings.origin)
    return str(db.url)


def claims(settings: GatewaySettings, token: str) -> dict[str, object]:
    keys = KeyStore(settings.data_dir / "keys" / "oauth").jwks()
    return jwt.decode(token, KeySet.import_key_set(keys), algorithms=["ES256"]).claims


def test_token_command_prints_only_a_token(db_url: str, settings: GatewaySettings) -> None:
    result = runner.invoke(cli.app, ["--tenant", TENANT, "--user", MEMBER, "--scopes", "files:read, files:write",
                                     "--db", db_url])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert result.stdout == token + "\n" and token.count(".") == 2
    got = claims(settings, token)
    assert got["scope"] == "files:read files:write"  # asking for crm:write (admins only) is refused: test_cli_token
    assert got["client_id"] == "kontor-cli" and got["aud"] == RESOURCE and got["email"] == MEMBER


def test_token_command_defaults_to_all_role_scopes(db_url: str, settings: GatewaySettings) -> None:
    result = runner.invoke(cli.app, ["--tenant", TENANT, "--user", ADMIN, "--db", db_url])
    assert result.exit_code == 0, result.output
    assert claims(settings, result.stdout.strip())["scope"] == (
        "crm:read crm:write files:read files:write tenant:admin")


def test_token_command_errors(db_url: str) -> None:
    for args in (["--tenant", TENANT, "--user", "nobody@acme.example"], ["--tenant", "nosuch", "--user", MEMBER],
                 ["--tenant", TENANT, "--user", MEMBER, "--scopes", "tenant:admin"]):
        result = runner.invoke(cli.app, [*args, "--db", db_url])
        assert result.exit_code == 1, args
        assert result.stdout == "" and "error:" in result.stderr
