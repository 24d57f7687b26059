"""The benchmark scripts run (their numbers come from `make bench` and bench/gpu.py on a GPU)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_benchmark_tiny_runs_on_cpu_and_reports_both_steps(tmp_path):
    out = tmp_path / "gpu-tiny.json"
    done = subprocess.run([sys.executable, "bench/gpu.py", "--tiny", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["presets"]) == {"blap_stage2", "mint_stage2", "musilingo_stage2"}
    assert report["matmul_tflops"] > 0
    for name, r in report["presets"].items():
        for side in ("bridgebench", "hand_wired"):
            m = r[side]
            assert m["samples_per_s"] > 0 and m["flop_per_step"] > 0 and math.isfinite(m["loss"]), (name, side)
            assert 0 < m["share_of_matmul_rate"]
        assert r["speedup"] == r["bridgebench"]["samples_per_s"] / r["hand_wired"]["samples_per_s"]
    # Same model, same batch: the Q-Former + T5 paths count the same FLOPs (one computation, two codes).
    for name in ("blap_stage2", "mint_stage2"):
        r = report["presets"][name]
        assert r["bridgebench"]["flop_per_step"] == r["hand_wired"]["flop_per_step"], name


def test_gpu_benchmark_refuses_paper_sizes_without_a_gpu():
    if __import__("torch").cuda.is_available():
        return
    done = subprocess.run([sys.executable, "bench/gpu.py", "--presets", "blap_stage2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--tiny" in done.stderr


@pytest.mark.slow
def test_gpu_benchmark_switch_ablation_runs_tiny(tmp_path):
    out = tmp_path / "gpu-tiny.json"
    done = subprocess.run([sys.executable, "bench/gpu.py", "--tiny", "--ablate", "--presets", "blap_stage2",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    switches = json.loads(out.read_text())["switches"]
    assert set(switches) == {"frozen_fp32", "compile", "qformer_grad_checkpointing"}
    assert all(s["samples_per_s"] > 0 for s in switches.values())
