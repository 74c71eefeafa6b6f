"""The layout rules of docs/architecture.md that a machine can check, read from the source (AST).

1. No module imports another module's underscore names, except from ``selectivekit._lib``.
2. A private module (``adapters/_torch_kernels.py``) is imported only from its own package.
3. No module reaches an underscore attribute through a name it imported (``AURC._should_sync(self)``).
4. The core imports no framework at module import time.
5. Each part of the layout imports only the parts below it.

Rules 1-3 and 5 are checked for the modules of ``selectivekit/`` (``reference_models/`` is not installed).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("selectivekit", "reference_models")  # imports of these are checked
CHECKED = ("selectivekit",)  # the modules whose imports are checked (the installed package)
FRAMEWORKS = ("torch", "torchmetrics", "keras", "tensorflow", "jax", "matplotlib", "nibabel", "PIL", "tqdm")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _resolve(node: ast.ImportFrom, module: str, path: Path) -> str:
    if not node.level:
        return node.module or ""
    base = _package(module, path).split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _ours(target: str) -> bool:
    return target.split(".")[0] in PACKAGES


def _private_module_problem(target: str, importer_package: str) -> str | None:
    """A private module in ``target`` imported from outside its package (``_lib`` is shared by all)."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if _private(part) and parts[: i + 1] != ["selectivekit", "_lib"]:
            owner = ".".join(parts[:i])
            if importer_package != owner and not importer_package.startswith(owner + "."):
                return f"imports the private module {'.'.join(parts[: i + 1])} from outside {owner}"
    return None


def check_source(source: str, module: str, path: Path) -> list[str]:
    """Violations of rules 1-3 in one module's source."""
    tree = ast.parse(source)
    package = _package(module, path)
    problems = []
    imported: dict[str, str] = {}  # local name -> the module it came from
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, path)
            if not _ours(target):
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                imported[alias.asname or alias.name] = target
                if not _private(alias.name):
                    continue
                module_path = ROOT / Path(*full.split("."))
                if module_path.is_dir() or module_path.with_suffix(".py").is_file():  # a module: rule 2
                    problem = _private_module_problem(full, package)
                    if problem:
                        problems.append(f"{module}: {problem}")
                elif not (target == "selectivekit._lib" or target.startswith("selectivekit._lib.")):
                    problems.append(f"{module}: imports the underscore name {alias.name} from {target}")
            problem = _private_module_problem(target, package)
            if problem:
                problems.append(f"{module}: {problem}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _ours(alias.name):
                    imported[alias.asname or alias.name.split(".")[0]] = alias.name
                    problem = _private_module_problem(alias.name, package)
                    if problem:
                        problems.append(f"{module}: {problem}")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and _private(node.attr)
            and isinstance(node.value, ast.Name)
            and node.value.id in imported
            and not imported[node.value.id].startswith("selectivekit._lib")
        ):
            problems.append(f"{module}: uses {node.value.id}.{node.attr} from {imported[node.value.id]}")
    return problems


def _sources() -> list[Path]:
    return sorted(p for package in CHECKED for p in (ROOT / package).rglob("*.py"))


def test_no_private_names_across_modules():
    problems = []
    for path in _sources():
        problems += check_source(path.read_text(encoding="utf-8"), _module_name(path), path)
    assert not problems, "\n".join(problems)


def test_the_checker_finds_each_kind_of_violation():
    path = ROOT / "selectivekit" / "adapters" / "torch_metrics.py"
    module = "selectivekit.adapters.torch_metrics"
    assert check_source("from ..risk_coverage import _prepare\n", module, path)
    assert check_source("from ..segmentation import _collect as c\n", module, path)
    assert check_source("from .torch import AURC\nAURC._should_sync(None)\n", module, path)
    assert check_source("from .adapters import _torch_kernels\n", "selectivekit.streaming", ROOT / "x.py")
    assert check_source("import selectivekit.adapters._keras_ops\n", "selectivekit.streaming", ROOT / "x.py")
    # allowed: _lib, a private module of one's own package, public names, dunders
    assert not check_source("from .._lib import to_numpy, _has_64bit\n", module, path)
    assert not check_source(
        "from . import _torch_kernels\nfrom ._torch_kernels import margin_loss\n", module, path
    )
    assert not check_source("from .. import __version__\nfrom ..streaming import grid_bins\n", module, path)


CORE = [
    p
    for p in sorted((ROOT / "selectivekit").rglob("*.py"))
    if "adapters" not in p.parts
    and "cli" not in p.parts
    and "io" not in p.parts  # io: a package
    and p.name not in ("plotting.py", "io.py", "_report_sections.py", "strategies.py")
]


