"""The documentation runs: every ```python block of every page, and ``mkdocs build --strict``.

Each page (docs/**/*.md and README.md) with at least one ```python block is one test case: its blocks run
in order in one fresh namespace, in a temporary working directory, with matplotlib's Agg backend. Pages
without a python block are not test cases. Blocks fenced as ```pycon, ```text, ```bash, ... are not run,
nor is a ```python block preceded by the line ``<!-- docs-test: skip -->`` (for code that needs a GPU or
several processes; say on the page what it needs).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_MARKER = "<!-- docs-test: skip -->"
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
    try:
        for line_number, code in python_blocks(page.read_text(encoding="utf-8")):
            compiled = compile(code, f"{relative}:{line_number}", "exec")
            exec(compiled, namespace)
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
