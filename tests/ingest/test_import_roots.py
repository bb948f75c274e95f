"""Import roots are per tenant behind the gateway: one tenant can never import another's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from kontor.servers.ingest.pipeline import PathNotAllowed, check_import_roots, tenant_import_roots


def test_tenant_placeholder_gives_each_tenant_its_own_root(tmp_path: Path) -> None:
    roots = [tmp_path / "imports" / "{tenant}"]
    (tmp_path / "imports" / "acme").mkdir(parents=True)
    (tmp_path / "imports" / "globex").mkdir(parents=True)
    acme = tenant_import_roots(roots, "acme", shared_allowed=False)
    assert acme == [tmp_path / "imports" / "acme"]
    assert check_import_roots([str(tmp_path / "imports" / "acme" / "a.txt")], acme)
    with pytest.raises(PathNotAllowed):
        check_import_roots([str(tmp_path / "imports" / "globex" / "b.txt")], acme)
    with pytest.raises(PathNotAllowed):  # no escape through ..
        check_import_roots([str(tmp_path / "imports" / "acme" / ".." / "globex" / "b.txt")], acme)


def test_shared_roots_count_only_for_a_single_tenant_server(tmp_path: Path) -> None:
    roots = [tmp_path / "shared"]
    assert tenant_import_roots(roots, "acme", shared_allowed=True) == roots
    assert tenant_import_roots(roots, "acme", shared_allowed=False) == []
    with pytest.raises(PathNotAllowed, match="none configured for this tenant"):
        check_import_roots([str(tmp_path / "shared" / "a.txt")], [])
