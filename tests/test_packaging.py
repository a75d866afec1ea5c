"""pyproject.toml declares every third-party package the code imports, with current licence metadata."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCAL = {"fedveil", "server", "client", "privacy", "distill", "dashboard", "bench", "tests", "deploy"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {_norm(re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0]) for r in reqs}


def _imported() -> dict[str, str]:
    """Top-level third-party modules imported anywhere in the repository -> first file importing it."""
    found: dict[str, str] = {}
    for path in sorted(ROOT.glob("*/**/*.py")):
        if path.relative_to(ROOT).parts[0] not in LOCAL:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in LOCAL:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared() -> None:
    dists = importlib.metadata.packages_distributions()
    declared = _declared()
    missing = []
    for module, where in _imported().items():
        candidates = {_norm(d) for d in dists.get(module, [module])}
        if not candidates & declared:
            missing.append(f"{module} ({where}; distribution {sorted(candidates)})")
    assert missing == [], "imported but not declared in pyproject.toml: " + ", ".join(missing)


def test_postgres_extra_and_licence_file() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    assert any(r.startswith("psycopg[binary]") for r in project["optional-dependencies"]["postgres"])
    # Flower's FAB format 1 requires the table form; an SPDX string makes every `flwr run` fail.
    assert project["license"] == {"file": "LICENSE"}
    assert "Apache License 2.0" in (ROOT / "LICENSE").read_text()


def test_flower_builds_the_app() -> None:
    """The checkout is a valid Flower App: Flower's own FAB builder accepts it (what `flwr run` does first)."""
    from flwr.cli.build import build_fab_from_disk

    fab = build_fab_from_disk(ROOT)
    import io
    import zipfile

    names = zipfile.ZipFile(io.BytesIO(fab)).namelist()
    assert "pyproject.toml" in names and "server/app.py" in names and "client/app.py" in names
