"""The text of `--help`: every setting with its default and its meaning, the meaning read from the comments of the
defaults file itself (configfile.py, or the file PLANKTON_LAB_CONFIG names), so that it is written in one place.
Reads that file; writes nothing.

A setting's meaning is the block of comment lines directly above it (no blank line between), then its trailing
comment. A section heading (`# --- data ---`) is no part of a meaning: it groups the settings below it.
"""

import ast
import io
import shutil
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path

import lab

HEADING_MARK = "---"  # a comment that starts with it is a section heading: "# --- data ----"
MEANING_INDENT = " " * 6
WIDEST = 100  # wider lines are hard to read, even on a wide terminal


@dataclass
class Comment:
    text: str  # without the '#' and the surrounding blanks
    alone: bool  # nothing but blanks before it on its line
    heading: bool  # a section heading


@dataclass
class SettingNotes:
    section: str  # the heading above the setting; "" before the first heading
    meaning: str  # its comment block and trailing comment, one paragraph; "" when it has none


def _comments(source):
    """{line number: Comment} of every comment in the source, found by Python's own tokenizer (never a '#' inside a
    string)."""
    comments = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            row, column = token.start
            text = token.string.lstrip("#").strip()
            alone = not token.line[:column].strip()
            comments[row] = Comment(text, alone, alone and text.startswith(HEADING_MARK))
    return comments


def _assigned_names(node):
    """The names a top-level statement sets: `a = 1`, `a = b = 1`, `a: int = 1`."""
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def read_setting_notes(path):
    """{setting name: SettingNotes} of every top-level assignment in the Python file at `path`."""
    with tokenize.open(path) as file:  # honours the file's encoding declaration, as Python does
        source = file.read()
    comments = _comments(source)
    headings = sorted((row, c.text.strip("- ")) for row, c in comments.items() if c.heading)
    notes = {}
    for node in ast.parse(source, filename=str(path)).body:
        names = _assigned_names(node)
        if not names:
            continue
        above = []
        row = node.lineno - 1
        while row in comments and comments[row].alone and not comments[row].heading:
            above.insert(0, comments[row].text)
            row -= 1
        trailing = [
            comments[r].text for r in range(node.lineno, node.end_lineno + 1) if r in comments and not comments[r].alone
        ]
        meaning = " ".join(t for t in above + trailing if t)
        section = next((text for line, text in reversed(headings) if line < node.lineno), "")
        for name in names:
            if meaning or name not in notes:  # a later bare re-assignment keeps the earlier meaning
                notes[name] = SettingNotes(section, meaning)
    return notes


def help_text(defaults, path, describe=""):
    """`--help`'s text: the script's description, then each setting of `defaults` ({name: value}, in the file's
    order) as --name=default with its meaning from the defaults file at `path` beneath, wrapped, under its section
    heading."""
    width = min(shutil.get_terminal_size((WIDEST, 24)).columns, WIDEST)
    notes = read_setting_notes(path)
    path = Path(path).resolve()
    shown_path = path.relative_to(lab.ROOT) if path.is_relative_to(lab.ROOT) else path
    title = (
        f"Settings (defaults and their meaning from {shown_path}; override with --name=value, values as Python "
        f"literals):"
    )
    lines = [(describe or "").rstrip(), "", *textwrap.wrap(title, width=width)]
    section = None
    for name, value in defaults.items():
        note = notes.get(name, SettingNotes("", ""))
        if note.section != section:
            section = note.section
            lines += ["", f"{section}:"] if section else [""]
        lines.append(f"  --{name}={value!r}")
        lines += textwrap.wrap(
            note.meaning,
            width=width,
            initial_indent=MEANING_INDENT,
            subsequent_indent=MEANING_INDENT,
            break_long_words=False,
            break_on_hyphens=False,
        )
    return "\n".join(lines)
