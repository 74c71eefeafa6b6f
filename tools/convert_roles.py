"""Rewrite Sphinx roles in docstrings into mkdocstrings cross-references, and list "SPEC" mentions.

The API page is rendered by mkdocstrings, which reads docstrings as Markdown: a Sphinx role such as
``:func:`aurc``` shows up as raw text. This script rewrites every ``:func:``, ``:class:``, ``:meth:``,
``:attr:``, ``:mod:``, ``:data:``, ``:exc:`` and ``:obj:`` role:

- to ``[`shown`][identifier]`` (an autorefs link) when the target is rendered on a docs page, where
  ``identifier`` is the path under which the page renders it (``selectivekit.aurc``, not
  ``selectivekit.risk_coverage.aurc``);
- to plain code ``` `shown` ``` when it is not (private helpers, other libraries), so that
  ``mkdocs build --strict`` has no unresolved reference.

Targets are resolved the way Sphinx would, by importing the package: a dotted name from the top, else a
name in the enclosing class, then in the module. ``~`` shows the last component only. The rendered set
comes from the ``::: identifier`` lines of ``docs/**/*.md`` (a module directive renders its ``__all__``,
a class its public methods and attributes).

Idempotent: a converted file has no role left, so a second run changes nothing. It must run where the
package and its optional frameworks import (``pip install -e ".[dev]"``)::

    python tools/convert_roles.py            # rewrite selectivekit/**/*.py in place, list SPEC mentions
    python tools/convert_roles.py --check    # exit 1 if any role or SPEC mention is left (changes nothing)
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import inspect
import os
import re
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "selectivekit"
ROLE = re.compile(r":(?:py:)?(func|class|meth|attr|mod|data|exc|obj):`(?P<target>[^`]+)`")
SPEC = re.compile(r"\bSPEC\b")
DIRECTIVE = re.compile(r"^:::\s+(?P<ident>[\w.]+)\s*$", re.MULTILINE)


def _import_path(path: str) -> object | None:
    """The object at a dotted path (``pkg.mod.Class.attr``), or None."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for index, name in enumerate(parts[split:], start=split):
            try:
                obj = getattr(obj, name)
            except AttributeError:
                owner = obj
                rest = parts[index:]
                if len(rest) == 1 and _has_field(owner, rest[0]):
                    return _Attribute(owner, rest[0])
                return None
        return obj
    return None


@dataclasses.dataclass(frozen=True)
class _Attribute:
    """A class attribute that has no value on the class (a dataclass field without default)."""

    owner: object
    name: str


def _has_field(owner: object, name: str) -> bool:
    if not inspect.isclass(owner):
        return False
    annotations: dict[str, object] = {}
    for klass in reversed(owner.__mro__):
        annotations.update(getattr(klass, "__annotations__", {}))
    return name in annotations


def _has_docstring(obj: object) -> bool:
    """Whether the object has a docstring of its own (a dataclass field or a bare attribute has none)."""
    if isinstance(obj, _Attribute):
        return False
    if isinstance(obj, property):
        obj = obj.fget
    if inspect.isclass(obj):
        return bool(vars(obj).get("__doc__"))
    return bool(getattr(obj, "__doc__", None)) and (
        isinstance(obj, types.ModuleType) or inspect.isroutine(obj) or inspect.isclass(obj)
    )


def canonical(obj: object) -> str | None:
    """Where an object is defined: ``module.qualname`` (``module`` for a module)."""
    if isinstance(obj, _Attribute):
        owner = canonical(obj.owner)
        return None if owner is None else f"{owner}.{obj.name}"
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    if isinstance(obj, property):
        obj = obj.fget
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if module is None or qualname is None:
        return None
    return f"{module}.{qualname}"


def rendered_identifiers(docs: Path) -> dict[str, str]:
    """Canonical path -> the identifier under which a docs page renders that object."""
    rendered: dict[str, str] = {}

    def add(ident: str, obj: object, *, members: bool) -> None:
        path = canonical(obj)
        if path is None or not _has_docstring(obj):
            return  # mkdocstrings hides members without a docstring (show_if_no_docstring: false)
        rendered.setdefault(path, ident)
        if not members:
            return
        if isinstance(obj, types.ModuleType):
            for name in getattr(obj, "__all__", ()):
                add(f"{ident}.{name}", getattr(obj, name), members=True)
        elif inspect.isclass(obj):
            names = set(vars(obj)) | set(getattr(obj, "__annotations__", {}))
            for name in sorted(names):
                if name.startswith("_"):
                    continue
                member = getattr(obj, name, None)
                add(f"{ident}.{name}", member if member is not None else _Attribute(obj, name), members=False)

    for page in sorted(docs.rglob("*.md")):
        for match in DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
            ident = match.group("ident")
            obj = _import_path(ident)
            if obj is None:
                msg = f"{page.relative_to(ROOT)}: `::: {ident}` does not import"
                raise SystemExit(msg)
            add(ident, obj, members=True)
    return rendered


