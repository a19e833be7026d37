"""report.html: the same report as report.md in one self-contained file (plots embedded as
base64 PNG, a few lines of inline CSS, no external reference), for readers without a Markdown
viewer and for archiving one file per run.

It converts the subset of Markdown that `report.render_report` writes: headings, paragraphs,
bullet lists (one nesting level), pipe tables, images, `code` and **bold**.
"""

from __future__ import annotations

import base64
import html
import os
import re
from typing import List, Optional

from ..fileio import write_text

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222;
       line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; }
th { background: #f0f0f0; }
tr:nth-child(even) td { background: #fafafa; }
code { background: #f3f3f3; padding: 0 0.2rem; border-radius: 3px; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5rem 0; }
figure { margin: 1rem 0; }
figcaption { font-size: 0.85rem; color: #555; }
"""

_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)]+)\)$")


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)


def _cells(line: str) -> List[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(lines: List[str]) -> str:
    head = "".join(f"<th>{_inline(c)}</th>" for c in _cells(lines[0]))
    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in _cells(line)) + "</tr>\n" for line in lines[2:])
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def _image(alt: str, path: str, base_dir: str) -> str:
    """An <img> with the PNG inlined; a missing file is said in words (nothing is linked)."""
    full = os.path.join(base_dir, path)
    if not os.path.isfile(full):
        return f"<p><em>figure {html.escape(path)} is missing</em></p>"
    with open(full, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(alt)}</figcaption></figure>")


def _list(lines: List[str]) -> str:
    """Bullets ("- ") with one level of nesting ("  - ")."""
    out, nested = ["<ul>"], False
    for line in lines:
        inner = line.startswith("  ")
        if inner and not nested:
            out.append("<ul>")
        elif not inner and nested:
            out.append("</ul>")
        nested = inner
        out.append(f"<li>{_inline(line.strip()[2:])}</li>")
    out.append("</ul>" if not nested else "</ul></ul>")
    return "\n".join(out)


def markdown_to_html(markdown: str, base_dir: str = ".", title: Optional[str] = None) -> str:
    """A complete HTML document of the report's Markdown; images are read from `base_dir`."""
    blocks, lines, i = [], markdown.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        heading = re.match(r"^(#{1,6}) (.*)$", line)
        image = _IMAGE.match(line.strip())
        if heading:
            level = len(heading.group(1))
            blocks.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
            title = title or heading.group(2)
            i += 1
            continue
        if image:
            blocks.append(_image(image.group(1), image.group(2), base_dir))
            i += 1
            continue
        start = i
        if line.startswith("|"):
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            blocks.append(_table(lines[start:i]))
        elif line.startswith("- "):
            while i < len(lines) and (lines[i].startswith("- ") or lines[i].startswith("  - ")):
                i += 1
            blocks.append(_list(lines[start:i]))
        else:
            while i < len(lines) and lines[i].strip() and not re.match(r"^(#|\||- |!\[)", lines[i]):
                i += 1
            blocks.append(f"<p>{_inline(' '.join(l.strip() for l in lines[start:i]))}</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title or 'report')}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(blocks) + "\n</body>\n</html>\n")


def write_html(markdown: str, path: str, base_dir: Optional[str] = None) -> None:
    """Write report.html (atomically) from the report's Markdown; plots are read relative to
    `base_dir` (default: the folder of `path`)."""
    base_dir = base_dir if base_dir is not None else os.path.dirname(os.path.abspath(path))
    write_text(path, markdown_to_html(markdown, base_dir))