@pytest.mark.parametrize("path", CORE, ids=[str(p.relative_to(ROOT)) for p in CORE])
def test_core_imports_no_framework_at_import_time(path):
    """Module-level imports only: a framework may be imported inside the function that needs it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        for name in names:
            assert name.split(".")[0] not in FRAMEWORKS, f"{path.name} imports {name} at import time"


# The parts of docs/architecture.md, lowest first: a module imports only from parts below its own (or from
# modules of its own part). The first matching prefix names a module's part.
LAYERS = [
    ("selectivekit.typing", 0),
    ("selectivekit._version", 0),  # the version string, read by __init__ and by pyproject.toml
    ("selectivekit._lib", 1),
    ("selectivekit.uncertainty", 2),
    ("selectivekit.selective", 2),
    ("selectivekit.loss_setting", 2),  # the loss's default setting, read by the loss and every adapter
    ("selectivekit.theorem", 3),
    ("selectivekit.loss", 3),  # margin_loss_from_logits uses uncertainty_from_logits
    ("selectivekit.predictive", 3),  # several predictions combined
    ("selectivekit.calibration", 3),  # ECE, Brier, NLL and their bins
    ("selectivekit.temperature", 3),  # temperature scaling
    ("selectivekit.cases", 4),  # case scores and case-level referral: uses risk_coverage
    ("selectivekit.budget", 6),  # one budget over cases and voxels: the Dice-coverage curve, per-image states
    ("selectivekit.risk_coverage", 3),
    ("selectivekit.segmentation", 4),
    ("selectivekit.streaming", 5),
    ("selectivekit.guarantees", 5),
    ("selectivekit.testing", 6),
    ("selectivekit.plotting", 6),
    ("selectivekit.io", 6),
    ("selectivekit.report", 7),
    ("selectivekit._parallel", 7),  # evaluate --workers: reads (io) and accumulates (streaming)
    ("selectivekit.shards", 7),
    ("selectivekit._report_sections", 8),  # the Markdown and terminal text of the command line, from a report
    ("selectivekit.cli", 9),
    ("selectivekit.__main__", 10),
    ("selectivekit.adapters", 10),
    ("selectivekit", 11),  # the package's __init__: re-exports
]


def _part(module: str) -> tuple[str, int]:
    for prefix, layer in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return prefix, layer
    raise AssertionError(f"{module} belongs to no part of the layout; add it to LAYERS and the docs")


def test_each_part_imports_only_the_parts_below_it():
    problems = []
    for path in sorted((ROOT / "selectivekit").rglob("*.py")):
        module = _module_name(path)
        own, layer = _part(module)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                targets = [_resolve(node, module, path)]
                if targets[0] == "selectivekit":  # `from . import theorem`: the names are modules;
                    # `from . import __version__` (read when a report is written) is the one exception
                    targets = [f"selectivekit.{a.name}" for a in node.names if a.name != "__version__"]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                if not target.startswith("selectivekit"):
                    continue
                part, target_layer = _part(target)
                if part != own and target_layer >= layer:
                    problems.append(f"{module} ({own}) imports {target} ({part})")
    assert not problems, "\n".join(problems)


def _imports_of_each_module() -> dict[str, set[str]]:
    """Module -> the modules of ``selectivekit`` it imports, at any level (a function's lazy import too)."""
    paths = {_module_name(p): p for p in sorted((ROOT / "selectivekit").rglob("*.py"))}

    def known(name: str) -> str:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = _resolve(node, module, path)
                for alias in node.names:  # `from . import x`: the module x if there is one, else the package
                    targets.add(known(f"{base}.{alias.name}"))
            elif isinstance(node, ast.Import):
                targets.update(known(alias.name) for alias in node.names)
        graph[module] = {t for t in targets if t.startswith("selectivekit") and t != module}
    return graph


def test_no_import_circle():
    """No module imports itself through others, even lazily (the nnU-Net trainers and the public module
    share their names through a third module)."""
    graph = _imports_of_each_module()
    circles = []
    for start in graph:  # depth-first from each module: small graph, no need for Tarjan
        stack = [(start, (start,))]
        seen = set()
        while stack:
            module, route = stack.pop()
            for target in graph[module]:
                if target == start:
                    circles.append(" -> ".join((*route, start)))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, (*route, target)))
    assert not circles, "\n".join(sorted(set(circles)))
