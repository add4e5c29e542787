"""Every relative link in the project's Markdown resolves: the file exists, and an anchor names a heading there.

The docs cross-link a lot (README -> docs/*.md sections, model READMEs -> the logs' parts), and sections move: the
performance and model logs were split out of performance.md and models.md in one change. A link that breaks then
fails here instead of in a reader's browser. Anchors follow GitHub's rule for headings: lower case, punctuation
other than hyphens and underscores dropped, spaces to hyphens, repeats numbered -1, -2, ...
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Folders that hold no project docs: environments, runs, caches.
SKIP = {".venv", "runs", "node_modules", ".git", ".pytest_cache", ".ruff_cache"}
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def markdown_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.md") if not SKIP.intersection(p.relative_to(root).parts))


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of ``text``."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", text).splitlines():
        match = HEADING.match(line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match[1].strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def broken_links(path: Path) -> list[str]:
    """The relative links of one Markdown file that do not resolve, each with why."""
    broken = []
    for match in LINK.finditer(FENCE.sub("", path.read_text())):
        link = match[1]
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto: ...: not checked offline
            continue
        target, _, anchor = link.partition("#")
        resolved = (path.parent / target).resolve() if target else path
        if not resolved.exists():
            broken.append(f"{link}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text()):
            broken.append(f"{link}: no heading with that anchor")
    return broken


def test_every_relative_link_in_the_docs_resolves():
    files = markdown_files(ROOT)
    assert len(files) > 10, files  # README, docs/, the models' READMEs, reports ...
    problems = {str(p.relative_to(ROOT)): broken for p in files if (broken := broken_links(p))}
    assert not problems, problems


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "b.md").write_text("# Where it stands\n\n## Part by part\n\n## Part by part\n")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md#where-it-stands) [ok](b.md#part-by-part-1) [ok](#here) [web](https://example.org/x#y)\n"
        "# Here\n"
        "[gone](c.md) [moved](b.md#where-it-was) [third](b.md#part-by-part-2)\n"
        "```\n[in code](nowhere.md)\n```\n"
    )
    assert broken_links(page) == [
        "c.md: no such file",
        "b.md#where-it-was: no heading with that anchor",
        "b.md#part-by-part-2: no heading with that anchor",
    ]
