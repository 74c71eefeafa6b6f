"""The Markdown of a report as one self-contained HTML page, rendered by Python-Markdown.

The reports (``selectivekit evaluate``/``compare``, ``python -m reference_models reproduce``) write
``report.md``; ``markdown_to_html`` renders it with Python-Markdown's ``tables`` and ``fenced_code``
extensions. The text of a report is never HTML, so raw HTML, character entities and links are turned off:
every piece of text is escaped, and a name such as ``<b>base</b>`` is shown as typed. The figures are read
from the report's folder and inlined as ``data:image/png;base64`` URIs; the style sheet is inline. The page
loads nothing from anywhere, so it can be sent by e-mail.
"""

from __future__ import annotations

import base64
import html
import re
import xml.etree.ElementTree as etree
from pathlib import Path
from typing import Any

__all__ = ["markdown_to_html"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_HEADING = re.compile(r"^\s*#{1,6}\s+(?P<text>.*?)\s*$", flags=re.MULTILINE)
# Python-Markdown's names for what a report never means: raw HTML, entities, links and references (the
# image syntax stays: ``![caption](file.png)`` is a figure)
_OFF_INLINE = ("html", "entity", "link", "reference", "short_reference", "image_reference", "short_image_ref",
               "autolink", "automail")  # fmt: skip

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


def _png_uri(src: str, folder: Path | None) -> str | None:
    """``src`` as a ``data:`` URI when it names a PNG file inside ``folder``; else ``None``."""
    if folder is None or "://" in src or src.startswith(("/", "\\")):
        return None
    base = folder.resolve()
    path = (base / src).resolve()
    if not (path.parent == base or base in path.parents):
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(_PNG_SIGNATURE):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _steps(folder: Path | None) -> Any:
    """The steps added to Python-Markdown: every ``&`` escaped, and every image inlined or said missing.

    Every ``img`` gets its PNG file as a ``data:`` URI, or becomes ``<span class="missing">`` (never an
    address the page would load). A paragraph of images only (one per line in ``report.md``) becomes one
    ``<figure>`` with a ``<figcaption>`` per image.
    """
    from markdown.postprocessors import Postprocessor
    from markdown.preprocessors import Preprocessor
    from markdown.treeprocessors import Treeprocessor
    from markdown.util import AMP_SUBSTITUTE

    def missing(element: etree.Element, caption: str, src: str) -> None:
        tail = element.tail
        element.clear()
        element.tag, element.text, element.tail = "span", f"[figure {caption}: {src} not found]", tail
        element.set("class", "missing")

    class Figures(Treeprocessor):
        def run(self, root: etree.Element) -> None:
            for image in list(root.iter("img")):
                uri = _png_uri(image.get("src", ""), folder)
                if uri is None:
                    missing(image, image.get("alt", ""), image.get("src", ""))
                else:
                    image.attrib = {"alt": image.get("alt", ""), "src": uri}
            for index, block in reversed(list(enumerate(root))):
                items = list(block)
                if block.tag != "p" or (block.text or "").strip() or not items:
                    continue
                if any(item.tag not in ("img", "span") or (item.tail or "").strip() for item in items):
                    continue
                if any(item.tag == "span" and item.get("class") != "missing" for item in items):
                    continue
                root.remove(block)
                for offset, item in enumerate(items):
                    item.tail = None
                    if item.tag == "span":  # a missing figure: a paragraph that says so
                        item.tag = "p"
                        root.insert(index + offset, item)
                        continue
                    figure = etree.Element("figure")
                    figure.append(item)
                    etree.SubElement(figure, "figcaption").text = item.get("alt")
                    root.insert(index + offset, figure)

    class Ampersands(Preprocessor):
        """Every ``&`` is a character: Python-Markdown would keep ``&copy;`` as an entity, not as typed."""

        def run(self, lines: list[str]) -> list[str]:
            return [line.replace("&", AMP_SUBSTITUTE) for line in lines]

    class Escaped(Postprocessor):
        def run(self, text: str) -> str:
            return text.replace(AMP_SUBSTITUTE, "&amp;")

    return Ampersands, Figures, Escaped


def markdown_to_html(markdown: str, folder: Path | None = None, *, title: str | None = None) -> str:
    """A whole HTML document for the Markdown of a report.

    Parameters
    ----------
    markdown : str
        The text of ``report.md``: Markdown with pipe tables and code fences, no raw HTML.
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
    import markdown as python_markdown

    renderer = python_markdown.Markdown(extensions=["tables", "fenced_code"], output_format="html")
    renderer.preprocessors.deregister("html_block")
    renderer.parser.blockprocessors.deregister("reference")
    for name in _OFF_INLINE:
        renderer.inlinePatterns.deregister(name, strict=False)
    ampersands, figures, escaped = _steps(folder)
    # Python-Markdown's placeholder for a "&" (its own "amp_substitute" would put the bare "&" back),
    # after "normalize_whitespace" (30), which removes the placeholder's control characters
    renderer.preprocessors.register(ampersands(renderer), "ampersands", 29)
    renderer.postprocessors.deregister("amp_substitute")
    renderer.postprocessors.register(escaped(renderer), "amp_substitute", 20)
    renderer.treeprocessors.register(figures(renderer), "figures", 15)  # after "inline" (20)
    body = renderer.convert(markdown)
    heading = _HEADING.search(markdown)
    page_title = title if title is not None else (heading.group("text") if heading else "report")
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
            body,
            "</main>",
            "</body>",
            "</html>",
            "",
        ]
    )
