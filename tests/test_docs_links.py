"""Every relative link of README.md and docs/ leads somewhere: the file exists and, with `#anchor`, a heading of
that page has that anchor (GitHub's rule); and every page under docs/ can be reached from the README or the map."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text without fenced blocks and inline code, where brackets are code, not links or headings."""
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (but - and _), each space a hyphen."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip())  # code spans keep their text
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # and links theirs
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    text = re.sub(r"^(```|~~~).*?^\1", "", page.read_text(), flags=re.S | re.M)
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        base = slug(heading)
        out.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return out


def links(page: Path) -> list[str]:
    return [t for t in LINK.findall(prose(page.read_text())) if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def broken(page: Path) -> list[str]:
    """The links of `page` whose file or anchor does not exist, each with the reason."""
    problems = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            problems.append(f"{target}: no such file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            problems.append(f"{target}: {dest.name} has no heading with anchor #{anchor}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_exists(page):
    assert broken(page) == []


def test_every_docs_page_is_linked_from_the_readme_or_the_map():
    reached = set()
    for page in (ROOT / "README.md", ROOT / "docs" / "index.md"):
        reached |= {(page.parent / t.partition("#")[0]).resolve() for t in links(page) if t.partition("#")[0]}
    missing = [p.relative_to(ROOT).as_posix() for p in PAGES if p.name != "README.md" and p not in reached]
    assert missing == [], f"not linked from README.md or docs/index.md: {missing}"


def test_the_checker_finds_a_broken_file_a_broken_anchor_and_github_anchors(tmp_path):
    (tmp_path / "a.md").write_text(
        "# Title\n\n## What `make run` shows\n\n## The field's benchmarks: CoIN, UCIT\n\n## Title\n\n"
        "[ok](#what-make-run-shows) [ok](#the-fields-benchmarks-coin-ucit) [ok](b.md#title-1) [ok](#title-1)\n"
        "[bad](c.md) [bad](b.md#nowhere) `[code](not-a-link.md)` [web](https://example.org/x.md)\n"
        "```bash\n# not a heading [nor](a-link.md)\n```\n"
    )
    (tmp_path / "b.md").write_text("# Title\n\n# Title\n")
    assert anchors(tmp_path / "a.md") == {"title", "what-make-run-shows", "the-fields-benchmarks-coin-ucit", "title-1"}
    assert [p.split(":")[0] for p in broken(tmp_path / "a.md")] == ["c.md", "b.md#nowhere"]
