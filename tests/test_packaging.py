"""The release metadata agree with each other: the version everywhere it is shown, the changelog, the
citation file, the license and the packaging metadata of ``pyproject.toml``.

The built wheel itself (its files, an install outside the repository) is checked by ``tools/wheel_smoke.py``,
which ``.ci/run`` runs after the tests.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from setuptools.config.pyprojecttoml import load_file, read_configuration

import selectivekit
from selectivekit.cli import main
from tests.conftest import cli_inputs, evaluate_argv, noisy_cases, write_case_folders

ROOT = Path(__file__).resolve().parents[1]
PAPER_TITLE = "Uncertainty-Aware Training of Neural Networks for Selective Medical Image Segmentation"
PAPER_AUTHORS = ["Ding", "Liu", "Xu", "Huang", "Zhuang", "Xiong", "Shi"]  # the paper's order
# Keep a Changelog's kinds of change
CHANGE_KINDS = {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}
RELEASE = re.compile(r"^## \[(?P<version>\d+\.\d+\.\d+)\] - (?P<date>\d{4}-\d{2}-\d{2})$")


def _pyproject() -> dict:
    return load_file(ROOT / "pyproject.toml")  # setuptools' TOML reader (tomllib is Python >= 3.11)


def _releases() -> list[tuple[str, str, list[str]]]:
    """CHANGELOG.md's releases as (version, date, the `###` headings under it), newest first."""
    releases: list[tuple[str, str, list[str]]] = []
    for line in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            match = RELEASE.match(line)
            assert match, f"CHANGELOG.md: {line!r} is not '## [X.Y.Z] - YYYY-MM-DD'"
            releases.append((match["version"], match["date"], []))
        elif line.startswith("### "):
            assert releases, f"CHANGELOG.md: {line!r} comes before the first release heading"
            releases[-1][2].append(line[4:])
    return releases


def _citation() -> dict:
    return yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))


def test_the_version_is_written_once_and_read_by_the_package_metadata():
    project = _pyproject()["project"]
    assert "version" not in project
    assert project["dynamic"] == ["version"]
    # what setuptools puts into the wheel's metadata, resolved from pyproject.toml as a build does
    built = read_configuration(ROOT / "pyproject.toml", expand=True)["project"]["version"]
    assert built == selectivekit.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", selectivekit.__version__)


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "selectivekit", "--version"],
        # the console script `selectivekit` runs this function
        [
            sys.executable,
            "-c",
            "import sys, selectivekit_entry as e; sys.exit(e.selectivekit())",
            "--version",
        ],
    ],
    ids=["python -m selectivekit", "console script"],
)
def test_version_option_prints_the_package_version(command):
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    expected = (0, f"selectivekit {selectivekit.__version__}\n", "")
    assert (result.returncode, result.stdout, result.stderr) == expected


def test_version_option_in_process(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"selectivekit {selectivekit.__version__}\n"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("version_reports")
    preds, labels, us = noisy_cases(5, [(6, 6, 5)] * 12, noise=0.6)
    return root, write_case_folders(root, preds, labels, us)


def _report_version(root: Path, folders: dict[str, Path]) -> str:
    out = root / "report"
    assert main(evaluate_argv(folders, out)) == 0
    return json.loads((out / "report.json").read_text())["selectivekit_version"]


def _state_version(root: Path, folders: dict[str, Path]) -> str:
    state = root / "state.npz"
    assert main(evaluate_argv(folders, root / "shard", "--shard", "0/1", "--save-state", str(state))) == 0
    with np.load(state, allow_pickle=False) as data:
        return json.loads(data["header"].tobytes().decode("utf-8"))["selectivekit_version"]


def _threshold_version(root: Path, folders: dict[str, Path]) -> str:
    pytest.importorskip("scipy")
    out = root / "threshold.json"
    assert main(["calibrate", *cli_inputs(folders), "--max-dice-loss", "0.15", "--out", str(out)]) == 0
    return json.loads(out.read_text())["selectivekit_version"]


@pytest.mark.parametrize("written", [_report_version, _state_version, _threshold_version])
def test_files_written_by_the_command_line_carry_the_version(folders, written, capsys):
    root, paths = folders
    assert written(root, paths) == selectivekit.__version__


def test_changelog_lists_the_releases_newest_first_the_newest_being_this_version():
    releases = _releases()
    assert releases, "CHANGELOG.md lists no release"
    assert releases[0][0] == selectivekit.__version__
    versions = [tuple(int(part) for part in version.split(".")) for version, _, _ in releases]
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions)
    dates = [dt.date.fromisoformat(date) for _, date, _ in releases]
    assert dates == sorted(dates, reverse=True)
    for version, _, kinds in releases:
        assert kinds, f"CHANGELOG.md: release {version} has no '### Added/Changed/...' section"
        assert set(kinds) <= CHANGE_KINDS, f"CHANGELOG.md: release {version} has sections {kinds}"
        assert len(set(kinds)) == len(kinds), f"CHANGELOG.md: release {version} repeats a section"


