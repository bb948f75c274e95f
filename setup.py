"""Maps the design card's top-level folders into the single ``kontor`` import namespace.

``servers/lakehouse`` becomes ``kontor.servers.lakehouse``, ``gateway`` becomes
``kontor.gateway`` and so on, so the repository layout shows the architecture while the
import names cannot collide with other distributions.
"""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent
FOLDERS = {"kontor": "kontor", "kontor.servers": "servers", "kontor.gateway": "gateway",
           "kontor.host": "host", "kontor.registry": "registry"}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for name, folder in FOLDERS.items():
        base = ROOT / folder
        if not (base / "__init__.py").exists():
            continue
        package_dir[name] = folder
        for init in sorted(base.rglob("__init__.py")):
            rel = init.parent.relative_to(base)
            if any(part.startswith((".", "__")) for part in rel.parts):
                continue
            packages.append(".".join([name, *rel.parts]) if rel.parts else name)
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _packages()

setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    # The registry ships the MIT notice of its bundled server.json schema next to the schema.
    package_data={"": ["*.json", "*.txt", "*.html", "*.sql"], "kontor.registry.schema": ["NOTICE.md"],
                  # The web chat's templates and its script, stylesheet and icon (kontor.host.web).
                  "kontor.host": ["templates/*.html", "static/*.js", "static/*.css", "static/*.svg"],
                  # Alembic's template for new revisions (the revisions themselves are modules).
                  "kontor.registry.migrations": ["script.py.mako"],
                  # The registry pages' script and stylesheet (their templates are *.html of a package).
                  "kontor.registry": ["static/*.js", "static/*.css"]},
    include_package_data=True,
)
