"""The documentation runs: every ```python block of every page, and ``mkdocs build --strict``.

Each page (docs/**/*.md and README.md) with at least one ```python block is one test case: its blocks run
in order in one fresh namespace, in a temporary working directory, with matplotlib's Agg backend. Pages
without a python block are not test cases. Blocks fenced as ```pycon, ```text, ```bash, ... are not run,
nor is a ```python block preceded by the line ``<!-- docs-test: skip -->`` (for code that needs a GPU or
several processes; say on the page what it needs). A ```text block preceded by the line
``<!-- docs-test: prints -->`` is the exact output of the last ```python block before it: the test
compares what that block prints with it, so a page never shows output the code does not give.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_MARKER = "<!-- docs-test: skip -->"
PRINTS_MARKER = "<!-- docs-test: prints -->"
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)\n"
    r"(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python (or ```py) blocks of a Markdown page: (line number, dedented code)."""
    blocks = []
    for match in _FENCE.finditer(text):
        info = match.group("info").strip()
        language = info.split()[0].lstrip(".{").rstrip("}").lower() if info else ""
        if language not in ("python", "py"):
            continue
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1].strip()
        if before == SKIP_MARKER:
            continue
        indent = match.group("indent")
        lines = match.group("body").splitlines()
        code = "\n".join(line[len(indent) :] if line.startswith(indent) else line for line in lines)
        line_number = text.count("\n", 0, match.start()) + 2
        blocks.append((line_number, code + "\n"))
    return blocks


def printed_outputs(text: str) -> dict[int, str]:
    """Line of a ```python block (as in `python_blocks`) -> the output that a marked block says it prints."""
    outputs: dict[int, str] = {}
    last_python: int | None = None
    for match in _FENCE.finditer(text):
        info = match.group("info").strip()
        language = info.split()[0].lstrip(".{").rstrip("}").lower() if info else ""
        line_number = text.count("\n", 0, match.start()) + 2
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1].strip()
        if language in ("python", "py") and before != SKIP_MARKER:
            last_python = line_number
        elif before == PRINTS_MARKER:
            if last_python is None or last_python in outputs:
                msg = f"line {line_number}: {PRINTS_MARKER} must follow a python block (one output per block)"
                raise ValueError(msg)
            indent = match.group("indent")
            lines = match.group("body").splitlines()
            outputs[last_python] = "\n".join(
                line[len(indent) :] if line.startswith(indent) else line for line in lines
            )
    return outputs


def _pages() -> list[Path]:
    pages = sorted((ROOT / "docs").rglob("*.md")) if (ROOT / "docs").is_dir() else []
    readme = ROOT / "README.md"
    if readme.is_file():
        pages.append(readme)
    return [p for p in pages if python_blocks(p.read_text(encoding="utf-8"))]


PAGES = _pages()


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict[str, object] = {"__name__": "__docs__"}
    relative = page.relative_to(ROOT)
    text = page.read_text(encoding="utf-8")
    expected = printed_outputs(text)
    try:
        for line_number, code in python_blocks(text):
            compiled = compile(code, f"{relative}:{line_number}", "exec")
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compiled, namespace)
            sys.stdout.write(printed.getvalue())
            if line_number in expected:
                assert printed.getvalue().rstrip("\n") == expected[line_number].rstrip("\n"), (
                    f"{relative}:{line_number}: the block prints\n{printed.getvalue()}\n"
                    f"but the page shows\n{expected[line_number]}"
                )
    finally:
        plt.close("all")


def test_python_blocks_extraction() -> None:
    page = (
        "Intro\n\n```python\nx = 1\n```\n\n```bash\nexit 1\n```\n\n"
        "- item\n\n    ```py\n    y = x + 1\n    ```\n\n```text\nnot code\n```\n"
        "\n<!-- docs-test: skip -->\n```python\nneeds_a_gpu()\n```\n"
    )
    blocks = python_blocks(page)
    assert [code for _, code in blocks] == ["x = 1\n", "y = x + 1\n"]
    assert [line for line, _ in blocks] == [4, 14]


def test_printed_outputs_extraction() -> None:
    page = (
        "```python\nprint(1)\n```\n\n<!-- docs-test: prints -->\n```text\n1\n```\n\n"
        "```text\nnot an output\n```\n\n```python\nx = 2\n```\n"
    )
    assert printed_outputs(page) == {2: "1"}
    with pytest.raises(ValueError, match="must follow a python block"):
        printed_outputs("<!-- docs-test: prints -->\n```text\n1\n```\n")


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    if shutil.which("mkdocs") is None:
        try:
            import mkdocs  # noqa: F401
        except ImportError:
            pytest.skip("mkdocs is not installed (pip install -e '.[docs]'); the docs build is not checked")
    env = dict(os.environ, MPLBACKEND="Agg", NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"


# --------------------------------------------------------------------------------------------------
# what a reader sees first, and how the code looks on the page

# GitHub shows a README's code blocks without wrapping: longer lines hide behind a scroll bar
README_WIDTH = 88
ALL_PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]


def _fenced_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line inside a fenced code block, of any language."""
    lines = []
    for match in _FENCE.finditer(text):
        first = text.count("\n", 0, match.start()) + 2
        indent = match.group("indent")
        for i, line in enumerate(match.group("body").splitlines()):
            lines.append((first + i, line[len(indent) :] if line.startswith(indent) else line))
    return lines


def test_docs_home_starts_with_the_readme_quick_start() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    home = (ROOT / "docs" / "index.md").read_text(encoding="utf-8")
    (line_readme, code_readme), (line_home, code_home) = python_blocks(readme)[0], python_blocks(home)[0]
    assert code_home == code_readme
    # the same output shown under both (each page's test checks it is what the code prints)
    assert printed_outputs(home)[line_home] == printed_outputs(readme)[line_readme]
    # and the same words around them
    quick_start = readme.split("## Quick start\n", 1)[1].split("\n### Which function", 1)[0]
    first_example = home.split("## A first example\n", 1)[1].split("-->\n", 1)[1]
    assert first_example.startswith(quick_start.strip() + "\n")


@pytest.mark.parametrize("page", ALL_PAGES, ids=[str(p.relative_to(ROOT)) for p in ALL_PAGES])
def test_examples_have_no_formatter_directives(page: Path) -> None:
    """A reader copies the examples: no `# fmt: skip` / `# fmt: off` left in them."""
    for line_number, line in _fenced_lines(page.read_text(encoding="utf-8")):
        assert not re.search(r"#\s*fmt:\s*(skip|off|on)\b", line), f"{page.name}:{line_number}: {line}"


def test_readme_code_lines_fit_without_scrolling() -> None:
    long = [
        f"README.md:{n}: {len(line)} characters"
        for n, line in _fenced_lines((ROOT / "README.md").read_text(encoding="utf-8"))
        if len(line) > README_WIDTH
    ]
    assert not long, long


def test_docs_site_wraps_long_code_lines() -> None:
    """The site's own style sheet makes code blocks wrap (the pages keep their lines as written)."""
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    sheets = re.findall(r"^extra_css:\n((?:\s+- .*\n)+)", config, flags=re.MULTILINE)
    assert sheets, "mkdocs.yml has no extra_css"
    names = [line.split("- ", 1)[1].split("#")[0].strip() for line in sheets[0].strip().splitlines()]
    css = " ".join((ROOT / "docs" / name).read_text(encoding="utf-8") for name in names)
    rule = re.search(r"\.md-typeset pre > code\s*\{([^}]*)\}", css)
    assert rule is not None and re.search(r"white-space:\s*pre-wrap", rule.group(1))
