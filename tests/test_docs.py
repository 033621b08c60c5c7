"""The documentation: a short README, and links (anchors included) that resolve.

Fast and offline: reads README.md and docs/*.md only, starts no process, fetches no URL.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 250

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")


def markdown_files():
    return [README] + sorted(DOCS.glob("*.md"))


def prose_lines(path):
    """(line number, line) of a Markdown file, outside fenced code blocks."""
    inside = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            yield number, line


def headings(path):
    return [m.group(2) for _, line in prose_lines(path) if (m := HEADING.match(line))]


def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped except '-' and '_', spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    """Every anchor of a file, with GitHub's -1, -2 ... suffixes for repeated headings."""
    seen, result = {}, set()
    for heading in headings(path):
        base = slug(heading)
        count = seen.get(base, 0)
        result.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return result


def links(path):
    """(line number, target) of every Markdown link outside code."""
    for number, line in prose_lines(path):
        for m in LINK.finditer(INLINE_CODE.sub("", line)):
            yield number, m.group(1)


def test_docs_folder_exists():
    assert DOCS.is_dir(), f"{DOCS} is missing"
    assert list(DOCS.glob("*.md")), f"{DOCS} holds no Markdown page"


def test_readme_is_short():
    count = len(README.read_text(encoding="utf-8").splitlines())
    assert count <= MAX_README_LINES, (
        f"README.md has {count} lines, more than {MAX_README_LINES}: move the depth into a docs/ page"
    )


def test_every_relative_link_resolves():
    broken = []
    for path in markdown_files():
        where = path.relative_to(ROOT)
        for number, target in links(path):
            if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http(s), mailto: never fetched
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{where}:{number}: link '{target}': {file_part} does not exist")
                continue
            if anchor:
                if linked.suffix.lower() != ".md" or linked.is_dir():
                    broken.append(f"{where}:{number}: link '{target}': an anchor into a file that is not Markdown")
                elif anchor not in anchors(linked):
                    broken.append(
                        f"{where}:{number}: link '{target}': no heading of "
                        f"{linked.relative_to(ROOT)} has the anchor #{anchor}"
                    )
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_slug_follows_github():
    assert slug("Classify a new sample (predict.py)") == "classify-a-new-sample-predictpy"
    assert slug("Imbalanced classes (class_weighting)") == "imbalanced-classes-class_weighting"
    assert slug("Precision: the `auto` rule") == "precision-the-auto-rule"
    assert slug("Is it a taxon never seen? Novelty scores") == "is-it-a-taxon-never-seen-novelty-scores"
