"""docs/METHODS.md: every section the product cites exists, and no citation points outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ROOT / "docs" / "METHODS.md"
PRODUCT_DIRS = ("fedveil", "server", "client", "privacy", "distill", "dashboard", "bench")
HEADING = re.compile(r"^#{2,4}\s+§(\d+(?:\.\d+)*)\b", re.MULTILINE)
# "METHODS.md §3", "METHODS.md §3–§5", "METHODS.md §1, §7", "METHODS.md §3/§5": every § of the run counts.
CITATION = re.compile(r"METHODS\.md\s+(§\d+(?:\.\d+)*(?:\s*(?:,|/|–|-|and)\s*§\d+(?:\.\d+)*)*)")
SECTION = re.compile(r"§(\d+(?:\.\d+)*)")


def _product_files() -> list[Path]:
    files = [p for d in PRODUCT_DIRS for p in sorted((ROOT / d).rglob("*.py"))]
    return files + [ROOT / "README.md", *sorted((ROOT / "configs").glob("*.toml"))]


def _sections() -> set[str]:
    return set(HEADING.findall(METHODS.read_text(encoding="utf-8")))


def test_methods_has_every_spec_section() -> None:
    assert {str(n) for n in range(1, 9)} <= _sections()


def test_every_cited_section_exists() -> None:
    sections = _sections()
    cited: dict[str, list[str]] = {}
    for path in _product_files():
        for run in CITATION.findall(path.read_text(encoding="utf-8")):
            for number in SECTION.findall(run):
                cited.setdefault(number, []).append(str(path.relative_to(ROOT)))
    assert len(cited) >= 8, "the citation scan found almost nothing; is the pattern still right?"
    missing = {n: sorted(set(f))[:3] for n, f in cited.items() if n not in sections}
    assert not missing, f"cited sections missing from docs/METHODS.md: {missing}"


def test_no_citation_of_the_external_spec() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in _product_files() if "ALGORITHMS.md" in p.read_text(encoding="utf-8")]
    assert not offenders, f"cite docs/METHODS.md instead of ALGORITHMS.md in: {offenders}"


def test_modules_named_in_methods_exist() -> None:
    text = METHODS.read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:[\w.-]+/)+[\w.-]+\.(?:py|toml|sh))`", text))
    assert named, "docs/METHODS.md names no module"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"docs/METHODS.md names files that do not exist: {missing}"


def test_readme_configuration_reference_is_the_generated_one() -> None:
    """README's table is `fedveil config --reference` verbatim: a default changed in code shows up here."""
    from fedveil.config import reference_markdown
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = [line for line in reference_markdown().splitlines() if line.startswith("| `")]
    assert rows and [r for r in rows if r not in readme] == []
