"""Tenant ids and tenant paths: user input can never leave its tenant's folder."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from kontor.paths import TenantPaths, UnsafePath, safe_join, safe_name
from kontor.settings import Settings
from kontor.tenancy import InvalidTenant, NoTenant, current_tenant, tenant_context, validate_tenant


@pytest.mark.parametrize("bad", ["", "../x", "a/b", "Acme", "acme\n", "-acme", "acme-", "a" * 64, "ac me", "äcme"])
def test_invalid_tenant_ids_are_refused(bad: str):
    with pytest.raises(InvalidTenant):
        validate_tenant(bad)


def test_tenant_context_is_scoped():
    with pytest.raises(NoTenant):
        current_tenant()
    with tenant_context("acme"):
        assert current_tenant() == "acme"
        with tenant_context("globex"):
            assert current_tenant() == "globex"
        assert current_tenant() == "acme"


def test_tenant_paths_layout(tmp_path: Path):
    paths = TenantPaths(tmp_path, "acme").ensure()
    assert paths.root == tmp_path / "tenants" / "acme"
    for name in ("raw", "lance", "delta", "jobs"):
        assert (paths.root / name).is_dir()
    with pytest.raises(InvalidTenant):
        TenantPaths(tmp_path, "../other")


@pytest.mark.parametrize("part", ["../b", "a/../../b", "/etc/passwd", "..\\..\\b", "x\x00y"])
def test_safe_join_refuses_escapes(tmp_path: Path, part: str):
    with pytest.raises(UnsafePath):
        safe_join(tmp_path, part)


def test_safe_join_refuses_symlink_escape(tmp_path: Path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePath):
        safe_join(tmp_path / "base", "link/secret")


def test_safe_name_keeps_only_the_leaf():
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("C:\\Users\\x\\Angebot Größe.pdf") == "Angebot Größe.pdf"
    assert safe_name("..") == "unnamed"


def test_data_root_default_is_not_under_tmp(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("KONTOR_DATA_ROOT", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    root = Settings().data_root
    assert root.name == "kontor" and root.parent.name == "share"
    assert Path(tempfile.gettempdir()) not in root.parents


def test_import_roots_from_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KONTOR_IMPORT_ROOTS", "/srv/a:/srv/b")
    assert Settings().import_roots == [Path("/srv/a"), Path("/srv/b")]
