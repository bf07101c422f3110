"""The README stays a user's first page, every relative link in the docs resolves, and the diagram draws."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 250

# [text](target) and ![alt](target); the target ends at whitespace or ')'.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
# Changelog prose that belongs to git and the issues, not to the docs.
HISTORY = re.compile(
    r"since then|re-measured|two changes today|the table before it|earlier runs|with today's code",
    re.IGNORECASE,
)


def readme_lines() -> list[str]:
    return README.read_text(encoding="utf-8").splitlines()


def test_readme_is_short():
    assert len(readme_lines()) <= MAX_README_LINES


def test_readme_starts_with_the_two_setup_lines():
    # .ci/run executes line 2 with its leading spaces stripped, and refuses it without "pytest".
    first, second, third = readme_lines()[:3]
    assert first.startswith("    ") and not first.startswith("     ")
    assert "pip install" in first and "pretrain.py" in first and "generate.py" in first
    assert second.startswith("    ") and not second.startswith("     ")
    assert "pytest" in second and "pip install" in second
    assert third == ""


def test_quick_start_is_on_the_first_screen():
    head = "\n".join(readme_lines()[:60])
    for command in ("pretrain.py", "generate.py", "eval/compare.py", "eval/perplexity.py"):
        assert command in head, f"{command} is not in the README's first 60 lines"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found, in_code = set(), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and (match := HEADING.match(line)):
            found.add(slug(match.group(1)))
    return found


def relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(doc: Path):
    links = relative_links(doc)
    assert links or doc != README, "the README links to nothing"
    for link in links:
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        assert path.exists(), f"{doc.name}: link {link!r} points at a missing file"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{doc.name}: link {link!r}: no heading #{anchor} in {path.name}"


@pytest.mark.parametrize("doc", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_history_prose(doc: Path):
    found = HISTORY.findall(doc.read_text(encoding="utf-8"))
    assert not found, f"{doc.name} reads like a changelog: {found}"


def test_diagram_script_draws_a_png(tmp_path: Path):
    out = tmp_path / "architecture.png"
    subprocess.run(
        [sys.executable, str(ROOT / "docs" / "architecture.py"), str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000
