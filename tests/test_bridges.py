"""Bridges: pooling arithmetic, Q-Former initialisation, masks, and equality with transformers' Q-Formers."""

from __future__ import annotations

import math

import pytest
import torch

from bridgebench.bridges import BridgeNetBridge, LinearPoolBridge, QFormerBridge
from bridgebench.bridges.qformer import load_bert


def test_linear_pool_token_count_and_remainder_window():
    bridge = LinearPoolBridge(in_dim=3, out_dim=5, window=4)
    feats = torch.randn(2, 10, 3)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False  # second clip: 7 real frames
    out, out_mask = bridge(feats, mask)
    assert out.shape == (2, math.ceil(10 / 4), 5)
    # Window means before the projection (MusiLingo order), the remainder averaged into one token.
    expected0 = torch.stack([feats[0, 0:4].mean(0), feats[0, 4:8].mean(0), feats[0, 8:10].mean(0)])
    torch.testing.assert_close(out[0], bridge.proj(expected0))
    # Padding never enters a mean; a window without real frames is masked out.
    torch.testing.assert_close(out[1, 1], bridge.proj(feats[1, 4:7].mean(0)))
    assert out_mask.tolist() == [[True, True, True], [True, True, False]]


def test_linear_pool_paper_window_gives_three_tokens_for_ten_seconds_of_mert():
    bridge = LinearPoolBridge(in_dim=8, out_dim=8, window=325)
    out, _ = bridge(torch.randn(1, 749, 8), torch.ones(1, 749, dtype=torch.bool))  # MERT: 10 s -> 749 frames
    assert out.shape[1] == 3


def test_linear_pool_hidden_layer_is_a_gelu_mlp_on_the_window_means():
    linear = LinearPoolBridge(in_dim=3, out_dim=5, window=4)
    mlp = LinearPoolBridge(in_dim=3, out_dim=5, window=4, hidden=7)
    assert sum(p.numel() for p in linear.parameters()) == 3 * 5 + 5
    assert sum(p.numel() for p in mlp.parameters()) == (3 * 7 + 7) + (7 * 5 + 5)
    feats = torch.randn(1, 8, 3)
    out, _ = mlp(feats, torch.ones(1, 8, dtype=torch.bool))
    first, act = mlp.hidden
    expected = mlp.proj(torch.nn.functional.gelu(first(feats[0, :4].mean(0))))
    torch.testing.assert_close(out[0, 0], expected)


def test_linear_pool_tokens_expand_each_window_into_a_prefix():
    bridge = LinearPoolBridge(in_dim=3, out_dim=5, window=62, hidden=7, tokens=4)
    feats = torch.randn(2, 62, 3)
    mask = torch.ones(2, 62, dtype=torch.bool)
    out, out_mask = bridge(feats, mask)
    assert out.shape == (2, 4, 5) and out_mask.all()
    # ClipCap's mapping: the one whole-clip mean becomes 4 consecutive soft-prompt vectors.
    flat = bridge.proj(bridge.hidden(feats[1].mean(0)))
    torch.testing.assert_close(out[1], flat.view(4, 5))
    two = LinearPoolBridge(in_dim=3, out_dim=5, window=4, tokens=2)
    mask[0, 4:] = False  # the second window of clip 0 is padding: both of its vectors are masked
    _, m = two(feats[:, :8], mask[:, :8])
    assert m.tolist() == [[True, True, False, False], [True] * 4]


def test_qformer_initialisation_follows_blip2():
    config, bert, _ = load_bert("tiny", "bert")
    bert = {k.removeprefix("bert."): v for k, v in bert.items()}
    bridge = QFormerBridge(in_dim=24, out_dim=16, bert="tiny", num_queries=5, cross_attention_freq=2)
    layers = bridge.qformer.encoder.layer
    assert [i for i, layer in enumerate(layers) if layer.crossattention is not None] == [
        i for i in range(config.num_hidden_layers) if i % 2 == 0]
    assert layers[0].crossattention.self.key.in_features == 24  # audio width, from the encoder
    for i, layer in enumerate(layers):
        pre = f"encoder.layer.{i}."
        torch.testing.assert_close(layer.attention.self.query.weight, bert[pre + "attention.self.query.weight"])
        torch.testing.assert_close(layer.intermediate_query.dense.weight, bert[pre + "intermediate.dense.weight"])
        torch.testing.assert_close(layer.output_query.LayerNorm.weight, bert[pre + "output.LayerNorm.weight"])
    # Only the new parts start random: queries and cross-attention (stage 2 has no text branch).
    assert bridge.random_init and all(k == "query_tokens" or ".crossattention." in k for k in bridge.random_init)
    assert bridge.qformer.query_tokens.shape == (1, 5, config.hidden_size)
    assert bridge.proj.out_features == 16


