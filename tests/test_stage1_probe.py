"""The statistics of bench/stage1_probe.py (the stage-1 query-collapse diagnostic) on tensors whose
answer is known: identical queries, independent queries, separable and unseparable labels."""

from __future__ import annotations

import importlib.util
import os

import torch
import yaml

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


def test_attention_entropy_is_one_for_uniform_rows_and_zero_for_one_hot_rows():
    uniform = torch.full((2, 3, 4, 10), 0.1)
    assert abs(probe.attention_entropy(uniform, None) - 1.0) < 1e-6
    one_hot = torch.zeros(2, 3, 4, 10)
    one_hot[..., 0] = 1.0
    assert probe.attention_entropy(one_hot, None) < 1e-6
    # Uniform over the 5 frames a row may see (the rest is padding) is uniform too.
    half = torch.zeros(2, 3, 4, 10)
    half[..., :5] = 0.2
    mask = torch.zeros(2, 1, 10, dtype=torch.bool)
    mask[..., :5] = True
    assert abs(probe.attention_entropy(half, mask) - 1.0) < 1e-6


def test_layer_stats_sees_uniform_cross_attention_and_identical_queries():
    from conftest import tiny_batch, tiny_module

    m = tiny_module(encoder="mert", bridge="qformer", llm="causal").eval()
    bridge = m.bridge
    with torch.no_grad():
        feats, mask = m.encode(tiny_batch(m))
        feats = feats.float()
        crosses = [layer.crossattention for layer in bridge.qformer.encoder.layer if layer.crossattention is not None]
        # The probe's explicit attention is the layer's own: residual + LayerNorm of its update = forward.
        x = torch.randn(feats.shape[0], bridge.num_queries, bridge.hidden_size)
        audio, cross_mask = bridge.ln_audio(feats), mask.bool().unsqueeze(1)
        probs, update = crosses[0].explicit(x, audio, cross_mask)
        torch.testing.assert_close(crosses[0].output.LayerNorm(update + x), crosses[0](x, audio, cross_mask))
        assert torch.allclose(probs.sum(-1), torch.ones(()))
        for cross in crosses:
            cross.self.query.weight.mul_(300.0)  # large logits: peaked attention
        normal = probe.layer_stats(bridge, feats, mask)
        for cross in crosses:
            cross.self.query.weight.zero_()  # equal logits: uniform attention
            cross.self.query.bias.zero_()
        bridge.qformer.query_tokens.copy_(bridge.qformer.query_tokens[:, :1].expand_as(bridge.qformer.query_tokens))
        merged = probe.layer_stats(bridge, feats, mask)
    entropy = [k for k in normal if "entropy" in k]
    assert len(entropy) == len(crosses) and all(normal[k] < 0.9 for k in entropy)
    assert all(abs(merged[k] - 1.0) < 1e-4 for k in entropy)
    cos = [k for k in merged if k.endswith("query cos")]
    assert len(cos) == len(bridge.qformer.encoder.layer) and all(merged[k] > 0.9999 for k in cos)
    assert all(normal[k] < 0.99 for k in cos)
    assert not any(m._forward_hooks for m in [*bridge.qformer.encoder.layer, *crosses])  # hooks removed


def test_soft_prompt_cos_reads_a_trained_run_on_its_own_data(tmp_path):
    from bridgebench.engine.lightning_cli import run

    tiny = os.path.join(ROOT, "experiments", "tiny.yaml")
    run(["fit", "--config", os.path.join(ROOT, "experiments", "blap_stage2.yaml"), "--config", tiny,
         f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=1"])
    row = probe.soft_prompt_cos(str(tmp_path), clips=4)
    config = yaml.safe_load(next(tmp_path.glob("logs/*-fit/config.yaml")).read_text())
    assert row["tokens"] == config["model"]["bridge"]["qformer"]["num_queries"]
    assert -1.0 <= row["centered_token_cos"] <= 1.0 and -1.0 <= row["token_cos"] <= 1.0
    assert row["centered_token_cos"] != row["token_cos"]  # the clips' mean was taken out