def test_citation_file_describes_this_release_and_cites_the_paper():
    cff = _citation()
    # the keys CFF 1.2.0 requires, and the ones a software citation needs to be useful
    for key in ("cff-version", "message", "title", "authors", "type", "version", "date-released", "license"):
        assert cff.get(key), f"CITATION.cff lacks {key!r}"
    assert cff["cff-version"] == "1.2.0"
    assert cff["type"] == "software"
    assert cff["version"] == selectivekit.__version__
    newest_version, newest_date, _ = _releases()[0]
    assert (cff["version"], str(cff["date-released"])) == (newest_version, newest_date)
    assert cff["license"] == _pyproject()["project"]["license"]
    for author in cff["authors"]:
        assert set(author) & {"name", "family-names"}, f"CITATION.cff: author {author} has no name"
    (paper,) = [ref for ref in cff["references"] if ref["type"] == "conference-paper"]
    assert paper["title"] == PAPER_TITLE
    assert [author["family-names"] for author in paper["authors"]] == PAPER_AUTHORS
    assert all(author.get("given-names") for author in paper["authors"])
    assert (paper["year"], paper["volume"], paper["start"], paper["end"]) == (2020, 121, 156, 173)
    assert "MIDL" in paper["conference"]["name"]


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_how_to_cite_names_the_citation_file_and_the_paper(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    section = text.split("## How to cite", 1)
    assert len(section) == 2, f"{page} has no '## How to cite' section"
    body = section[1].split("\n## ", 1)[0]
    assert "CITATION.cff" in body
    assert PAPER_TITLE in " ".join(body.split())  # the title may be wrapped
    if page == "README.md":
        assert "CHANGELOG.md" in text


def test_packaging_metadata():
    pyproject = _pyproject()
    project = pyproject["project"]
    # SPDX license with its file (PEP 639); setuptools refuses a "License ::" classifier beside it
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert "MIT License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]
    # one classifier for each supported Python version, from requires-python to the newest tested
    assert project["requires-python"] == ">=3.10"
    python = re.compile(r"Programming Language :: Python :: 3\.(\d+)")
    versions = sorted(int(m[1]) for c in project["classifiers"] if (m := python.fullmatch(c)))
    assert versions == [10, 11, 12, 13]
    assert project["keywords"]
    # a backend that reads the SPDX license (setuptools >= 77), pinned exactly for CI's builds
    (requirement,) = pyproject["build-system"]["requires"]
    assert re.fullmatch(r"setuptools>=77\.0\.3,<\d+", requirement)
    pins = (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    (setuptools_pin,) = [line for line in pins if line.startswith("setuptools==")]
    pinned_major = int(setuptools_pin.split("==")[1].split(".")[0])
    assert 77 <= pinned_major < int(requirement.rsplit("<", 1)[1])
    assert [line for line in pins if line.startswith("build==")]
