"""The GPU timing script runs end to end on CPU at toy size and writes its JSON."""

from __future__ import annotations

import json

from reference_models import gpu_timing


def test_gpu_timing_cpu_smoke(tmp_path, capsys):
    argv = [
        "--steps", "2", "--warmup", "0", "--size", "16", "--width", "0.125", "--volumes", "3",
        "--eval-volumes", "1", "--device", "cpu", "--out", str(tmp_path),
    ]  # fmt: skip
    assert gpu_timing.main(argv) == 0
    report = json.loads((tmp_path / "gpu_timing.json").read_text())
    assert set(report["modes"]) == {"none", "exact", "sampled"}
    for mode in report["modes"].values():
        assert mode["steps_timed"] == 2
        assert mode["median_step_s"] > 0
        assert 0.0 <= mode["aurc"] <= 1.0
    assert report["modes"]["none"]["step_time_vs_none"] == 1.0
    assert "ms/step" in capsys.readouterr().out
