"""The Markdown of a report as one self-contained HTML page (standard library only).

The reports (``selectivekit evaluate``/``compare``, ``python -m reference_models reproduce``) write
``report.md`` in a small subset of Markdown: headings, paragraphs, ``- `` lists, ``> `` quotes, pipe tables,
code fences, ``![caption](file.png)`` figures and ``**bold**``, ``*italic*``, `` `code` `` spans.
``markdown_to_html`` renders exactly that subset. Every piece
of text is escaped; the figures are read from the report's folder and inlined as ``data:image/png;base64``
URIs; the style sheet is inline. The page loads nothing from anywhere, so it can be sent by e-mail.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

__all__ = ["markdown_to_html"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)")
_HEADING = re.compile(r"(?P<hashes>#{1,6})\s+(?P<text>.*)")
_CODE_SPAN = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #1a1a1a; background: #fff; margin: 0; line-height: 1.45; }
main { max-width: 62rem; margin: 0 auto; padding: 1.5rem 1.25rem 3rem; }
h1 { font-size: 1.6rem; margin: 0 0 1rem; } h2 { font-size: 1.25rem; margin: 2rem 0 0.6rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #c8c8c8; padding: 0.3rem 0.6rem; }
th { background: #f0f2f5; } td[style*="right"] { white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafafa; }
blockquote { margin: 0.8rem 0; padding: 0.5rem 1rem; border-left: 4px solid #d08c00; background: #fff7e6; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.92em; background: #f3f3f3;
       padding: 0 0.2em; border-radius: 3px; }
pre { background: #f6f8fa; padding: 0.7rem; overflow-x: auto; } pre code { background: none; padding: 0; }
figure { margin: 1.2rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #e0e0e0; }
figcaption { font-size: 0.9rem; color: #555; }
.missing { color: #a00; }
"""


def _inline(text: str) -> str:
    """One line of Markdown text as escaped HTML with ``code``, **bold** and *italic* spans."""
    out = []
    pieces = _CODE_SPAN.split(text)  # odd indices are the insides of code spans
    for i, piece in enumerate(pieces):
        if i % 2:
            out.append(f"<code>{html.escape(piece)}</code>")
            continue
        escaped = html.escape(piece.replace("\\|", "|"))
        escaped = _BOLD.sub(r"<strong>\1</strong>", escaped)
        out.append(_ITALIC.sub(r"<em>\1</em>", escaped))
    return "".join(out)


def _cells(line: str) -> list[str]:
    row = line.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    return [cell.strip() for cell in _CELL_SPLIT.split(row)]


def _alignment(cell: str) -> str | None:
    cell = cell.strip()
    if cell.startswith(":") and cell.endswith(":"):
        return "center"
    if cell.endswith(":"):
        return "right"
    if cell.startswith(":"):
        return "left"
    return None


def _is_separator(line: str) -> bool:
    return all(re.fullmatch(r":?-{1,}:?", cell) for cell in _cells(line))


def _table(rows: list[str]) -> str:
    header = _cells(rows[0])
    body = rows[1:]
    aligns: list[str | None] = [None] * len(header)
    if body and _is_separator(body[0]):
        aligns = [_alignment(c) for c in _cells(body[0])]
        body = body[1:]

    def cell(tag: str, text: str, j: int) -> str:
        align = aligns[j] if j < len(aligns) else None
        style = f' style="text-align: {align}"' if align else ""
        return f"<{tag}{style}>{_inline(text)}</{tag}>"

    lines = [
        "<table>",
        "<thead><tr>" + "".join(cell("th", c, j) for j, c in enumerate(header)) + "</tr></thead>",
    ]
    lines.append("<tbody>")
    for row in body:
        lines.append("<tr>" + "".join(cell("td", c, j) for j, c in enumerate(_cells(row))) + "</tr>")
    lines += ["</tbody>", "</table>"]
    return "\n".join(lines)


def _figure(alt: str, src: str, folder: Path | None) -> str:
    caption = _inline(alt)
    data = None
    if folder is not None and "://" not in src and not src.startswith(("/", "\\")):
        base = folder.resolve()
        path = (base / src).resolve()
        if path.parent == base or base in path.parents:
            try:
                data = path.read_bytes()
            except OSError:
                data = None
    if data is None or not data.startswith(_PNG_SIGNATURE):
        return f'<p class="missing">[figure {caption}: {html.escape(src)} not found]</p>'
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(alt, quote=True)}" src="{uri}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _starts_block(line: str) -> bool:
    stripped = line.strip()
    return (
        not stripped
        or stripped.startswith(("```", "|", "- ", ">"))
        or _HEADING.fullmatch(stripped) is not None
        or _IMAGE.fullmatch(stripped) is not None
    )


def markdown_to_html(markdown: str, folder: Path | None = None, *, title: str | None = None) -> str:
    """A whole HTML document for the Markdown of a report.

    Parameters
    ----------
    markdown : str
        The text of ``report.md`` (the subset described in the module docstring).
    folder : pathlib.Path, optional
        Where the figures named by ``![caption](file.png)`` are read (the report's folder). A figure that
        is not a PNG file inside this folder is replaced by a line saying so.
    title : str, optional
        The page title; by default the first heading.

    Returns
    -------
    str
        The document: inline style, figures as ``data:`` URIs, no reference to any other file or address.
    """
    lines = markdown.splitlines()
    body: list[str] = []
    first_heading = None
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            i += 1
        elif stripped.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            body.append("<pre><code>" + html.escape("\n".join(lines[i + 1 : j])) + "</code></pre>")
            i = j + 1
        elif (match := _HEADING.fullmatch(stripped)) is not None:
            level = len(match.group("hashes"))
            first_heading = first_heading or match.group("text")
            body.append(f"<h{level}>{_inline(match.group('text'))}</h{level}>")
            i += 1
        elif stripped.startswith("|"):
            j = i
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            body.append(_table(lines[i:j]))
            i = j
        elif stripped.startswith("- "):
            items = []
            while i < len(lines) and lines[i].strip().startswith("- "):
                items.append(f"<li>{_inline(lines[i].strip()[2:])}</li>")
                i += 1
            body.append("<ul>\n" + "\n".join(items) + "\n</ul>")
        elif stripped.startswith(">"):
            quoted = []
            while i < len(lines) and lines[i].strip().startswith(">"):
                quoted.append(lines[i].strip()[1:].strip())
                i += 1
            body.append(f"<blockquote><p>{_inline(' '.join(quoted))}</p></blockquote>")
        elif (image := _IMAGE.fullmatch(stripped)) is not None:
            body.append(_figure(image.group("alt"), image.group("src"), folder))
            i += 1
        else:
            paragraph = [stripped]
            i += 1
            while i < len(lines) and not _starts_block(lines[i]):
                paragraph.append(lines[i].strip())
                i += 1
            body.append(f"<p>{_inline(' '.join(paragraph))}</p>")
    page_title = title if title is not None else (first_heading or "report")
    page_title = page_title.replace("**", "").replace("`", "")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(page_title)}</title>",
            f"<style>{_STYLE}</style>",
            "</head>",
            "<body>",
            "<main>",
            *body,
            "</main>",
            "</body>",
            "</html>",
            "",
        ]
    )
