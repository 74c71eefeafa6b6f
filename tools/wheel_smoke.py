"""Build the sdist and the wheel, install the wheel as a user would, and check that it works.

A module or a data file missing from the package passes every test that runs from the source tree and
breaks only for users. This script (run by ``.ci/run``, no pytest) checks the built package itself:

1. ``python -m build``, on a copy of the files git tracks (as a fresh clone has them) and with the
   setuptools pinned in ``constraints.txt``, succeeds and prints no deprecation warning;
2. the wheel holds exactly the package's tracked files (every module, ``py.typed``, the console-script
   module), the license and nothing else (no tests, no ``reference_models``, no docs assets: the docs'
   MathJax is copied into the built site by ``tools/mkdocs_mathjax.py``, it is not package data); the sdist
   holds the same package files and the license, changelog and citation files;
3. in a fresh virtual environment outside the repository, with ``pip install -c constraints.txt
   "<wheel>[io,plot]"``, run from a folder outside the repository: every module imports (a missing
   optional framework such as PyTorch is allowed, a missing selectivekit module is not); the version
   agrees everywhere (wheel name, metadata, ``selectivekit.__version__``, ``selectivekit --version``,
   ``report.json``); the README's quick start prints what the README says; ``selectivekit evaluate`` on a
   small folder of NIfTI, PNG and NumPy files writes a report whose AURC equals ``selectivekit.aurc_dice``.

Every failure is printed on one line and the exit status is 1; 0 when all checks pass::

    python tools/wheel_smoke.py              # from the repository root; needs `build` (the dev extra)
    python tools/wheel_smoke.py --keep DIR   # keep the dist files and the environment in DIR
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIST_NAME = "selectivekit"

# Run inside the fresh environment, from a folder outside the repository. argv[1]: the wheel's version;
# argv[2]: the modules of the source tree (JSON), so that one missing from the install fails its import.
CHECK_INSTALLED = r"""
import importlib, importlib.metadata, json, pathlib, sys, sysconfig

import selectivekit

expected = sys.argv[1]
modules = json.loads(sys.argv[2])
problems = []
site = pathlib.Path(sysconfig.get_paths()["purelib"]).resolve()
where = pathlib.Path(selectivekit.__file__).resolve()
if site not in where.parents:
    problems.append(f"selectivekit was imported from {where}, not from the environment's {site}")
found = {"selectivekit.__version__": selectivekit.__version__,
         "importlib.metadata.version": importlib.metadata.version("selectivekit")}
for name, value in found.items():
    if value != expected:
        problems.append(f"{name} is {value!r}, the wheel is {expected!r}")
skipped = []
for module in modules:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:  # an optional framework (torch, keras, hypothesis) is fine
        if (exc.name or "").split(".")[0] in ("selectivekit", "selectivekit_entry"):
            problems.append(f"import {module}: {exc}")
        else:
            skipped.append(f"{module} (needs {exc.name})")
    except Exception as exc:
        problems.append(f"import {module}: {type(exc).__name__}: {exc}")
print(json.dumps({"problems": problems, "skipped": skipped}))
"""

# Writes a small evaluate folder (3 images of 3 classes: NIfTI labels, PNG predictions, NumPy uncertainty)
# and prints the library's own aurc_dice on the same arrays.
WRITE_FOLDER = r"""
import json, pathlib, sys

import nibabel as nib
import numpy as np
from PIL import Image

import selectivekit as sk

root = pathlib.Path(sys.argv[1])
rng = np.random.default_rng(7)
preds, labels, us = [], [], []
for role in ("labels", "preds", "unc"):
    (root / role).mkdir(parents=True)
for i in range(3):
    label = np.zeros((24, 20), np.uint8)
    label[4:16, 3 + i : 15 + i] = 1
    label[17:22, 2:9] = 2
    wrong = rng.random(label.shape) < 0.08
    pred = np.where(wrong, (label + 1) % 3, label).astype(np.uint8)
    u = (rng.random(label.shape) + 0.6 * wrong).astype(np.float32)
    nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labels" / f"case_{i}.nii.gz")
    Image.fromarray(pred).save(root / "preds" / f"case_{i}_pred.png")
    np.save(root / "unc" / f"case_{i}_unc.npy", u)
    preds.append(pred)
    labels.append(label)
    us.append(u)
