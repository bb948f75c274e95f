"""``kontor registry …``: publish (invalid → every problem with its path, exit 1; valid → id and state),
review list / show / approve / reject, install / uninstall — through the real ``kontor`` command line.

The commands run in process on the data root's database; the review reaches the TLS fixture servers
of ``test_registry_api`` through the SSRF-safe test client (``registry.cli.review_config`` swapped).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from kontor.cli import app
from kontor.gateway import cli as gateway_cli
from kontor.registry import cli as registry_cli
from tests.registry import test_registry_api as api_tests
from tests.registry.test_registry_api import Net, fast_hasher, server_json

net = api_tests.net  # the module's TLS fixture servers (pytest finds the fixture by its name)
runner = CliRunner()
PUBLISHER, REVIEWER = "dev@fixture.example", "reviewer@ops.example"


def kontor(*args: str) -> Any:
    return runner.invoke(app, list(args))


@pytest.fixture
def cli_env(data_root: Path, net: Net, monkeypatch: pytest.MonkeyPatch) -> Path:
    from kontor.gateway.db import GatewayDB

    monkeypatch.setattr(registry_cli, "review_config", net.config)
    monkeypatch.setattr(registry_cli, "db_factory", lambda url: GatewayDB(url, hasher=fast_hasher()))
    monkeypatch.setattr(gateway_cli, "db_factory", lambda url: GatewayDB(url, hasher=fast_hasher()))
    return data_root


def write(path: Path, doc: dict[str, Any] | str) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def test_publish_review_install_uninstall(cli_env: Path, net: Net, tmp_path: Path) -> None:
    created = kontor("registry", "publisher", "create", "Fixture GmbH", "--as", PUBLISHER,
                     "--namespace", "test.fixture")
    assert created.exit_code == 0, created.output
    assert "namespaces test.fixture" in created.stdout

    # invalid: exit 1, every problem with its JSON path, nothing stored
    doc = server_json(net.url("/clean/mcp"), version="^1.0.0", remotes=[
        {"type": "streamable-http", "url": "https://127.0.0.1/mcp"}, {"type": "carrier-pigeon"}])
    del doc["description"]
    invalid = kontor("registry", "publish", str(write(tmp_path / "bad.json", doc)), "--as", PUBLISHER)
    assert invalid.exit_code == 1, invalid.output
    lines = invalid.stderr.splitlines()
    assert "is not a valid server.json: 4 problem(s)" in lines[0], invalid.stderr
    paths = {line.split(":")[0].strip() for line in lines[1:]}
    assert paths == {"$.version", "$.description", "$.remotes[0].url", "$.remotes[1].type"}, lines
    assert any("$.remotes[0].url:" in line and "[remote-url-local]" in line for line in lines)
    not_json = kontor("registry", "publish", str(write(tmp_path / "x.json", "{nope")), "--as", PUBLISHER)
    assert not_json.exit_code == 1 and "  $: " in not_json.stderr
    missing = kontor("registry", "publish", str(tmp_path / "absent.json"), "--as", PUBLISHER)
    assert missing.exit_code == 1 and "cannot read" in missing.stderr
    assert "no versions in_review" in kontor("registry", "review", "list").stdout

    # valid: the version's id and state
    good = kontor("registry", "publish", str(write(tmp_path / "server.json", server_json(net.url("/clean/mcp")))),
                  "--as", PUBLISHER)
    assert good.exit_code == 0, good.output
    version_id = re.search(r"^version ([0-9a-f-]{36})$", good.stdout, re.M).group(1)  # type: ignore[union-attr]
    assert "state in_review" in good.stdout.splitlines() and "risk low" in good.stdout
    # a failing review is stored too: its state and failing rules (exit 2 with --strict)
    poisoned = kontor("registry", "publish", str(write(tmp_path / "p.json", server_json(
        net.url("/override/mcp"), name="test.fixture/poisoned"))), "--publisher", "Fixture GmbH", "--strict")
    assert poisoned.exit_code == 2, poisoned.output
    assert "state checks_failed" in poisoned.stdout and "poisoning.instruction-override" in poisoned.stdout

    listed = kontor("registry", "review", "list")
    assert listed.exit_code == 0 and listed.stdout.splitlines()[0].split()[:4] == ["ID", "SERVER", "VERSION", "STATE"]
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == [version_id]
    shown = kontor("registry", "review", "show", version_id)
    assert shown.exit_code == 0 and "state in_review" in shown.stdout and "passed, risk low" in shown.stdout
    assert "tool lookup_product" in shown.stdout
    report = json.loads(kontor("registry", "review", "show", version_id, "--json").stdout)
    assert report["report"]["review"]["passed"] is True

    # the publisher cannot approve their own version; a reason is required; the reviewer approves
    own = kontor("registry", "review", "approve", version_id, "--reason", "mine", "--as", PUBLISHER)
    assert own.exit_code == 1 and "cannot approve it" in own.stderr
    no_reason = kontor("registry", "review", "approve", version_id)
    assert no_reason.exit_code != 0 and "--reason" in no_reason.output
    approved = kontor("registry", "review", "approve", version_id, "--reason", "evidence clean", "--as", REVIEWER)
    assert approved.exit_code == 0, approved.output
    assert approved.stdout.strip().endswith("is approved")

    # install / uninstall for a tenant (created with the gateway's own CLI)
    assert kontor("tenant", "create", "acme").exit_code == 0
    installed = kontor("registry", "install", "test.fixture/wholesale", "--tenant", "acme")
    assert installed.exit_code == 0, installed.output
    assert "installed wholesale 1.0.0 for tenant acme: enabled" in installed.stdout
    assert "scopes wholesale:read wholesale:write" in installed.stdout
    servers = kontor("server", "list", "acme")
    assert "wholesale" in servers.stdout and "enabled" in servers.stdout
    again = kontor("registry", "install", "wholesale", "--tenant", "acme")
    assert again.exit_code == 1 and "already installed" in again.stderr
    unknown = kontor("registry", "install", "nope/x", "--tenant", "acme")
    assert unknown.exit_code == 1 and "no server" in unknown.stderr
    removed = kontor("registry", "uninstall", "wholesale", "--tenant", "acme")
    assert removed.exit_code == 0 and "uninstalled wholesale for tenant acme" in removed.stdout
    assert kontor("registry", "uninstall", "wholesale", "--tenant", "acme").exit_code == 1

    # reject, with its reason
    second = kontor("registry", "publish", str(write(tmp_path / "s2.json", server_json(
        net.url("/clean/mcp"), version="1.1.0"))), "--as", PUBLISHER)
    second_id = re.search(r"^version (\S+)$", second.stdout, re.M).group(1)  # type: ignore[union-attr]
    rejected = kontor("registry", "review", "reject", second_id, "--reason", "not needed", "--as", REVIEWER)
    assert rejected.exit_code == 0 and rejected.stdout.strip().endswith("is rejected")
    assert "decision reject by reviewer@ops.example" in kontor("registry", "review", "show", second_id).stdout
    assert kontor("registry", "review", "show", "not-an-id").exit_code == 1
