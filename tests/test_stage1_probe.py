"""The statistics of bench/stage1_probe.py (the stage-1 query-collapse diagnostic) on tensors whose
answer is known: identical queries, independent queries, separable and unseparable labels."""

from __future__ import annotations

import importlib.util
import os

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("stage1_probe", os.path.join(ROOT, "bench", "stage1_probe.py"))
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)


def test_collapsed_queries_have_cosine_one_and_few_directions():
    g = torch.Generator().manual_seed(0)
    signal = torch.randn(300, 1, 32, generator=g)
    collapsed = signal.expand(-1, 8, -1) + 0.01 * torch.randn(300, 8, 32, generator=g)
    diverse = torch.randn(300, 8, 32, generator=g)
    low, high = probe.query_stats(collapsed), probe.query_stats(diverse)
    assert low["query_cos"] > 0.99 and low["centered_query_cos"] > 0.99
    assert abs(high["query_cos"]) < 0.05 and abs(high["centered_query_cos"]) < 0.05
    assert low["pcs_90"] <= 32 < high["pcs_90"]  # one query's worth of directions vs all 8 x 32
    assert low["pcs_99"] < high["pcs_99"]


def test_linear_probe_reads_separable_labels_and_not_noise():
    g = torch.Generator().manual_seed(1)
    labels = [["a", "b", "c"][i % 3] for i in range(240)]
    centers = torch.randn(3, 16, generator=g) * 3
    x = torch.stack([centers["abc".index(c)] for c in labels]) + torch.randn(240, 16, generator=g)
    assert probe.probe_accuracy(x[:180], labels[:180], x[180:], labels[180:]) == 100.0
    noise = torch.randn(240, 16, generator=g)
    assert probe.probe_accuracy(noise[:180], labels[:180], noise[180:], labels[180:]) < 60.0
