"""AURC and relatives on 10,000,000 float32 scores (20% errors): NumPy and PyTorch CPU, time and memory.

Run: ``python benchmarks/bench_metrics.py [--n 10000000] [--repeats 5] [--no-torch]``. Prints medians
measured side by side in this process, then a Markdown table ready to paste into the README:

* NumPy: ``aurc``, ``augrc``, ``e_aurc`` (and ``aurc(ties="expected")``) against a bare ``np.sort`` of the
  scores (targets: <= 2.0x continuous, <= 1.5x with heavy ties), and the peak extra memory traced during
  one call as a multiple of the input bytes (``u`` and ``correct``; target <= 1.5x);
* PyTorch CPU tensors: ``aurc`` against a bare ``torch.sort`` (target <= 2.5x) and torch-uncertainty's
  ``AURC`` metric on the same tensors (target: at least 3x faster), with the peak extra resident memory.
  torch-uncertainty is optional (``pip install --no-deps torch-uncertainty einops``: its dependencies pull
  torchvision, so it is not a project extra); without it
  the peer is skipped with a message. Its package imports torchvision, so its risk-coverage module is
  loaded on its own.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import statistics
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _memory import load_line, peak_rss_extra_mib, peak_traced_mib

import selectivekit as sk


def median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_uncertainty_aurc():
    """torch-uncertainty's ``AURC`` class, or None (with the reason printed)."""
    try:
        spec = importlib.util.find_spec("torch_uncertainty")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        hint = "pip install --no-deps torch-uncertainty einops"
        print(f"torch-uncertainty: not installed, peer skipped ({hint})")
        return None
    path = pathlib.Path(spec.submodule_search_locations[0]) / "metrics/classification/risk_coverage.py"
    try:
        mod_spec = importlib.util.spec_from_file_location("_tu_risk_coverage", path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    except Exception as exc:  # its imports may fail on another version
        print(f"torch-uncertainty: could not load its AURC module ({type(exc).__name__}: {exc}); skipped")
        return None
    return module.AURC


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    correct = rng.random(args.n) >= 0.2
    base = rng.random(args.n, dtype=np.float32)
    u_cont = np.where(correct, base, np.sqrt(base)).astype(np.float32)  # errors tend to higher u
    cases = {"continuous": u_cont, "heavy ties (1e-3)": np.round(u_cont, 3).astype(np.float32)}
    inputs = u_cont.nbytes + correct.nbytes
    rows = []
    print(f"n={args.n:,} float32 scores, 20% errors; medians of {args.repeats} runs; {load_line()}")
    for case, u in cases.items():
        t_sort = median_time(lambda u=u: np.sort(u), args.repeats)
        fns = {
            "aurc": lambda u=u: sk.aurc(u, correct),
            "augrc": lambda u=u: sk.augrc(u, correct),
            "e_aurc": lambda u=u: sk.e_aurc(u, correct),
            'aurc(ties="expected")': lambda u=u: sk.aurc(u, correct, ties="expected"),
        }
        for name, fn in fns.items():
            t = median_time(fn, args.repeats)
            mem = peak_traced_mib(fn) * 2**20 / inputs
            rows.append(("NumPy", case, name, t, f"{t / t_sort:.2f}x np.sort ({t_sort * 1e3:.0f} ms)", mem))
            print(
                f"  numpy {case:18s} {name:22s} {t * 1e3:7.1f} ms = {t / t_sort:4.2f}x np.sort, "
                f"peak extra {mem:4.2f}x inputs"
            )
    if not args.no_torch:
        import torch

        peer_cls = torch_uncertainty_aurc()
        tc = torch.from_numpy(correct)
        for case, u in cases.items():
            tu = torch.from_numpy(u)
            t_ours = median_time(lambda tu=tu: sk.aurc(tu, tc), args.repeats)
            t_sort = median_time(lambda tu=tu: torch.sort(tu), args.repeats)
            mem = peak_rss_extra_mib(lambda tu=tu: sk.aurc(tu, tc)) * 2**20 / inputs
            vs = f"{t_ours / t_sort:.2f}x torch.sort ({t_sort * 1e3:.0f} ms)"
            line = f"  torch {case:18s} aurc {t_ours * 1e3:7.1f} ms = {vs}, peak extra {mem:4.2f}x inputs"
            if peer_cls is not None:

                def peer(tu=tu):
                    metric = peer_cls()
                    metric.scores.append(1.0 - tu)  # confidence: higher = more confident
                    metric.errors.append((~tc).float())
                    with warnings.catch_warnings():  # states filled directly, not through update()
                        warnings.simplefilter("ignore")
                        return float(metric.compute())

                t_peer = median_time(peer, max(1, args.repeats // 2))
                m_peer = peak_rss_extra_mib(peer) * 2**20 / inputs
                vs += f"; torch-uncertainty {t_peer * 1e3:.0f} ms = {t_peer / t_ours:.1f}x slower"
                line += (
                    f" | torch-uncertainty AURC {t_peer * 1e3:7.1f} ms ({t_peer / t_ours:.1f}x ours), "
                    f"peak extra {m_peer:4.2f}x, value {peer():.6f} vs ours {sk.aurc(tu, tc):.6f}"
                )
            rows.append(("PyTorch CPU", case, "aurc", t_ours, vs, mem))
            print(line)
    print("\nReady to paste (README, performance):\n")
    print(f"Measured {load_line()}; n = {args.n:,}, medians of {args.repeats}.\n")
    print("| arrays | scores | call | time | ratio | peak extra memory |")
    print("|---|---|---|---|---|---|")
    for lib, case, name, t, ratio, mem in rows:
        print(f"| {lib} | {case} | `{name}` | {t * 1e3:.0f} ms | {ratio} | {mem:.2f}x inputs |")


if __name__ == "__main__":
    main()
