"""The documentation a user reads: every relative link in it leads to a file of the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")  # [text](target) and ![alt](target)


def doc_files() -> list[Path]:
    """The README, the CHANGELOG, docs/, the generated result markdown and the shipped weights' README."""
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md")),
            *sorted((ROOT / "experiments" / "results").rglob("*.md")), ROOT / "haq" / "models" / "weights" / "README.md"]


def broken_links(path: Path) -> list[str]:
    """The relative link targets in `path` (markdown) that name no file or folder beside it."""
    targets = (m.group(1) for m in LINK.finditer(path.read_text()))
    return [t for t in targets if not re.match(r"[a-z]+:", t) and not (path.parent / t).exists()]


def test_every_relative_link_in_the_docs_leads_to_a_file(tmp_path):
    assert len(doc_files()) > 20 and (ROOT / "docs" / "findings.md") in doc_files()
    broken = {str(p.relative_to(ROOT)): b for p in doc_files() if (b := broken_links(p))}
    assert not broken, f"links to nothing: {broken}"
    # the check itself: a link to a missing file is caught, a web address and an anchor are not
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("x")
    page.write_text("[a](there.md) [b](missing.md#part) ![c](https://example.org/x.png) [d](there.md#top)")
    assert broken_links(page) == ["missing.md"]
