"""mkdocs hook: serve MathJax from the installed ``django-static-mathjax`` package, not from a CDN.

The built site must render its formulas offline and from ``file://``. The hook adds the SVG-output build of
MathJax 3 (``tex-svg.js``, whose glyphs are inside the script, so no web font is fetched) and the
components it loads on demand (TeX extensions, the context menu) to the site under
``javascripts/mathjax/``. ``pip install -e ".[docs]"`` installs the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

DEST = "javascripts/mathjax"
# tex-svg.js plus what it may load lazily: input/ (TeX extensions via autoload), ui/ (menu), a11y/.
# sre/ (speech, 4 MB) and output/chtml fonts are left out: the SVG output needs neither.
PARTS = ("tex-svg.js", "input", "ui", "a11y", "adaptors")


def mathjax_es5_dir() -> Path:
    """The ``es5`` folder of the installed MathJax 3 distribution."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or spec.origin is None:
        msg = (
            "MathJax is not installed: the docs need the `django-static-mathjax` package "
            '(pip install -e ".[docs]").'
        )
        raise PluginError(msg)
    es5 = Path(spec.origin).parent / "static" / "mathjax" / "es5"
    if not (es5 / "tex-svg.js").is_file():
        msg = f"`mathjax` at {Path(spec.origin).parent} is not MathJax 3 (no es5/tex-svg.js)."
        raise PluginError(msg)
    return es5


def on_files(files: Files, config) -> Files:
    es5 = mathjax_es5_dir()
    for part in PARTS:
        root = es5 / part
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in paths:
            if path.suffix == ".map":
                continue
            uri = f"{DEST}/{path.relative_to(es5).as_posix()}"
            files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files
