"""The project's documents hold together: every `docs/protocol.md#anchor` cited in the code names a
section that exists, and the protocol document's own links resolve."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOCOL = ROOT / "docs" / "protocol.md"
CITATION = re.compile(r"docs/protocol\.md#([A-Za-z0-9_-]+)")
INTERNAL_LINK = re.compile(r"\]\(#([^)]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$")
FENCE = "```"


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading's anchor, with GitHub's `-1`, `-2` suffixes for repeated headings."""
    seen: Counter[str] = Counter()
    found: set[str] = set()
    in_fence = False
    for line in markdown.splitlines():
        if line.lstrip().startswith(FENCE):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.match(line)
        if match is None:
            continue
        slug = github_slug(match.group(1))
        found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return found


def citations() -> list[tuple[str, int, str]]:
    """(file, line, anchor) of every `docs/protocol.md#anchor` in src/, tests/ and the README."""
    files = [*sorted((ROOT / "src").rglob("*.py")), *sorted((ROOT / "tests").rglob("*.py"))]
    files.append(ROOT / "README.md")
    files.remove(Path(__file__).resolve())  # this file names the pattern, it cites nothing
    found = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for match in CITATION.finditer(line):
                found.append((str(path.relative_to(ROOT)), number, match.group(1)))
    return found


def test_github_slugs_follow_githubs_rules() -> None:
    assert github_slug("Image Service (CAS)") == "image-service-cas"
    assert github_slug("Spec json") == "spec-json"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_every_cited_anchor_exists() -> None:
    known = anchors(PROTOCOL.read_text(encoding="utf-8"))
    broken = [
        f"{path}:{line}: #{anchor}" for path, line, anchor in citations() if anchor not in known
    ]
    assert not broken, "citations of docs/protocol.md sections that do not exist:\n" + "\n".join(
        broken
    )


def test_the_protocol_documents_own_links_resolve() -> None:
    text = PROTOCOL.read_text(encoding="utf-8")
    known = anchors(text)
    broken = sorted({anchor for anchor in INTERNAL_LINK.findall(text) if anchor not in known})
    assert not broken, f"links to sections docs/protocol.md does not have: {broken}"


def test_no_section_sign_citation_is_left_in_src() -> None:
    # The numbered sections (§x.y) of a reference document that is not in the repository are
    # cited as docs/protocol.md#anchor instead; a new § citation would point nowhere again.
    left = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "src").rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if "§" in line
    ]
    assert not left, "§ citations left in src/ (cite docs/protocol.md#anchor):\n" + "\n".join(left)