print(json.dumps({"aurc_dice": sk.aurc_dice(preds, labels, us, num_classes=3)}))
"""


class Smoke:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.failures: list[str] = []
        self.start = time.perf_counter()

    def fail(self, message: str) -> None:
        self.failures.append(message)
        print(f"FAIL: {message}", flush=True)

    def ok(self, message: str) -> None:
        print(f"ok ({time.perf_counter() - self.start:5.1f} s): {message}", flush=True)

    def run(
        self, args: list[str], *, cwd: Path, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)


def tracked_package_files() -> set[str]:
    """The files a wheel must hold: all that git tracks under selectivekit/, and the entry module."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--", DIST_NAME, "selectivekit_entry.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    files = {name for name in out.split("\0") if name}
    if not files:
        msg = f"git lists no files under {ROOT / DIST_NAME}: run this from a git checkout."
        raise SystemExit(msg)
    return files


def clean_copy(destination: Path) -> Path:
    """The files git tracks, as they are in the work tree (uncommitted edits included), in a new folder.

    A build in the repository itself would read what earlier builds left there: setuptools adds the files
    of a stale ``selectivekit.egg-info/SOURCES.txt`` to the sdist, so a module dropped from the package
    would still ship. The copy is what a fresh clone holds.
    """
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in filter(None, out.stdout.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the work tree is left out, as a commit would
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def build(smoke: Smoke, dist: Path) -> tuple[Path, Path] | None:
    env = dict(os.environ, PIP_CONSTRAINT=str(ROOT / "constraints.txt"))
    source = clean_copy(smoke.work / "source")
    result = smoke.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(source)], cwd=source, env=env
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        smoke.fail(f"python -m build exited {result.returncode}: {output.strip().splitlines()[-1:]}")
        return None
    warnings = [line.strip() for line in output.splitlines() if re.search("deprecat", line, re.IGNORECASE)]
    if warnings:
        smoke.fail(f"python -m build printed a deprecation warning: {warnings[0]}")
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        smoke.fail(f"expected one wheel and one sdist in {dist}, found {[p.name for p in dist.iterdir()]}")
        return None
    smoke.ok(f"built {sdists[0].name} and {wheels[0].name}, no deprecation warning")
    return wheels[0], sdists[0]


def check_contents(smoke: Smoke, wheel: Path, sdist: Path, version: str) -> None:
    expected = tracked_package_files()
    info = f"{DIST_NAME}-{version}.dist-info/"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    package = {name for name in names if not name.startswith(info)}
    if missing := sorted(expected - package):
        smoke.fail(f"missing from the wheel: {', '.join(missing)}")
    if extra := sorted(package - expected):
        smoke.fail(f"in the wheel but not a tracked package file: {', '.join(extra)}")
    for name in ("METADATA", "RECORD", "WHEEL", "entry_points.txt", "licenses/LICENSE"):
        if info + name not in names:
            smoke.fail(f"missing from the wheel: {info}{name}")
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(info + "METADATA").decode() if info + "METADATA" in names else ""
    for line in ("License-Expression: MIT", "License-File: LICENSE", f"Version: {version}"):
        if line not in metadata.splitlines():
            smoke.fail(f"the wheel's METADATA lacks the line {line!r}")
    top = f"{DIST_NAME}-{version}/"
    with tarfile.open(sdist) as archive:
        members = {name.removeprefix(top) for name in archive.getnames()}
    wanted = expected | {"LICENSE", "README.md", "CHANGELOG.md", "CITATION.cff", "pyproject.toml", "PKG-INFO"}
    if missing := sorted(wanted - members):
        smoke.fail(f"missing from the sdist: {', '.join(missing)}")
    if not smoke.failures:
        smoke.ok(f"the wheel holds the {len(expected)} package files (py.typed included) and the license")


