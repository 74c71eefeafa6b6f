"""``report.html`` of ``selectivekit evaluate``/``compare`` and of ``python -m reference_models
reproduce``, and the names the reports share.

The written page is parsed with ``html.parser``: its tables must hold every number of ``report.json``
(formatted here from the JSON, independently of the report code), its images must be ``data:`` URIs whose
bytes are the PNG files beside it, and nothing may point outside the page (no script, style sheet, link or
``http(s)`` address). The column names of the evaluate, compare and reproduce tables must agree.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from selectivekit.cli import main
from selectivekit.report import TERMS, report_html

PNG = b"\x89PNG\r\n\x1a\n"
BLOCKS = {"p", "li", "h1", "h2", "h3", "td", "th", "tr", "blockquote", "figure", "figcaption", "pre"}


class Page(HTMLParser):
    """Tables (rows of cell texts), images' ``src``, every tag and attribute, and the visible text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.images: list[dict[str, str]] = []
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str, str]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self._skip = 0
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag in BLOCKS:
            self.text.append(" ")
        self.attributes += [(tag, name, value or "") for name, value in attrs]
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs))
        elif tag in ("style", "title"):
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag in ("style", "title"):
            self._skip -= 1

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if not self._skip:
            self.text.append(data)

    @property
    def visible(self) -> str:
        return " ".join("".join(self.text).split())


def _page(folder: Path) -> Page:
    return Page((folder / "report.html").read_text(encoding="utf-8"))


def _check_self_contained(page: Page, folder: Path, figures: list[str]) -> None:
    """No reference outside the page; the images are the folder's PNG files, in order, inlined."""
    assert not {"script", "link", "iframe", "object", "embed", "a", "base"} & set(page.tags)
    for tag, name, value in page.attributes:
        assert not re.search(r"(?i)\b(https?|file|ftp)://", value), (tag, name, value[:80])
        if name in ("src", "href", "srcset", "data", "action", "poster"):
            assert value.startswith("data:image/png;base64,"), (tag, name, value[:80])
    style = "".join(re.findall(r"<style>(.*?)</style>", (folder / "report.html").read_text(), flags=re.S))
    assert "url(" not in style and "@import" not in style
    srcs = [image["src"] for image in page.images]
    assert len(srcs) == len(figures)
    for src, name in zip(srcs, figures, strict=True):
        data = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
        assert data.startswith(PNG)
        assert data == (folder / name).read_bytes()


def _pm(entry: dict) -> str:
    return f"{100 * entry['mean']:.2f} ± {100 * entry['std']:.2f}"