def _hf_names(state: dict, layernorm: str) -> dict:
    """Our (BERT/LAVIS) names -> transformers' Q-Former names."""
    return {k.replace("embeddings.LayerNorm", layernorm).replace(".self.", ".attention."): v for k, v in state.items()}


def test_query_path_matches_transformers_blip2_qformer():
    from transformers import Blip2QFormerConfig, Blip2QFormerModel

    bridge = QFormerBridge(in_dim=24, out_dim=16, bert="tiny", num_queries=6).eval()
    c = bridge.qformer.config
    hf = Blip2QFormerModel(Blip2QFormerConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
        cross_attention_frequency=2, encoder_hidden_size=24, layer_norm_eps=c.layer_norm_eps)).eval()
    ours = {k: v for k, v in bridge.qformer.state_dict().items() if k != "query_tokens"}
    missing, unexpected = hf.load_state_dict(_hf_names(ours, "layernorm"), strict=False)
    assert not missing and not unexpected
    audio, mask = torch.randn(2, 9, 24), torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.no_grad():
        ref = hf(query_embeds=bridge.qformer.query_tokens.expand(2, -1, -1), encoder_hidden_states=audio,
                 encoder_attention_mask=mask.long()).last_hidden_state
        got = bridge.qformer(audio, mask)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_instruction_path_matches_transformers_instructblip_qformer():
    from transformers import InstructBlipQFormerConfig, InstructBlipQFormerModel

    bridge = BridgeNetBridge(in_dim=24, out_dim=16, bert="tiny", num_queries=6).eval()
    c = bridge.qformer.config
    hf = InstructBlipQFormerModel(InstructBlipQFormerConfig(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
        cross_attention_frequency=2, encoder_hidden_size=24, layer_norm_eps=c.layer_norm_eps,
        max_position_embeddings=c.max_position_embeddings, pad_token_id=c.pad_token_id)).eval()
    ours = {k: v for k, v in bridge.qformer.state_dict().items() if k != "query_tokens"}
    missing, unexpected = hf.load_state_dict(_hf_names(ours, "embeddings.layernorm"), strict=False)
    assert not unexpected and all("position_ids" in k for k in missing)
    tokens = bridge.text_processor(["what is the lead instrument?", "describe it"])
    audio, mask = torch.randn(2, 9, 24), torch.ones(2, 9, dtype=torch.bool)
    queries = bridge.qformer.query_tokens.expand(2, -1, -1)
    with torch.no_grad():
        ref = hf(input_ids=tokens["bridge_ids"], attention_mask=torch.cat(
            [torch.ones(2, 6, dtype=torch.long), tokens["bridge_mask"].long()], 1),
            query_embeds=queries, encoder_hidden_states=audio, encoder_attention_mask=mask.long()).last_hidden_state
        got = bridge.qformer(audio, mask, tokens["bridge_ids"], tokens["bridge_mask"])
    torch.testing.assert_close(got[:, :6], ref[:, :6], rtol=1e-5, atol=1e-5)


def test_bridgenet_reads_the_instruction_and_qformer_does_not():
    torch.manual_seed(0)
    net = BridgeNetBridge(in_dim=24, out_dim=16, bert="tiny", num_queries=4).eval()
    feats, mask = torch.randn(1, 7, 24), torch.ones(1, 7, dtype=torch.bool)
    a = net.text_processor(["what is the lead instrument?"])
    b = net.text_processor(["describe the rhythm"])
    with torch.no_grad():
        assert not torch.allclose(net(feats, mask, a)[0], net(feats, mask, b)[0])
        # Padding the instruction (batched with a longer one) changes nothing: the mask holds.
        both = net.text_processor(["what is the lead instrument?", "describe the rhythm of this slow piano waltz please"])
        first = {k: v[:1] for k, v in both.items()}
        torch.testing.assert_close(net(feats, mask, first)[0], net(feats, mask, a)[0], rtol=1e-5, atol=1e-6)
    plain = QFormerBridge(in_dim=24, out_dim=16, bert="tiny", num_queries=4).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(feats, mask, a)[0], plain(feats, mask, b)[0])


