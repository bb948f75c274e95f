"""Per-tenant storage layout under the data root, and safe path joins."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kontor.tenancy import validate_tenant

TENANT_DIRS = ("raw", "lance", "delta", "jobs")


class UnsafePath(ValueError):
    pass


def safe_join(base: Path, *parts: str) -> Path:
    """Join user-supplied ``parts`` below ``base``; refuse anything that would leave it."""
    base = base.resolve()
    for part in parts:
        if "\x00" in part:
            raise UnsafePath("path contains a NUL byte")
        pure = PurePosixPath(part.replace("\\", "/"))
        if pure.is_absolute() or any(p == ".." for p in pure.parts):
            raise UnsafePath(f"path {part!r} leaves its folder")
    candidate = base.joinpath(*parts).resolve()
    if candidate != base and base not in candidate.parents:
        raise UnsafePath(f"path {'/'.join(parts)!r} leaves its folder")
    return candidate


def safe_name(name: str, max_len: int = 200) -> str:
    """A file name reduced to its last component, without separators or control characters."""
    leaf = name.replace("\\", "/").rsplit("/", 1)[-1]
    leaf = "".join(ch for ch in leaf if ch.isprintable() and ch not in '<>:"|?*')
    leaf = leaf.strip(" .")
    return (leaf or "unnamed")[:max_len]


@dataclass(frozen=True)
class TenantPaths:
    data_root: Path
    tenant: str

    def __post_init__(self) -> None:
        validate_tenant(self.tenant)

    @property
    def root(self) -> Path:
        return self.data_root / "tenants" / self.tenant

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def lance(self) -> Path:
        return self.root / "lance"

    @property
    def delta(self) -> Path:
        return self.root / "delta"

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    def ensure(self) -> TenantPaths:
        for name in TENANT_DIRS:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        return self

    def delta_table(self, name: str) -> Path:
        return safe_join(self.delta, name)
