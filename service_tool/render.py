"""The conformance statement's document blocks, and their rendering as Markdown or as an HTML page.

`statement/` builds the statement once as a list of blocks; both renderers walk that one
list, so the two formats always hold the same headings, paragraphs and tables.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Heading:
    level: int  # 1 is the title
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    caption: str  # names the table, as the conformance statement's "Table: ..." titles do
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class BulletList:
    items: list[str]


@dataclass(frozen=True)
class Contents:
    """Where the table of contents goes: a link to every heading of level 2 and 3."""


Block = Heading | Paragraph | Table | BulletList | Contents
CONTENTS_DEPTH = 3


def anchors(blocks: list[Block]) -> dict[int, str]:
    """Block index -> anchor of each heading, as GitHub derives them from the text (lower case,
    punctuation dropped, spaces as hyphens, "-1", "-2" appended to repeats), so the Markdown
    contents' links work where the statement is read on GitHub and in the HTML page alike."""
    seen: dict[str, int] = {}
    out = {}
    for i, block in enumerate(blocks):
        if isinstance(block, Heading):
            slug = re.sub(r"[^\w\- ]", "", block.text.lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            out[i] = f"{slug}-{count}" if count else slug
    return out


def _contents(blocks: list[Block], ids: dict[int, str]) -> list[tuple[int, str, str]]:
    """(level, text, anchor) of the headings the contents lists."""
    return [(b.level, b.text, ids[i]) for i, b in enumerate(blocks)
            if isinstance(b, Heading) and 2 <= b.level <= CONTENTS_DEPTH]


# --- Markdown ---------------------------------------------------------------------------------

# Characters with a meaning in (GitHub-flavoured) Markdown. "_" is escaped only where it could
# open or close emphasis: between two letters or digits it cannot, and AE titles and
# configuration keys (EX_STORE_SCP, storage_scp.port) stay readable.
_MARKDOWN_SPECIAL = re.compile(r"[\\`*\[\]<>|&#]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def _md(text: str) -> str:
    return _MARKDOWN_SPECIAL.sub(lambda m: "\\" + m.group(0), " ".join(text.split()))


def to_markdown(blocks: list[Block]) -> str:
    ids = anchors(blocks)
    parts = []
    for i, block in enumerate(blocks):
        if isinstance(block, Heading):
            parts.append("#" * block.level + " " + _md(block.text))
        elif isinstance(block, Paragraph):
            parts.append(_md(block.text))
        elif isinstance(block, Table):
            lines = [f"Table: {_md(block.caption)}", "",
                     "| " + " | ".join(map(_md, block.header)) + " |",
                     "|" + "---|" * len(block.header)]
            lines += ["| " + " | ".join(map(_md, row)) + " |" for row in block.rows]
            parts.append("\n".join(lines))
        elif isinstance(block, BulletList):
            parts.append("\n".join("- " + _md(item) for item in block.items))
        else:
            parts.append("\n".join("  " * (level - 2) + f"- [{_md(text)}](#{anchor})"
                                   for level, text, anchor in _contents(blocks, ids)))
    return "\n\n".join(parts) + "\n"


# --- HTML -------------------------------------------------------------------------------------

_STYLE = """
body { font-family: sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; line-height: 1.4; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
caption { text-align: left; font-weight: bold; padding-bottom: 0.3em; }
th, td { border: 1px solid #999; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #eee; }
nav li.level3 { margin-left: 1.5em; }
"""


def _h(text: str) -> str:
    return html.escape(text, quote=True)


def to_html(blocks: list[Block]) -> str:
    """A complete page. Void elements are self-closed, so the page is also well-formed XML."""
    ids = anchors(blocks)
    title = next((b.text for b in blocks if isinstance(b, Heading) and b.level == 1), "")
    body = []
    for i, block in enumerate(blocks):
        if isinstance(block, Heading):
            body.append(f'<h{block.level} id="{_h(ids[i])}">{_h(block.text)}</h{block.level}>')
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_h(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_h(cell)}</th>" for cell in block.header)
            rows = "\n".join("<tr>" + "".join(f"<td>{_h(cell)}</td>" for cell in row) + "</tr>"
                             for row in block.rows)
            body.append(f"<table>\n<caption>{_h(block.caption)}</caption>\n<thead><tr>{head}</tr></thead>\n"
                        f"<tbody>\n{rows}\n</tbody>\n</table>")
        elif isinstance(block, BulletList):
            body.append("<ul>\n" + "\n".join(f"<li>{_h(item)}</li>" for item in block.items) + "\n</ul>")
        else:
            links = "\n".join(f'<li class="level{level}"><a href="#{_h(anchor)}">{_h(text)}</a></li>'
                              for level, text, anchor in _contents(blocks, ids))
            body.append(f"<nav>\n<ul>\n{links}\n</ul>\n</nav>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n"
            f"<title>{_h(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