def _scopes(tree: ast.Module) -> list[tuple[int, int, str]]:
    """(first line, last line, qualname) of every class, innermost last."""
    scopes: list[tuple[int, int, str]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                qualname = f"{prefix}{child.name}"
                scopes.append((child.lineno, child.end_lineno or child.lineno, qualname))
                visit(child, f"{qualname}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, f"{prefix}{child.name}.<locals>.")

    visit(tree, "")
    return scopes


def resolve(target: str, module: str, class_qualname: str | None) -> object | None:
    """The object a role's target names, seen from ``module`` (and the class around it)."""
    candidates = []
    if class_qualname is not None:
        candidates.append(f"{module}.{class_qualname}.{target}")
    candidates += [f"{module}.{target}", target, f"{PACKAGE}.{target}"]
    for candidate in candidates:
        if "<locals>" in candidate:
            continue
        obj = _import_path(candidate)
        if obj is not None:
            return obj
    return None


def convert_text(text: str, module: str, rendered: dict[str, str]) -> tuple[str, list[str]]:
    """The rewritten source, and one line per role: ``line: role -> result``."""
    scopes = _scopes(ast.parse(text))
    line_starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
    log: list[str] = []

    def line_of(offset: int) -> int:
        lo, hi = 0, len(line_starts)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if line_starts[mid] <= offset else (lo, mid)
        return lo + 1

    def replace(match: re.Match[str]) -> str:
        target = match.group("target").strip()
        short = target.startswith("~")
        target = target.lstrip("~.")
        shown = target.rsplit(".", 1)[-1] if short else target
        line = line_of(match.start())
        enclosing = [q for first, last, q in scopes if first <= line <= last]
        obj = resolve(target, module, enclosing[-1] if enclosing else None)
        ident = rendered.get(canonical(obj) or "") if obj is not None else None
        result = f"[`{shown}`][{ident}]" if ident else f"`{shown}`"
        log.append(f"{line}: {match.group(0)} -> {result}")
        return result

    new = ROLE.sub(replace, text)
    if log:
        rewritten = {line_of(i) for i in range(len(text)) if text.startswith(":", i) and ROLE.match(text, i)}
        new = _rewrap(new, text, rewritten)
    return new, log


LINE_LENGTH = 110  # ruff's line-length in pyproject.toml
_NO_LINE_START = re.compile(r"[-*+#>|]|\d+[.)]\s|>>>|\.\.\.")  # would start a list, heading, quote, doctest


def _rewrap(new: str, old: str, changed: set[int]) -> str:
    """Split the lines that the links made longer than `LINE_LENGTH`, at spaces outside code spans.

    Only lines holding a rewritten role are touched (same line numbers: a role never spans lines). The
    continuation keeps the line's indentation (and a leading ``#`` or ``#:`` of a comment), and never starts
    with what Markdown would read as a list item, heading or quote.
    """
    del old
    out: list[str] = []
    for number, line in enumerate(new.split("\n"), start=1):
        if number not in changed:
            out.append(line)
            continue
        indent = re.match(r"\s*(#:?\s)?", line).group(0)
        if line[len(indent) :].startswith(("- ", "* ")):
            indent += "  "  # a list item's continuation
        while len(line) > LINE_LENGTH:
            cut = _split_point(line, len(indent))
            if cut is None:
                break
            out.append(line[:cut].rstrip())
            line = indent + line[cut:].lstrip()
        out.append(line)
    return "\n".join(out)


def _split_point(line: str, start: int) -> int | None:
    best = None
    ticks = 0
    for i, ch in enumerate(line):
        if ch == "`":
            ticks += 1
        if i > LINE_LENGTH:
            break
        if ch == " " and i > start and ticks % 2 == 0 and not _NO_LINE_START.match(line, i + 1):
            best = i
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a role is left")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the Keras adapter imports TensorFlow
    sys.path.insert(0, str(ROOT))
    rendered = rendered_identifiers(ROOT / "docs")
    roles = spec = 0
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        new, log = convert_text(text, module_name(path), rendered)
        relative = path.relative_to(ROOT)
        for entry in log:
            print(f"{relative}:{entry}")
        roles += len(log)
        if log and not args.check:
            path.write_text(new, encoding="utf-8")
        for number, line in enumerate(text.splitlines(), start=1):
            if SPEC.search(line):
                spec += 1
                print(f"{relative}:{number}: SPEC mention (restate by hand): {line.strip()}")
    verb = "left" if args.check else "rewritten"
    print(f"{roles} role(s) {verb}; {spec} SPEC mention(s) to restate by hand")
    return 1 if args.check and (roles or spec) else 0


if __name__ == "__main__":
    raise SystemExit(main())