def readme_quick_start() -> tuple[str, str]:
    """The README's first python block and the text block it is said to print."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    code = re.search(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    if code is None:
        msg = "README.md has no python block"
        raise SystemExit(msg)
    printed = re.search(r"^```text\n(.*?)^```", text[code.end() :], re.DOTALL | re.MULTILINE)
    if printed is None:
        msg = "README.md has no text block after its quick start"
        raise SystemExit(msg)
    return code.group(1), printed.group(1)


def module_names(files: set[str]) -> list[str]:
    """The importable modules among the package files (``__main__`` left out: importing it runs the CLI)."""
    names = []
    for name in sorted(files):
        parts = list(Path(name).with_suffix("").parts)
        if not name.endswith(".py") or parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


def check_installed(smoke: Smoke, venv: Path, version: str) -> None:
    python, command = venv / "bin" / "python", venv / "bin" / DIST_NAME
    here = smoke.work / "outside"
    here.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}

    modules = json.dumps(module_names(tracked_package_files()))
    result = smoke.run([str(python), "-c", CHECK_INSTALLED, version, modules], cwd=here, env=env)
    if result.returncode != 0:
        smoke.fail(f"the import check crashed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    else:
        report = json.loads(result.stdout.strip().splitlines()[-1])
        for problem in report["problems"]:
            smoke.fail(problem)
        if not report["problems"]:
            skipped = "; ".join(report["skipped"]) or "none"
            smoke.ok(f"every module imports, version {version} everywhere (optional frameworks: {skipped})")

    code, printed = readme_quick_start()
    (here / "quick_start.py").write_text(code, encoding="utf-8")
    result = smoke.run([str(python), "quick_start.py"], cwd=here, env=env)
    if result.returncode != 0:
        smoke.fail(f"the README quick start failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    elif result.stdout.strip() != printed.strip():
        smoke.fail(
            f"the README quick start printed {result.stdout.strip()!r}, the README says {printed.strip()!r}"
        )
    else:
        smoke.ok("the README quick start prints what the README says")

    result = smoke.run([str(command), "--version"], cwd=here, env=env)
    if result.returncode != 0 or result.stdout.strip() != f"{DIST_NAME} {version}":
        smoke.fail(f"`selectivekit --version` exited {result.returncode} with {result.stdout.strip()!r}")
    else:
        smoke.ok(f"`selectivekit --version` prints {result.stdout.strip()!r}")

    data = here / "data"
    result = smoke.run([str(python), "-c", WRITE_FOLDER, str(data)], cwd=here, env=env)
    if result.returncode != 0:
        smoke.fail(f"writing the evaluate folder failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
        return
    reference = json.loads(result.stdout.strip().splitlines()[-1])["aurc_dice"]
    out = here / "report"
    args = [str(command), "evaluate", "--pred", "data/preds", "--label", "data/labels"]
    args += ["--uncertainty", "data/unc", "--num-classes", "3", "--out", str(out), "--quiet"]
    result = smoke.run(args, cwd=here, env=env)
    if result.returncode != 0:
        smoke.fail(f"`selectivekit evaluate` exited {result.returncode}: {result.stderr.strip()}")
        return
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    wanted = ["report.json", "report.md", "report.html", "risk_coverage.png", "dice_coverage.png"]
    if missing := [name for name in wanted if not (out / name).is_file()]:
        smoke.fail(f"`selectivekit evaluate` did not write {', '.join(missing)}")
    if report.get("selectivekit_version") != version:
        smoke.fail(
            f"report.json says selectivekit_version {report.get('selectivekit_version')!r}, not {version!r}"
        )
    if report.get("n_images") != 3 or report.get("aurc_dice") != reference:
        smoke.fail(
            f"report.json has {report.get('n_images')} images and AURC {report.get('aurc_dice')!r}; "
            f"selectivekit.aurc_dice gives {reference!r} on the 3 images"
        )
    else:
        smoke.ok(f"`selectivekit evaluate` wrote its report; AURC = selectivekit.aurc_dice ({reference:.6g})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep", type=Path, help="work in this new folder and keep it (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        return smoke_in(args.keep.resolve())
    with tempfile.TemporaryDirectory(prefix="selectivekit-wheel-") as folder:
        return smoke_in(Path(folder))


def smoke_in(work: Path) -> int:
    if ROOT == work or ROOT in work.parents:
        msg = f"the work folder {work} is inside the repository; the wheel must be tested outside it."
        raise SystemExit(msg)
    smoke = Smoke(work)
    built = build(smoke, work / "dist")
    if built is None:
        return 1
    wheel, sdist = built
    version = wheel.name.split("-")[1]
    check_contents(smoke, wheel, sdist, version)
    venv = work / "venv"
    result = smoke.run([sys.executable, "-m", "venv", str(venv)], cwd=work)
    if result.returncode != 0:
        smoke.fail(f"python -m venv failed: {result.stderr.strip()}")
        return 1
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "--no-compile",
    ]
    result = smoke.run([*pip, "-c", str(ROOT / "constraints.txt"), f"{wheel}[io,plot]"], cwd=work)
    if result.returncode != 0:
        smoke.fail(f"pip install of the wheel failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
        return 1
    smoke.ok(f"installed {wheel.name}[io,plot] in a fresh environment at {venv}")
    check_installed(smoke, venv, version)
    seconds = time.perf_counter() - smoke.start
    if smoke.failures:
        print(f"wheel smoke test: {len(smoke.failures)} failed check(s) in {seconds:.0f} s", file=sys.stderr)
        return 1
    print(f"wheel smoke test: all checks passed in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