def test_qformer_ignores_padded_audio_frames():
    bridge = QFormerBridge(in_dim=24, out_dim=16, bert="tiny", num_queries=4).eval()
    feats = torch.randn(1, 5, 24)
    padded = torch.cat([feats, 100 * torch.randn(1, 3, 24)], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    with torch.no_grad():
        # ln_audio is per frame, so the real frames' features are the same in both.
        torch.testing.assert_close(bridge(padded, mask)[0], bridge(feats, mask[:, :5])[0], rtol=1e-5, atol=1e-6)


def test_bridgenet_without_instruction_tokens_says_what_is_missing():
    net = BridgeNetBridge(in_dim=24, out_dim=16, bert="tiny", num_queries=4)
    with pytest.raises(ValueError, match="bridgenet needs instruction tokens"):
        net(torch.randn(1, 3, 24), torch.ones(1, 3, dtype=torch.bool), {})


@pytest.mark.parametrize("cls", [QFormerBridge, BridgeNetBridge])
def test_standardized_queries_pass_the_clip_dependent_part_and_use_running_statistics_at_eval(cls):
    torch.manual_seed(0)
    bridge = cls(in_dim=24, out_dim=10, bert="tiny", num_queries=4, standardize_queries=True)
    plain = cls(in_dim=24, out_dim=10, bert="tiny", num_queries=4)
    plain.load_state_dict({k: v for k, v in bridge.state_dict().items() if not k.startswith("query_norm.")})
    text = None
    if cls is BridgeNetBridge:
        tok = bridge.text_processor(["Describe the music."] * 6)
        text = {k: v for k, v in tok.items()}
    feats = torch.randn(6, 9, 24) + 5.0  # a large offset shared by every clip
    mask = torch.ones(6, 9, dtype=torch.bool)
    bridge.train()
    prompt, _ = bridge(feats, mask, text)
    # Standardised over the batch, the queries average to zero, so the prompts average to the bias.
    torch.testing.assert_close(prompt.mean(0), bridge.proj.bias.expand(4, -1), atol=1e-5, rtol=0)
    spread = lambda p: (p.std(0).norm() / p.mean(0).norm()).item()  # noqa: E731
    plain.eval()
    with torch.no_grad():
        for _ in range(50):  # running statistics settle on this data
            bridge.train()(feats, mask, text)
        bridge.eval()
        alone = bridge(feats[:1], mask[:1], None if text is None else {k: v[:1] for k, v in text.items()})[0]
        together = bridge(feats, mask, text)[0]
        torch.testing.assert_close(alone[0], together[0])  # eval: no batch statistics
        for m in bridge.modules():  # no dropout: train and eval passes differ only in the statistics
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
            if hasattr(m, "attn_dropout"):
                m.attn_dropout = 0.0
        one = bridge.train()(feats[:1], mask[:1], None if text is None else {k: v[:1] for k, v in text.items()})[0]
        torch.testing.assert_close(one, alone)  # a training batch of one clip uses the running statistics
        assert spread(together) > 5 * spread(plain(feats, mask, text)[0])


@pytest.mark.parametrize("cls", [QFormerBridge, BridgeNetBridge])
def test_dropout_option_switches_off_every_dropout_of_the_qformer(cls):
    torch.manual_seed(0)
    bridge = cls(in_dim=24, out_dim=10, bert="tiny", num_queries=4, dropout=0.0)
    text = bridge.text_processor(["Describe the music."] * 2) if cls is BridgeNetBridge else None
    feats, mask = torch.randn(2, 9, 24), torch.ones(2, 9, dtype=torch.bool)
    with torch.no_grad():
        trained = bridge.train()(feats, mask, text)[0]
        evaluated = bridge.eval()(feats, mask, text)[0]
    torch.testing.assert_close(trained, evaluated)  # the train-mode pass is the eval pass
    default = cls(in_dim=24, out_dim=10, bert="tiny", num_queries=4)
    assert default.qformer.embeddings.dropout.p > 0  # the BERT config's dropout otherwise
