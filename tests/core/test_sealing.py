"""Sealed values open only with their key and their context; the key file is private and shared."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from kontor.sealing import SealedBox, Undecryptable


def test_a_sealed_value_opens_only_with_its_key_and_context(tmp_path: Path) -> None:
    box = SealedBox.from_file(tmp_path / "keys" / "k")
    token = box.encrypt("geheim", "tenant-a/server/api-key")
    assert "geheim" not in token and box.decrypt(token, "tenant-a/server/api-key") == "geheim"
    with pytest.raises(Undecryptable):
        box.decrypt(token, "tenant-b/server/api-key")  # copied to another row
    with pytest.raises(Undecryptable):
        SealedBox.generate().decrypt(token, "tenant-a/server/api-key")  # another key
    with pytest.raises(Undecryptable):
        box.decrypt("not base64!", "tenant-a/server/api-key")
    assert box.key_id in repr(box) and "geheim" not in repr(box)


def test_the_key_file_is_created_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "k"
    first, second = SealedBox.from_file(path), SealedBox.from_file(path)
    assert first.key_id == second.key_id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert second.decrypt(first.encrypt("x", "c"), "c") == "x"
    with pytest.raises(ValueError):
        SealedBox(b"short")
