"""Stage 1: who attends to whom under ATC/ATM/ATG, DDP equality of ATC, heads, retrieval metrics."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp
from conftest import tiny_batch, tiny_specs

from bridgebench.bridges import QFormerBridge
from bridgebench.bridges.objectives import Stage1Heads
from bridgebench.errors import ConfigError
from bridgebench.engine.module import BridgeModule
from bridgebench.evaluation.ranking import recall_at_k, rerank

Q = 4


def _setup(objectives=("atc", "atm", "atg"), seed=0, **heads):
    torch.manual_seed(seed)
    bridge = QFormerBridge(in_dim=24, out_dim=None, bert="tiny", num_queries=Q, with_text=True).eval()
    return bridge, Stage1Heads(bridge, objectives, **heads).eval()


def _inputs(b=2, length=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(b, 9, 24, generator=g)
    ids = torch.randint(5, 60, (b, length), generator=g)
    ids[:, 0] = 2  # [CLS]
    return audio, torch.ones(b, 9, dtype=torch.bool), ids, torch.ones(b, length, dtype=torch.bool)


def test_atg_mask_queries_never_see_text_and_text_is_causal():
    bridge, heads = _setup()
    audio, amask, ids, tmask = _inputs()
    mask = heads.generation_mask(Q, tmask)
    other = ids.clone()
    other[:, 4] = (other[:, 4] + 3) % 60
    with torch.no_grad():
        a = bridge.qformer(audio, amask, ids, tmask, self_mask=mask)
        b = bridge.qformer(audio, amask, other, tmask, self_mask=mask)
    torch.testing.assert_close(a[:, :Q], b[:, :Q])  # queries: unchanged
    torch.testing.assert_close(a[:, Q:Q + 4], b[:, Q:Q + 4])  # earlier text: unchanged
    assert not torch.allclose(a[:, Q + 4:], b[:, Q + 4:])  # the token itself and later ones change
    # Text does see the queries (and through them the audio).
    with torch.no_grad():
        c = bridge.qformer(audio + 1.0, amask, ids, tmask, self_mask=mask)
    assert not torch.allclose(a[:, Q:], c[:, Q:])


def test_atc_passes_are_unimodal():
    bridge, heads = _setup()
    audio, amask, ids, tmask = _inputs()
    other = ids.clone()
    other[:, 3] += 1
    with torch.no_grad():
        q1 = heads.query_pass(bridge, audio, amask)
        t1 = heads.text_pass(bridge, ids, tmask)
        t2 = heads.text_pass(bridge, other, tmask)
        t3 = heads.text_pass(bridge, ids, tmask)
        q2 = heads.query_pass(bridge, audio * 2, amask)
    assert not torch.allclose(t1, t2)  # the text pass reads the text...
    torch.testing.assert_close(t1, t3)  # ...and nothing else: no queries, no audio in it
    assert not torch.allclose(q1, q2)
    assert t1.shape == (2, 7, bridge.hidden_size) and q1.shape == (2, Q, bridge.hidden_size)


def test_atm_pass_is_bidirectional():
    bridge, _ = _setup()
    audio, amask, ids, tmask = _inputs()
    other = ids.clone()
    other[:, -1] += 1
    with torch.no_grad():
        a = bridge.qformer(audio, amask, ids, tmask)
        b = bridge.qformer(audio, amask, other, tmask)
        c = bridge.qformer(audio * 2, amask, ids, tmask)
    assert not torch.allclose(a[:, :Q], b[:, :Q])  # queries see the (last) text token
    assert not torch.allclose(a[:, Q:Q + 1], b[:, Q:Q + 1])  # early text sees later text
    assert not torch.allclose(a[:, Q:], c[:, Q:])  # text sees the audio through the queries


def test_atg_is_exact_under_gradient_checkpointing():
    bridge, heads = _setup(("atg",))
    audio, amask, ids, tmask = _inputs()
    bridge.train()
    for m in bridge.modules():  # no dropout, so both runs are deterministic
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if hasattr(m, "attn_dropout"):
            m.attn_dropout = 0.0
    plain = heads.generation_loss(bridge, audio, amask, ids, tmask)
    plain.backward()
    g1 = bridge.qformer.query_tokens.grad.clone()
    bridge.zero_grad()
    bridge.qformer.gradient_checkpointing = True
    ckpt = heads.generation_loss(bridge, audio, amask, ids, tmask)
    ckpt.backward()
    torch.testing.assert_close(plain, ckpt)
    torch.testing.assert_close(bridge.qformer.query_tokens.grad, g1)


def test_atg_loss_is_the_next_token_cross_entropy_over_real_text_positions():
    bridge, heads = _setup(("atg",), label_smoothing=0.1)
    audio, amask, ids, tmask = _inputs(b=3, length=8)
    tmask[1, 5:] = False  # a shorter caption: its padding carries no loss
    tmask[2, 3:] = False
    got = heads.generation_loss(bridge, audio, amask, ids, tmask)
    dec = ids.clone()
    dec[:, 0] = heads.dec_id
    hidden = bridge.qformer(audio, amask, dec, tmask, self_mask=heads.generation_mask(Q, tmask))
    logits = heads.lm_head(hidden[:, Q:-1])  # every position, then padding ignored
    labels = dec[:, 1:].masked_fill(~tmask[:, 1:], -100)
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                             label_smoothing=0.1, ignore_index=-100)
    torch.testing.assert_close(got, want)


def test_only_enabled_heads_are_built():
    _, atc = _setup(("atc",))
    assert hasattr(atc, "audio_proj") and not hasattr(atc, "atm_head") and not hasattr(atc, "lm_head")
    _, atg = _setup(("atg",))
    assert hasattr(atg, "lm_head") and not hasattr(atg, "audio_proj")
    _, mlp = _setup(("atc",), projection="mlp")
    assert mlp.audio_proj.dropout.p == 0.5 and not mlp.audio_proj.linear1.bias


def test_atg_head_starts_from_berts_mlm_head_with_a_zero_bias_for_dec(tmp_path):
    # LAVIS loads BERT's head at BERT's vocabulary size, then adds [DEC]: BERT's bias survives and the
    # new [DEC] entry is 0. Our head is built at the grown size, so a same-shape copy would drop it.
    from transformers import BertForMaskedLM

    from bridgebench.runtime.tiny import tiny_checkpoint

    bert = BertForMaskedLM.from_pretrained(str(tiny_checkpoint("bert")))
    torch.manual_seed(3)
    with torch.no_grad():
        bert.cls.predictions.bias.normal_()  # a pretrained-looking bias (the tiny one starts at 0)
        bert.cls.predictions.transform.dense.weight.normal_()
    bert.save_pretrained(tmp_path / "bert")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(tiny_checkpoint("bert"))).save_pretrained(tmp_path / "bert")
    bridge = QFormerBridge(in_dim=24, out_dim=None, bert=str(tmp_path / "bert"), num_queries=Q, with_text=True)
    heads = Stage1Heads(bridge, ("atg",))
    want = bert.cls.predictions.bias.detach()
    got = heads.lm_head.predictions.bias.detach()
    assert got.shape[0] == want.shape[0] + 1 == bridge.tokenizer.bos_token_id + 1  # [DEC] is the last id
    torch.testing.assert_close(got[:-1], want)
    assert got[-1].item() == 0.0
    torch.testing.assert_close(heads.lm_head.predictions.transform.dense.weight,
                               bert.cls.predictions.transform.dense.weight)


def test_all_losses_are_finite_and_train_the_bridge():
    bridge, heads = _setup()
    audio, amask, ids, tmask = _inputs(b=4)
    bridge.train()
    heads.train()
    losses = heads.losses(bridge, audio, amask, ids, tmask)
    assert set(losses) == {"atc", "atm", "atg"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert bridge.qformer.query_tokens.grad.abs().sum() > 0
    assert heads.temp.grad is not None


# --- DDP: ATC loss and gradients equal one process on the concatenated batch ---


def _atc_grads(bridge, heads, audio, amask, ids, tmask):
    loss = heads.losses(bridge, audio, amask, ids, tmask)["atc"]
    loss.backward()
    grads = {n: p.grad.clone() for n, p in list(bridge.named_parameters()) + list(heads.named_parameters())
             if p.grad is not None}
    return loss.detach(), grads


def _ddp_worker(rank, world, out_dir, cache):
    os.environ["BRIDGEBENCH_CACHE"] = cache
    # File rendezvous: no port that another process on the machine could take first.
    torch.distributed.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank,
                                         world_size=world)
    bridge, heads = _setup(("atc",))
    audio, amask, ids, tmask = _inputs(b=4)
    part = slice(rank * 2, rank * 2 + 2)
    loss, grads = _atc_grads(bridge, heads, audio[part], amask[part], ids[part], tmask[part])
    for g in grads.values():  # what DDP does: average the gradients over ranks
        torch.distributed.all_reduce(g)
        g /= world
    torch.save({"loss": loss, "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_two_process_ddp_atc_equals_one_process_on_the_whole_batch(tmp_path):
    _setup(("atc",))  # builds the tiny BERT in this session's cache before the workers start
    mp.spawn(_ddp_worker, args=(2, str(tmp_path), os.environ["BRIDGEBENCH_CACHE"]), nprocs=2)
    bridge, heads = _setup(("atc",))
    loss, grads = _atc_grads(bridge, heads, *_inputs(b=4))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss, rtol=0, atol=1e-5)
    for r in ranks:
        assert set(r["grads"]) == set(grads)
        for name, g in grads.items():
            torch.testing.assert_close(r["grads"][name], g, rtol=0, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


# --- module-level stage 1 ---


def _stage1_module(**kw):
    specs = tiny_specs(encoder="mert", bridge="qformer", llm="causal")
    specs["llm"].name = "none"
    return BridgeModule(**specs, objectives={"atc": 1.0, "atm": 1.0, "atg": 1.0}, **kw)


def test_stage1_module_trains_without_an_llm_and_saves_heads():
    m = _stage1_module()
    assert m.llm is None and m.bridge.proj is None
    batch = tiny_batch(m, batch_size=4)
    assert "s1_ids" in batch["text"]
    m.train()
    losses = m.losses(batch)
    assert set(losses) == {"atc", "atm", "atg", "loss"}
    losses["loss"].backward()
    keys = m.trainable_state_keys()
    assert any(k.startswith("stage1.") for k in keys) and any(k.startswith("bridge.qformer") for k in keys)
    assert any("heads" in line for line in m.component_report())


def test_stage1_objectives_need_a_qformer_and_lm_needs_an_llm():
    specs = tiny_specs(bridge="linear_pool")
    with pytest.raises(ConfigError, match="need a Q-Former bridge"):
        BridgeModule(**specs, objectives={"atc": 1.0})
    specs = tiny_specs()
    specs["llm"].name = "none"
    with pytest.raises(ConfigError, match="objectives.lm needs a language model"):
        BridgeModule(**specs, objectives={"lm": 1.0})


def test_stage1_checkpoint_initialises_a_stage2_qformer(tmp_path):
    import lightning as L

    from bridgebench.datamodules import AudioTextDataModule

    s1 = _stage1_module()
    trainer = L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(s1, datamodule=AudioTextDataModule(batch_size=4, num_workers=0, clip_seconds=2.0))
    trainer.save_checkpoint(str(tmp_path / "s1.ckpt"))
    specs = tiny_specs(encoder="mert", bridge="qformer", llm="seq2seq")
    s2 = BridgeModule(**specs, stage1_checkpoint=str(tmp_path / "s1.ckpt"))
    torch.testing.assert_close(s2.bridge.qformer.query_tokens, s1.bridge.qformer.query_tokens)
    layer = "qformer.encoder.layer.0.crossattention.self.key.weight"
    torch.testing.assert_close(s2.bridge.state_dict()[layer], s1.bridge.state_dict()[layer])
    assert s2.bridge.proj is not None  # new in stage 2


def test_recall_at_k_by_hand():
    # 3 clips, captions: clip0 -> t0,t1; clip1 -> t2; clip2 -> t3
    owner = torch.tensor([0, 0, 1, 2])
    sim = torch.tensor([[0.1, 0.9, 0.2, 0.0],   # clip0: best t1 (correct) -> rank 0
                        [0.8, 0.1, 0.5, 0.0],   # clip1: t0, t2 -> correct at rank 1
                        [0.3, 0.2, 0.1, 0.05]])  # clip2: t3 is last -> rank 3
    r = recall_at_k(sim, owner, ks=(1, 2))
    assert r["r1_a2t"] == pytest.approx(100 / 3) and r["r2_a2t"] == pytest.approx(200 / 3)
    # text->audio: t0 ranks clip1, clip2, clip0 (its clip third); t1 -> clip0, t2 -> clip1, t3 -> clip2 first
    assert r["r1_t2a"] == pytest.approx(75.0) and r["r2_t2a"] == pytest.approx(75.0)


def test_rerank_keeps_top_k_and_adds_match_scores():
    sim = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.3, 0.4]])
    out = rerank(sim, 2, lambda rows, cols: (cols == 1).float() * 10)
    assert out[0].tolist() == pytest.approx([0.9, 10.8, -100.0])
    assert out[1].tolist() == pytest.approx([-100.0, 10.3, 0.4])


def test_validation_reports_retrieval_and_zero_shot(tmp_path):
    import lightning as L

    from bridgebench.specs import EvalSpec
    from bridgebench.datamodules import AudioTextDataModule

    m = _stage1_module(evaluation=EvalSpec(rerank_k=3, zero_shot_label="pitch", zero_shot_prompt="a {label} tone"))
    trainer = L.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    dm = AudioTextDataModule(batch_size=4, num_workers=0, clip_seconds=2.0)
    out = trainer.validate(m, datamodule=dm)[0]
    for key in ("val/r1_t2a", "val/r5_a2t", "val/r_mean", "val/zero_shot_acc_pitch"):
        assert key in out and 0.0 <= out[key] <= 100.0
