"""The built docs site as a reader sees it: pages opened from ``file://`` in headless Chromium.

The site is built once (``mkdocs build --strict``). Each page is loaded in Debian's ``chromium`` with
``--dump-dom`` after MathJax has run, and the rendered text is checked: every formula typeset (no raw
``\\(`` left, no MathJax error), no raw Sphinx role (``:func:`...```). Every internal link of every built
page must point to a file of the site (never a folder: from ``file://`` a folder shows a bare listing),
and its ``#anchor`` to an id on that page.

Chromium is required, not optional: ``.ci/run`` installs it (``apt-get install -y chromium``) when it is
missing, and this test fails with that command when it cannot find it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# The pages the issue names first, then every other page of docs/ (each load takes about a second).
FIRST = ["concepts.html", "api.html", "guides/evaluate.html"]
PAGES = FIRST + sorted(
    p.relative_to(ROOT / "docs").with_suffix(".html").as_posix()
    for p in (ROOT / "docs").rglob("*.md")
    if p.relative_to(ROOT / "docs").with_suffix(".html").as_posix() not in FIRST
)
# In the rendered text the role's backticks have become a <code> element: ":func:" then the name.
ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj):(?=\S|$)")


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path is not None:
            return path
    pytest.fail(
        "Headless Chromium is needed to check the docs site and was not found on PATH. "
        "Install Debian's package: `apt-get update && apt-get install -y chromium` (.ci/run does this).",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, MPLBACKEND="Agg", NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


def dump_dom(page: Path) -> str:
    """The page's DOM after its scripts ran (MathJax typesets within the virtual-time budget)."""
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--no-first-run",
        "--virtual-time-budget=20000",
        "--dump-dom",
        page.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and result.stdout.strip(), (
        f"chromium could not load {page}: exit {result.returncode}\n{result.stderr[-2000:]}"
    )
    return result.stdout


class _Page(HTMLParser):
    """The visible text (outside scripts, styles and code), math blocks, ids and links of one page."""

    _HIDDEN = frozenset({"script", "style", "pre", "code", "title"})
    _CODE = frozenset({"pre", "code"})
    _VOID = frozenset(
        {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []  # outside code too
        self.all_text: list[str] = []  # code included (a role's name is a <code> element)
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.resources: list[str] = []  # src/href of <script> and <link>: what the browser fetches
        self.math: list[dict[str, object]] = []  # one per arithmatex element: typeset? error? source
        self._stack: list[str] = []
        self._hidden = 0
        self._code = 0
        self._math_depth: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for key in ("id", "name"):
            if attributes.get(key):
                self.ids.add(str(attributes[key]))
        for key in ("href", "src"):
            if attributes.get(key) and tag in ("a", "link", "script", "img", "source"):
                self.links.append(str(attributes[key]))
                if tag in ("script", "link"):
                    self.resources.append(str(attributes[key]))
        if self._math_depth:
            current = self.math[-1]
            if tag == "mjx-container":
                current["typeset"] = True
            if "merror" in (attributes.get("data-mml-node") or "") or tag == "mjx-merror":
                current["error"] = True
        if tag in self._VOID:
            return
        self._stack.append(tag)
        if tag in self._HIDDEN:
            self._hidden += 1
        if tag in self._CODE:
            self._code += 1
        if "arithmatex" in (attributes.get("class") or "").split():
            self.math.append({"typeset": False, "error": False, "text": ""})
            self._math_depth.append(len(self._stack))

    def handle_endtag(self, tag: str) -> None:
        if tag in self._VOID or tag not in self._stack:
            return
        while self._stack:
            popped = self._stack.pop()
            if popped in self._HIDDEN:
                self._hidden -= 1
            if popped in self._CODE:
                self._code -= 1
            if self._math_depth and self._math_depth[-1] > len(self._stack):
                self._math_depth.pop()
            if popped == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._hidden == self._code and self._code:
            self.all_text.append(data)
        if self._hidden:
            return
        self.text.append(data)
        self.all_text.append(data)
        if self._math_depth:
            self.math[-1]["text"] = str(self.math[-1]["text"]) + data


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


@pytest.mark.parametrize("name", PAGES)
def test_page_renders(site: Path, name: str) -> None:
    path = site / name
    assert path.is_file(), f"{name} was not built"
    built = parse(path.read_text(encoding="utf-8"))
    rendered = parse(dump_dom(path))
    text = "".join(rendered.text)

    assert len(rendered.math) == len(built.math), "the rendered page lost or gained math elements"
    untypeset = [str(m["text"])[:80] for m in rendered.math if not m["typeset"]]
    assert not untypeset, f"{name}: {len(untypeset)} formula(s) not typeset by MathJax, e.g. {untypeset[:3]}"
    errors = [str(m["text"])[:80] for m in rendered.math if m["error"]]
    assert not errors, f"{name}: MathJax reported TeX errors in {errors[:3]}"
    for raw in ("\\(", "\\)", "\\[", "\\]", "$$"):
        index = text.find(raw)
        assert index < 0, (
            f"{name}: raw math delimiter {raw!r} left in the text: ...{text[index - 60 : index + 60]}..."
        )

    everything = "".join(rendered.all_text)
    roles = [everything[m.start() : m.start() + 50] for m in ROLE.finditer(everything)]
    assert not roles, f"{name}: {len(roles)} raw Sphinx role(s), e.g. {roles[:3]}"
    assert "SPEC" not in text.split(), f"{name} cites SPEC, a document users do not have"


def test_concepts_and_api_have_math_and_links(site: Path) -> None:
    concepts = parse(dump_dom(site / "concepts.html"))
    assert len(concepts.math) >= 40, "the Concepts page should carry its formulas"
    api = parse((site / "api.html").read_text(encoding="utf-8"))
    cross_refs = [link for link in api.links if link.startswith("#selectivekit.")]
    assert len(cross_refs) >= 50, f"the API page has only {len(cross_refs)} cross-reference links"


def test_internal_links_resolve(site: Path) -> None:
    pages = sorted(p for p in site.rglob("*.html") if p.name != "404.html")
    assert len(pages) >= len(PAGES)
    ids: dict[Path, set[str]] = {}
    broken: list[str] = []
    for page in pages:
        parsed = parse(page.read_text(encoding="utf-8"))
        ids.setdefault(page, parsed.ids)
        for link in parsed.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("mailto:", "javascript:", "data:")):
                continue  # external: not checked (the site must not need the network)
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            where = f"{page.relative_to(site)} -> {link}"
            if not target.is_relative_to(site.resolve()):
                broken.append(f"{where} (outside the site)")
            elif target.is_dir():
                broken.append(f"{where} (a folder: from file:// this shows a bare listing)")
            elif not target.is_file():
                broken.append(f"{where} (no such file)")
            elif parts.fragment and target.suffix == ".html":
                if target not in ids:
                    ids[target] = parse(target.read_text(encoding="utf-8")).ids
                if unquote(parts.fragment) not in ids[target]:
                    broken.append(f"{where} (no id {parts.fragment!r} on that page)")
    assert not broken, f"{len(broken)} broken internal link(s):\n" + "\n".join(broken[:40])


def test_no_cdn(site: Path) -> None:
    """Scripts, styles and fonts come from the site itself: it must work offline."""
    remote = []
    for page in site.rglob("*.html"):
        for link in parse(page.read_text(encoding="utf-8")).resources:
            if urlsplit(link).scheme or link.startswith("//"):
                remote.append(f"{page.relative_to(site)} -> {link}")
    assert not remote, "pages load scripts, styles or fonts from the network:\n" + "\n".join(remote[:20])