def _quiet(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two evaluations of the same 5 images (one streaming, one exact) and their comparison."""
    root = tmp_path_factory.mktemp("html")
    rng = np.random.default_rng(4)
    for name in ("pred", "label", "unc_a", "unc_b"):
        (root / name).mkdir()
    for i in range(5):
        label = rng.integers(0, 3, size=(9, 8, 5)).astype(np.uint8)
        wrong = rng.random(label.shape) < 0.15
        pred = np.where(wrong, (label + 1) % 3, label).astype(np.uint8)
        np.save(root / "pred" / f"case{i}_pred.npy", pred)
        np.save(root / "label" / f"case{i}.npy", label)
        np.save(
            root / "unc_a" / f"case{i}_unc.npy", (rng.random(label.shape) + 0.3 * wrong).astype(np.float32)
        )
        np.save(
            root / "unc_b" / f"case{i}_unc.npy", (rng.random(label.shape) + 1.0 * wrong).astype(np.float32)
        )
    common = ["evaluate", "--pred", str(root / "pred"), "--label", str(root / "label"), "--num-classes", "3"]
    printed = {}
    for run, extra in (("a", []), ("b", ["--exact"])):
        code, out, err = _quiet(
            [*common, "--uncertainty", str(root / f"unc_{run}"), "--out", str(root / run), "--quiet", *extra]
        )
        assert code == 0, err
        printed[run] = out
    names = ["--name-a", "<b>base</b> & co", "--name-b", "ours|v2"]  # markup and a pipe in the names
    code, out, err = _quiet(["compare", str(root / "a"), str(root / "b"), "--out", str(root / "cmp"), *names])
    assert code == 0, err
    printed["cmp"] = out
    return root, printed


@pytest.mark.parametrize("run", ["a", "b"])
def test_evaluate_html_holds_every_number_of_the_report(runs, run):
    root, _ = runs
    folder = root / run
    report = json.loads((folder / "report.json").read_text())
    page = _page(folder)
    _check_self_contained(page, folder, ["risk_coverage.png", "dice_coverage.png", "dice_histogram.png"])
    # the coverages, the Dice per class, the voxel errors, every case worst first
    table, per_class, voxel_errors, cases = page.tables
    errors = report["voxel_errors"]
    assert voxel_errors[0] == ["AURC %", "e-AURC %", "AUGRC %"]
    assert voxel_errors[1] == [f"{100 * errors[key]:.3f}" for key in ("aurc", "e_aurc", "augrc")]
    assert [row[0] for row in per_class[1:]] == [str(row["class"]) for row in report["per_class"]]
    assert table[0] == [TERMS[k] for k in ("coverage", "realized", "threshold", "dice", "p5")]
    expected = [
        [
            f"{row['requested']:.2f}",
            f"{row['coverage']:.3f}",
            f"{row['threshold']:#.4g}",
            _pm(row),
            f"{100 * row['p5']:.2f}",
        ]
        for row in report["coverages"]
    ]
    assert table[1:] == expected
    text = page.visible
    full = report["dice_full"]
    assert f"images: {report['n_images']}, voxels: {report['n_voxels']:,}" in text
    assert f"AURC % (risk = 1 - mean Dice, lower is better): {100 * report['aurc_dice']:.3f}" in text
    assert f"{TERMS['dice_full']}: {_pm(full)} (5th percentile {100 * full['p5']:.2f})" in text
    assert "classes evaluated: 1..2 of 0..2 (background 0 left out)" in text
    for key in ("coverage", "realized", "threshold", "dice", "p5"):  # every column explained under the table
        assert f"{TERMS[key]}:" in text
    # every case, worst first: sorted here by (Dice at full coverage, name)
    requested = [row["requested"] for row in report["coverages"]]
    assert cases[0] == ["Case", TERMS["dice_full"], *(f"Dice % at coverage {c:.2f}" for c in requested)]
    rows = sorted(report["per_image"], key=lambda row: (row["dice_full"], row["name"]))
    assert report["worst_first"] == [row["name"] for row in rows]
    assert cases[1:] == [
        [
            row["name"],
            f"{100 * row['dice_full']:.2f}",
            *(f"{100 * c['dice']:.2f}" for c in row["coverages"]),
        ]
        for row in rows
    ]
    markdown = (folder / "report.md").read_text()
    assert "## Per case, worst first" in markdown and "ddof" not in markdown and " path)" not in markdown


def test_compare_html_holds_every_number_and_escapes_the_names(runs):
    root, _ = runs
    folder = root / "cmp"
    comparison = json.loads((folder / "comparison.json").read_text())
    html_text = (folder / "report.html").read_text(encoding="utf-8")
    assert "<b>base</b>" not in html_text and "&lt;b&gt;base&lt;/b&gt; &amp; co" in html_text
    page = _page(folder)
    _check_self_contained(page, folder, ["figure2.png", "dice_coverage.png"])
    table, quadrants = page.tables[:2]
    a, b = "<b>base</b> & co", "ours|v2"
    assert table[0] == [TERMS[k] for k in ("coverage", "model", "realized", "dice", "p5")]
    expected = [
        [f"{row['requested']:.2f}", name, f"{r['coverage']:.3f}", _pm(r), f"{100 * r['p5']:.2f}"]
        for row in comparison["coverages"]
        for name, r in ((a, row["a"]), (b, row["b"]))
    ]
    assert table[1:] == expected
    assert quadrants[0] == ["Coverage", "Q1", "Q2", "Q3", "Q4", "on an axis"]
    assert quadrants[1:] == [
        [
            f"{row['requested']:.2f}",
            *(f"{100 * row['quadrant_share'][k]:.1f}" for k in "1234"),
            f"{100 * row['on_axis_share']:.1f}",
        ]
        for row in comparison["coverages"]
    ]
    # every case, worst first: sorted here by the lower of the two runs' Dice at full coverage
    reports = [json.loads((root / run / "report.json").read_text()) for run in ("a", "b")]
    full = [{row["name"]: row["dice_full"] for row in r["per_image"]} for r in reports]
    names = sorted(full[0], key=lambda name: (min(full[0][name], full[1][name]), name))
    assert comparison["worst_first"] == names
    cases = page.tables[-1]
    requested = [row["requested"] for row in comparison["coverages"]]
    assert cases[0] == [
        "Case",
        f"{a}: {TERMS['dice_full']}",
        f"{b}: {TERMS['dice_full']}",
        *(f"B − A: Dice % at coverage {c:.2f}" for c in requested),
    ]
    dice = [
        {(row["name"], c["requested"]): c["dice"] for row in r["per_image"] for c in row["coverages"]}
        for r in reports
    ]
    assert cases[1:] == [
        [
            name,
            f"{100 * full[0][name]:.2f}",
            f"{100 * full[1][name]:.2f}",
            *(f"{100 * (dice[1][name, c] - dice[0][name, c]):+.2f}" for c in requested),
        ]
        for name in names
    ]
    text = page.visible
    assert f"{comparison['n_images']} images." in text
    # the red numbers of Figure 2 are explained in the text and in the figure's caption
    assert "The red numbers in its corners, and the table below, are the percentages of the images" in text
    (caption,) = re.findall(r"<figcaption>(Figure 2:.*?)</figcaption>", html_text, flags=re.S)
    assert "Red: the percentage of images in each quadrant" in caption and "same axes" in caption
    for run in ("run_a", "run_b"):
        assert f"**{100 * comparison[run]['aurc_dice']:.3f}**" not in text  # bold became <strong>
        assert f"{100 * comparison[run]['aurc_dice']:.3f}" in text


# ------------------------------------------------------------------------------------------------------
# the reference trainers' report


@pytest.fixture(scope="module")
def reproduce_report(tmp_path_factory):
    """``reference_models.report.write_report`` on two parts of tiny binary predictions (no training)."""
    from reference_models.evaluate import Prediction, evaluate_part
    from reference_models.report import write_report

    def predictions(seed: int, separation: float, part: str) -> list:
        rng = np.random.default_rng(seed)
        out = []
        for i in range(6):
            label = (rng.random((16, 16)) < 0.4).astype(np.uint8)
            wrong = rng.random(label.shape) < 0.1
            pred = np.where(wrong, 1 - label, label).astype(np.uint8)
            u = (rng.random(label.shape) + separation * wrong).astype(np.float32)
            out.append(Prediction(f"{part}_{i}", part, None, pred, label, u))
        return out

    results = {
        kind: {part: evaluate_part(predictions(j, sep, part), 2) for j, part in enumerate(("testA", "testB"))}
        for kind, sep in (("baseline", 0.2), ("uncertainty_aware", 0.9))
    }
    out = tmp_path_factory.mktemp("reproduce") / "out"
    write_report(out, "synthetic-glas", "torch", results, notes=["<i>a note</i> with & and |"])
    return out, results


def test_reproduce_html_holds_every_number_of_the_report(reproduce_report):
    out, _ = reproduce_report
    report = json.loads((out / "report.json").read_text())
    figures = [f"{kind}_{part}.png" for part in ("testA", "testB") for kind in ("dice_coverage", "per_image")]
    page = _page(out)
    _check_self_contained(page, out, figures)
    table = page.tables[0]
    kinds = (("baseline", "baseline"), ("uncertainty_aware", "ours"))
    assert table[0] == [TERMS[k] for k in ("coverage", "model", "realized", "dice", "p5")]
    models = report["models"]
    expected = []
    for key in ["0.95", "0.90", "0.80", "0.70"]:
        for kind, short in kinds:
            e = models[kind]["dice_at_coverage"][key]
            expected.append([key, short, f"{e['coverage']:.3f}", _pm(e), f"{100 * e['p5']:.2f}"])
    assert table[1:] == expected
    text = page.visible
    assert "Synthetic data." in text and "<i>a note</i> with & and |" in text  # escaped, shown as typed
    assert "Held-out images: testA: 6 images, testB: 6 images." in text
    assert (
        f"AURC % (risk = 1 - mean Dice, lower is better): baseline {100 * models['baseline']['aurc']:.3f}, "
        f"ours {100 * models['uncertainty_aware']['aurc']:.3f}"
    ) in text
    for kind, _ in kinds:
        for part, entry in models[kind]["parts"].items():
            assert f"{part} (6 images): AURC % {100 * entry['aurc']:.3f}" in text
    paired = page.tables[1]  # ours minus baseline, over seeds and per image
    assert [row[0] for row in paired[1:]] == [
        "AURC %",
        "Dice % at full coverage",
        *(f"Dice % at coverage {key}" for key in ("0.95", "0.90", "0.80", "0.70")),
    ]
    diff = report["paired"]["over_seeds"]["dice_at_coverage"]["0.90"]["mean"]
    assert paired[4][1] == f"{100 * diff:+.2f}"


@pytest.mark.parametrize("n_seeds", [1, 3])
@pytest.mark.parametrize("n_images", [6, 12])
def test_reproduce_summary_promises_intervals_only_with_seeds(reproduce_report, n_seeds, n_images):
    """One seed: no header that promises an interval or a test across seeds; fewer than 10 images: a
    warning beside the per-image intervals."""
    from reference_models.report import format_table

    out, _ = reproduce_report
    report = json.loads((out / "report.json").read_text())
    report["seeds"]["values"] = list(range(n_seeds))
    if n_seeds > 1:  # the shape of several seeds' numbers: a spread, an interval and a p-value
        for kind in report["seeds"]["summary"].values():
            for key in ("aurc", "dice_full_coverage"):
                kind[key] |= {"n": n_seeds, "std": 0.01}
        for key in ("aurc", "dice_full_coverage"):
            entry = report["paired"]["over_seeds"][key]
            entry |= {"ci95": [entry["mean"] - 0.01, entry["mean"] + 0.01], "p_value": 0.04}
    report["paired"]["per_image_dice"]["dice_full_coverage"]["n_images"] = n_images
    table = format_table(report)
    promise = "over seeds (mean [95% CI], paired t-test)"
    assert (promise in table) == (n_seeds > 1)
    assert ("with one seed (no interval or test across seeds" in table) == (n_seeds == 1)
    over = report["paired"]["over_seeds"]["aurc"]
    line = next(line for line in table.splitlines() if line.startswith("ours − baseline") and "AURC" in line)
    assert (f"AURC % {100 * over['mean']:+.3f}" + (" [" if n_seeds > 1 else ";")) in line
    assert ("t-test" in line) == (n_seeds > 1)
    warning = f"computed from only {n_images} images; with fewer than 10 images"
    assert (warning in table) == (n_images < 10)


def test_reproduce_report_explains_figure2_and_its_one_seed(reproduce_report):
    out, _ = reproduce_report
    markdown = (out / "report.md").read_text()
    assert "over seeds: mean [95% CI]" not in markdown  # one seed: no interval or test across seeds
    assert "| ours − baseline one seed: the difference (no CI or test) |" in markdown
    assert "The red numbers in the corners are the percentages of the images in each" in markdown
    assert "ddof" not in markdown
    captions = re.findall(r"!\[(Per-image differences.*?)\]\(per_image_(test[AB])\.png\)", markdown)
    assert [part for _, part in captions] == ["testA", "testB"]
    assert all("Red: the percentage of images in each quadrant" in caption for caption, _ in captions)


def _header(markdown: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith("| "))
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def test_the_reports_use_the_same_names(runs, reproduce_report):
    root, printed = runs
    out, _ = reproduce_report
    evaluate = _header((root / "a" / "report.md").read_text())
    compare = _header((root / "cmp" / "report.md").read_text())
    reproduce = _header((out / "report.md").read_text())
    assert evaluate == [
        "Coverage",
        "Realized coverage",
        "Threshold",
        "Dice % (mean ± std)",
        "Dice % (5th percentile)",
    ]
    # one threshold per part in reproduce, so no threshold column; a model column where two are compared
    shared = [name for name in evaluate if name != "Threshold"]
    assert reproduce == compare == [shared[0], "Model", *shared[1:]]
    terminal = re.split(r"\s{2,}", printed["a"].splitlines()[1].strip())
    assert terminal == shared
    from reference_models.report import format_table

    table = format_table(json.loads((out / "report.json").read_text()))
    assert _header(table) == reproduce  # the terminal prints the same table as report.md
    for text in (printed["a"], printed["cmp"], table, (root / "a" / "report.md").read_text()):
        assert "AURC %" in text and "5PCTL" not in text and "5pct" not in text


# ------------------------------------------------------------------------------------------------------
# the renderer on its own


def test_renderer_blocks_inline_markup_and_alignment(tmp_path):
    markdown = "\n".join(
        [
            "# Title <x>",
            "",
            "Some **bold**, *italic* and `code <y>` text",
            "over two lines.",
            "",
            "> **Warning** quoted",
            "",
            "- one",
            "- two & three",
            "",
            "| left | right | centre | plain |",
            "|:---|---:|:---:|---|",
            "| a | 1.00 | c | a \\| b |",
            "",
            "```",
            "raw <b>not bold</b>",
            "```",
        ]
    )
    page_text = report_html(markdown, tmp_path)
    page = Page(page_text)
    # the renderer's line breaks between tags and inside a paragraph are white space to a browser
    flat = " ".join(re.sub(r">\s+<", "><", page_text).split())
    assert "<title>Title &lt;x&gt;</title>" in page_text
    assert "<h1>Title &lt;x&gt;</h1>" in page_text
    inline = (
        "Some <strong>bold</strong>, <em>italic</em> and <code>code &lt;y&gt;</code> text over two lines."
    )
    assert f"<p>{inline}</p>" in flat
    assert "<blockquote><p><strong>Warning</strong> quoted</p></blockquote>" in flat
    assert "<li>two &amp; three</li>" in page_text
    assert page.tables == [[["left", "right", "centre", "plain"], ["a", "1.00", "c", "a | b"]]]
    assert '<td style="text-align: left;">a</td>' in page_text
    assert '<td style="text-align: right;">1.00</td>' in page_text
    assert '<td style="text-align: center;">c</td>' in page_text
    assert "<td>a | b</td>" in page_text
    assert re.search(r"<pre><code>raw &lt;b&gt;not bold&lt;/b&gt;\n?</code></pre>", page_text)


def test_renderer_inlines_only_png_files_of_the_folder(tmp_path):
    folder = tmp_path / "report"
    folder.mkdir()
    from PIL import Image

    Image.new("RGB", (3, 2), "red").save(folder / "ok.png")
    (folder / "fake.png").write_bytes(b"not a png")
    Image.new("RGB", (3, 2), "blue").save(tmp_path / "outside.png")
    markdown = "\n".join(
        [
            "![fine](ok.png)",
            "![fake](fake.png)",
            "![outside](../outside.png)",
            "![web](https://example.org/x.png)",
            "![absent](absent.png)",
        ]
    )
    page = Page(report_html(markdown, folder))
    assert len(page.images) == 1
    assert base64.b64decode(page.images[0]["src"].split(",", 1)[1]) == (folder / "ok.png").read_bytes()
    text = page.visible
    for name in ("fake.png", "../outside.png", "absent.png"):
        assert f"{name} not found" in text
    assert not [value for _, _, value in page.attributes if "example.org" in value]
    assert "https://example.org/x.png not found" in text  # shown as text, never loaded


def test_thresholds_have_one_precision_everywhere(runs, tmp_path):
    """The coverage table, the fixed-threshold section and ``calibrate``'s line print 4 significant digits."""
    pytest.importorskip("scipy")
    root, _ = runs
    folders = [
        "--pred",
        str(root / "pred"),
        "--label",
        str(root / "label"),
        "--uncertainty",
        str(root / "unc_a"),
    ]
    threshold_file = tmp_path / "threshold.json"
    code, _, err = _quiet(
        [
            "calibrate",
            *folders,
            "--num-classes",
            "3",
            "--max-dice-loss",
            "0.3",
            "--quiet",
            "--out",
            str(threshold_file),
        ]
    )
    assert code == 0, err
    t = json.loads(threshold_file.read_text())["threshold"]
    assert t is not None
    assert f"threshold {t:#.4g}, calibration coverage" in err
    out = tmp_path / "fixed"
    argv = ["evaluate", *folders, "--num-classes", "3", "--quiet", "--threshold", str(threshold_file)]
    code, _, err = _quiet([*argv, "--out", str(out)])
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    calibration = report["fixed_threshold"]["calibration_coverage"]
    text = _page(out).visible
    assert f"threshold from {threshold_file}: {t:#.4g} (" in text  # the path is a <code> span
    assert f"calibration coverage {calibration:.3f})" in text
    for row, entry in zip(_page(out).tables[0][1:], report["coverages"], strict=True):
        mantissa = row[2].split("e")[0].lstrip("-").replace(".", "").lstrip("0")
        assert len(mantissa) == 4, row  # 4 significant digits, trailing zeros kept
        assert float(row[2]) == pytest.approx(entry["threshold"], rel=1e-3)
