"""Stage-2 training invariants, on tiny real-config models and real batches of the tone set."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from conftest import tiny_batch, tiny_module, tiny_specs

from bridgebench.errors import ConfigError
from bridgebench.specs import OptimSpec, PrecisionSpec


@pytest.mark.parametrize("llm", ["seq2seq", "causal"])
def test_frozen_parameters_get_no_gradient_and_are_not_optimised(llm):
    m = tiny_module(encoder="mert", bridge="qformer", llm=llm)
    batch = tiny_batch(m)
    m.train()
    m.losses(batch)["loss"].backward()
    frozen = [n for n, p in m.named_parameters() if n.startswith(("encoder.", "llm."))]
    assert frozen and all(dict(m.named_parameters())[n].grad is None for n in frozen)
    assert all(not dict(m.named_parameters())[n].requires_grad for n in frozen)
    bridge = [p for n, p in m.named_parameters() if n.startswith("bridge.")]
    assert all(p.grad is not None for p in bridge)
    assert any(p.grad.abs().sum() > 0 for p in bridge)

    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    m.trainer = trainer
    opt = m.configure_optimizers()["optimizer"]
    optimised = {id(p) for g in opt.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in bridge}


def test_frozen_parts_stay_in_eval_mode_when_lightning_calls_train():
    m = tiny_module(encoder="clap", bridge="bridgenet", llm="seq2seq")
    m.train()
    assert m.bridge.training
    assert not m.encoder.training and not any(x.training for x in m.encoder.modules())
    assert not m.llm.training and not any(x.training for x in m.llm.modules())


def test_causal_loss_counts_answer_tokens_only():
    m = tiny_module(llm="causal", bridge="linear_pool")
    m.eval()
    batch = tiny_batch(m)
    text = batch["text"]
    with torch.no_grad():
        soft, soft_mask = m.soft_prompt(batch)
        embeds, mask, labels = m.llm.assemble(soft, soft_mask, text, with_target=True)
        base = m.llm.loss_from_inputs(embeds, mask, labels)

        # Labels are built from the answer only: a different prompt token changes no label.
        other = copy.deepcopy(text)
        other["post_ids"][:, 0] = (other["post_ids"][:, 0] + 7) % len(m.llm.tokenizer)
        _, _, labels_other = m.llm.assemble(soft, soft_mask, other, with_target=True)
        assert torch.equal(labels, labels_other)
        n_answer = int(text["target_mask"].sum())
        assert int((labels != -100).sum()) == n_answer

        # Relabelling a prompt position (as a model training on the prompt would) leaves the loss as is...
        prompt_pos = (labels == -100) & mask
        prompt_pos[:, 0] = False
        row, col = prompt_pos.nonzero()[0]
        probe = labels.clone()
        probe[row, col] = -100  # already ignored: identical
        assert torch.equal(m.llm.loss_from_inputs(embeds, mask, probe), base)
        # ...while relabelling an answer token does change it.
        answer_pos = (labels != -100).nonzero()[0]
        changed = labels.clone()
        changed[tuple(answer_pos)] = (changed[tuple(answer_pos)] + 1) % len(m.llm.tokenizer)
        assert not torch.allclose(m.llm.loss_from_inputs(embeds, mask, changed), base)

        # Changing the prompt text (not its labels) changes the conditioning, so the loss moves:
        # the prompt reaches the model, but never as a target.
        assert not torch.allclose(m.llm.loss(soft, soft_mask, other), base)


def test_causal_loss_equals_reference_cross_entropy_over_answer_tokens():
    m = tiny_module(llm="causal", bridge="linear_pool")
    m.eval()
    batch = tiny_batch(m)
    with torch.no_grad():
        soft, soft_mask = m.soft_prompt(batch)
        embeds, mask, labels = m.llm.assemble(soft, soft_mask, batch["text"], with_target=True)
        ours = m.llm.loss_from_inputs(embeds, mask, labels)
        logits = m.llm.model(inputs_embeds=embeds, attention_mask=mask.long()).logits
        ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("llm", ["seq2seq", "causal"])
def test_soft_prompt_reaches_the_llm(llm):
    m = tiny_module(llm=llm, bridge="qformer")
    m.eval()
    batch = tiny_batch(m)
    with torch.no_grad():
        soft, soft_mask = m.soft_prompt(batch)
        loss = m.llm.loss(soft, soft_mask, batch["text"])
        zeroed = m.llm.loss(torch.zeros_like(soft), soft_mask, batch["text"])
    assert torch.isfinite(loss) and not torch.allclose(loss, zeroed)


@pytest.mark.parametrize("llm", ["seq2seq", "causal"])
def test_generation_from_soft_prompts_returns_text(llm):
    m = tiny_module(llm=llm, bridge="qformer")
    m.gen.min_length = 3
    m.eval()
    batch = tiny_batch(m, batch_size=3, train=False)
    texts = m.generate(batch)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert any(t.strip() for t in texts)


def test_causal_generation_stops_at_a_stop_string_and_cuts_the_answer_there():
    from bridgebench.llms.causal import CausalLM
    from bridgebench.runtime.tiny import tiny_checkpoint
    from bridgebench.specs import GenerationSpec

    lm = CausalLM(str(tiny_checkpoint("llama")), end_symbol=None)
    text = lm.text_processor(["what instrument plays?"])
    soft = torch.randn(1, 3, lm.hidden_size, generator=torch.Generator().manual_seed(0))
    soft_mask = torch.ones(1, 3, dtype=torch.bool)
    gen = GenerationSpec(num_beams=1, max_new_tokens=12, min_length=1)
    outputs = []
    generate = lm.model.generate
    lm.model.generate = lambda *a, **k: outputs.append(generate(*a, **k)) or outputs[-1]
    full = lm.generate(soft, soft_mask, text, gen)[0]
    ids = outputs[-1][0].tolist()
    assert len(ids) == 12  # unconstrained: the whole budget
    # A later token whose text is a plain word: the stop string (what "###" is for MusiLingo).
    at = next(j for j in range(1, 11) if (piece := lm.tokenizer.decode(ids[j])).isalpha() and len(piece) > 1)
    stop = lm.tokenizer.decode(ids[at])
    lm.stop_strings = [stop]
    cut = lm.generate(soft, soft_mask, text, gen)[0]
    assert outputs[-1].shape[1] <= at + 1  # generation itself stopped, not just the decoded text
    assert cut == full.split(stop, 1)[0].strip() and stop not in cut


def test_eval_frozen_dtype_generates_in_its_dtype_and_trains_in_frozen_dtype():
    m = tiny_module(llm="causal", bridge="linear_pool", precision=PrecisionSpec("bfloat16", "float32"))
    (hooks,) = m.configure_callbacks()  # the precision switch is a callback the module brings
    dtype = lambda: next(m.llm.hf.parameters()).dtype  # noqa: E731
    buffers = lambda: {n: b.dtype for n, b in m.llm.hf.named_buffers() if b.is_floating_point()}  # noqa: E731
    loaded = buffers()
    assert dtype() == torch.bfloat16 and loaded
    with torch.inference_mode():  # as Lightning calls the hooks
        hooks.on_validation_start(None, m)
        assert dtype() == torch.float32
        batch = tiny_batch(m, train=False)
        assert all(isinstance(t, str) for t in m.generate(batch))  # float32 soft prompts into a float32 LLM
        hooks.on_validation_end(None, m)  # back to training inside fit
    assert dtype() == torch.bfloat16
    assert buffers() == loaded  # RoPE frequencies stay as loaded (float32), not cast to bf16
    # Training goes on: the re-cast weights are ordinary tensors that backward can use.
    assert not any(p.is_inference() for p in m.llm.hf.parameters())
    m.losses(tiny_batch(m))["lm"].backward()
    hooks.on_test_start(None, m)
    assert dtype() == torch.float32
    with pytest.raises(ConfigError, match="model.precision.frozen_eval: unknown value 'fp8'"):
        tiny_module(llm="causal", precision=PrecisionSpec("float32", "fp8"))


def test_causal_batched_generation_matches_one_by_one():
    m = tiny_module(llm="causal", bridge="linear_pool")
    m.eval()
    batch = tiny_batch(m, batch_size=3, train=False)
    together = m.generate(batch)
    for i in range(3):
        single = {k: (v[i:i + 1] if torch.is_tensor(v) else v[i:i + 1]) for k, v in batch.items() if k != "text"}
        single["text"] = m.data_contract().text([batch["instruction"][i]], [batch["target"][i]])
        # Trim the sample's own audio padding, as it would be collated alone.
        n = int(batch["audio_mask"][i].sum())
        single["audio"], single["audio_mask"] = single["audio"][:, :n], single["audio_mask"][:, :n]
        assert m.generate(single) == [together[i]]


def _fit(module, tmp_path, steps=2):
    from bridgebench.datamodules import AudioTextDataModule

    dm = AudioTextDataModule(manifest="builtin:tones", batch_size=2, num_workers=0, clip_seconds=2.0)
    trainer = L.Trainer(max_steps=steps, default_root_dir=str(tmp_path), logger=False, enable_progress_bar=False,
                        limit_val_batches=0, enable_model_summary=False)
    trainer.fit(module, datamodule=dm)
    path = tmp_path / "ckpt.ckpt"
    trainer.save_checkpoint(str(path))
    return path


def test_checkpoint_holds_only_trainable_weights(tmp_path):
    m = tiny_module(encoder="mert", bridge="bridgenet", llm="seq2seq")
    path = _fit(m, tmp_path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    keys = set(ckpt["state_dict"])
    assert keys == {n for n, p in m.named_parameters() if p.requires_grad}
    assert keys and all(k.startswith("bridge.") for k in keys)
    assert ckpt["bridgebench"]["components"]["bridge"] == "bridgenet"

    # A fresh module restores the trained bridge from it.
    fresh = tiny_module(encoder="mert", bridge="bridgenet", llm="seq2seq")
    fresh.on_load_checkpoint(ckpt)
    fresh.load_state_dict(ckpt["state_dict"], strict=False)
    for k in keys:
        torch.testing.assert_close(fresh.state_dict()[k], m.state_dict()[k])


def test_stage1_checkpoint_loads_into_stage2(tmp_path):
    stage1 = tiny_module(encoder="mert", bridge="linear_pool", llm="causal", template="<AudioHere>",
                         end_symbol="\n")
    path = _fit(stage1, tmp_path)
    stage2 = tiny_module(encoder="mert", bridge="linear_pool", llm="causal", stage1_checkpoint=str(path))
    for k, v in stage1.bridge.state_dict().items():
        torch.testing.assert_close(stage2.bridge.state_dict()[k], v)
    untouched = tiny_module(encoder="mert", bridge="linear_pool", llm="causal")
    assert not torch.allclose(untouched.bridge.proj.weight, stage2.bridge.proj.weight)


def test_stage1_checkpoint_of_another_shape_is_refused(tmp_path):
    from conftest import tiny_specs

    from bridgebench.engine.module import BridgeModule

    path = _fit(tiny_module(encoder="mert", bridge="qformer", llm="causal"), tmp_path)
    specs = tiny_specs(encoder="mert", bridge="qformer", llm="causal")
    specs["bridge"].qformer.num_queries = 8
    with pytest.raises(ConfigError, match=r"bridge.qformer.query_tokens' has shape \(1, 4, 32\)"):
        BridgeModule(**specs, stage1_checkpoint=str(path))
    with pytest.raises(ConfigError, match="another bridge shape"):
        tiny_module(encoder="mert", bridge="linear_pool", llm="causal", stage1_checkpoint=str(path))


def test_trainable_checkpoint_of_another_configuration_is_refused(tmp_path):
    m = tiny_module(encoder="mert", bridge="linear_pool", llm="causal")
    ckpt = torch.load(_fit(m, tmp_path), map_location="cpu", weights_only=True)
    other = tiny_module(encoder="mert", bridge="qformer", llm="causal")
    with pytest.raises(ConfigError, match="lacks"):
        other.on_load_checkpoint(ckpt)


def test_component_report_says_what_is_frozen_and_trained():
    m = tiny_module(encoder="clap", bridge="qformer", llm="causal")
    lines = m.component_report()
    assert lines[0].startswith("encoder") and " frozen " in lines[0] and " 0 trained" in lines[0]
    assert lines[1].startswith("bridge") and " trained " in lines[1]
    assert lines[2].startswith("llm") and " frozen " in lines[2]


def test_lora_mode_trains_adapters_only():
    from conftest import tiny_specs

    from bridgebench.engine.module import BridgeModule

    specs = tiny_specs(llm="causal", bridge="linear_pool")
    specs["llm"].mode = "lora"
    m = BridgeModule(**specs)
    trained = [n for n, p in m.llm.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
    m.train()
    m.losses(tiny_batch(m))["loss"].backward()
    assert all(p.grad is not None for n, p in m.llm.named_parameters() if p.requires_grad)
    assert all(p.grad is None for n, p in m.llm.named_parameters() if not p.requires_grad)


def test_eval_frozen_dtype_casts_a_lora_llms_base_weights_and_keeps_the_adapters_float32():
    from conftest import tiny_specs

    from bridgebench.engine.module import BridgeModule

    specs = tiny_specs(llm="causal", bridge="linear_pool")
    specs["llm"].mode = "lora"
    specs.update(precision=PrecisionSpec("bfloat16", "float32"))
    m = BridgeModule(**specs)
    (hooks,) = m.configure_callbacks()
    adapters = {n: p for n, p in m.llm.named_parameters() if p.requires_grad}
    base = lambda: {p.dtype for p in m.llm.parameters() if not p.requires_grad}  # noqa: E731
    assert base() == {torch.bfloat16} and all(p.dtype == torch.float32 for p in adapters.values())
    with torch.inference_mode():  # as Lightning calls the hooks
        hooks.on_validation_start(None, m)
        assert base() == {torch.float32}
        assert all(isinstance(t, str) for t in m.generate(tiny_batch(m, train=False)))
        hooks.on_validation_end(None, m)
    assert base() == {torch.bfloat16}
    # The adapters are the same float32 parameters (the optimizer holds them), and they still train.
    now = {n: p for n, p in m.llm.named_parameters() if p.requires_grad}
    assert now.keys() == adapters.keys() and all(now[n] is adapters[n] for n in now)
    assert all(p.dtype == torch.float32 and not p.is_inference() for p in now.values())
    m.train()
    m.losses(tiny_batch(m))["loss"].backward()
    assert all(p.grad is not None for p in now.values())


@pytest.mark.parametrize("llm", ["seq2seq", "causal"])
def test_batched_candidate_scoring_equals_a_loop_over_candidates(llm):
    """Vocabulary ranking: the batched NLL of every candidate equals scoring each one alone."""
    m = tiny_module(llm=llm, bridge="qformer")
    m.eval()
    batch = tiny_batch(m, batch_size=2, train=False)
    # Prompts of different lengths, so the shared-prefix scoring pads one of them.
    batch["instruction"] = ["Describe it.", "What is the lead instrument of this recording, in a few words?"]
    batch["text"] = m.data_contract().text(batch["instruction"])
    candidates = ["piano", "electric guitar", "slow tempo", "a"]
    with torch.no_grad():
        soft, soft_mask = m.soft_prompt(batch)
        nll, counts = m.llm.candidate_nll(soft, soft_mask, batch["text"], candidates, chunk=3)
        for j, cand in enumerate(candidates):
            text = m.data_contract().text(batch["instruction"], [cand] * 2)
            n_tokens = int(text["target_mask"][0].sum())
            mean_loss = [m.llm.loss(soft[i:i + 1], soft_mask[i:i + 1], {k: v[i:i + 1] for k, v in text.items()})
                         for i in range(2)]
            for i in range(2):
                assert int(counts[i, j]) == n_tokens
                torch.testing.assert_close(nll[i, j], mean_loss[i] * n_tokens, rtol=2e-5, atol=1e-4)


def test_encoder_projection_and_cross_attention_lr_scales_give_their_weights_own_rates_through_the_schedule():
    from bridgebench.engine.module import BridgeModule

    optim = OptimSpec(lr=1e-4, min_lr=1e-5, warmup_steps=4, warmup_lr=1e-6,
                      lr_scale={"encoder": 10.0, "projection": 30.0, "cross_attention": 5.0})
    for trainable in (False, True):
        specs = tiny_specs(encoder="mert", bridge="qformer", llm="causal")
        specs["encoder"].trainable = trainable
        module = BridgeModule(**specs, optimizer=optim)
        module.trainer = L.Trainer(max_steps=20, logger=False, enable_checkpointing=False, enable_progress_bar=False)
        conf = module.configure_optimizers()
        opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
        owner = {id(p): "encoder" for p in module.encoder.parameters()}
        owner.update({id(p): "projection" for p in module.bridge.proj.parameters()})
        cross = {id(p) for n, p in module.bridge.qformer.named_parameters()
                 if ".crossattention." in n or n == "query_tokens"}
        assert len(cross) > 1
        owner.update({i: "cross_attention" for i in cross})
        for _ in range(4):  # to the end of warmup: every group at its peak rate
            opt.step()
            sched.step()
        rates = {}
        for g in opt.param_groups:
            parts = {owner.get(id(p), "rest") for p in g["params"]}
            assert len(parts) == 1  # no group mixes encoder, projection and other weights
            rates.setdefault(parts.pop(), set()).add(g["lr"])
        rates = {k: v.pop() for k, v in rates.items() if len(v) == 1}  # one rate per part, decayed or not
        assert rates["rest"] == pytest.approx(1e-4) and rates["projection"] == pytest.approx(3e-3)
        assert rates["cross_attention"] == pytest.approx(5e-4)
        if trainable:
            assert rates["encoder"] == pytest.approx(1e-3)
        else:
            assert "encoder" not in rates


def test_llm_lr_scale_gives_the_lora_adapters_their_own_rate_and_unscaled_folds_them_into_the_body():
    from bridgebench.engine.module import BridgeModule

    def rates(lr_scale):
        specs = tiny_specs(llm="causal", bridge="linear_pool")
        specs["llm"].mode = "lora"
        module = BridgeModule(**specs, optimizer=OptimSpec(lr=1e-3, lr_scale=lr_scale))
        module.trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
        opt = module.configure_optimizers()["optimizer"]
        names = {id(p): n for n, p in module.named_parameters()}
        placed = sorted(names[id(p)] for g in opt.param_groups for p in g["params"])
        assert placed == sorted(n for n, p in module.named_parameters() if p.requires_grad)
        out = {}
        for g in opt.param_groups:
            for p in g["params"]:
                out.setdefault("lora" if "lora_" in names[id(p)] else "bridge", set()).add(round(g["lr"], 12))
        return out

    assert rates({"llm": 0.1}) == {"lora": {1e-4}, "bridge": {1e-3}}
    assert rates({}) == {"lora": {1e-3}, "bridge": {1e-3}}


@pytest.mark.parametrize("bridge,stage1", [("qformer", False), ("bridgenet", False), ("qformer", True)])
def test_cross_attention_group_holds_the_cross_attention_and_queries_only_when_scaled(bridge, stage1):
    from bridgebench.engine.module import BridgeModule

    def build(lr_scale):
        specs = tiny_specs(encoder="mert", bridge=bridge, llm="causal")
        kw = {}
        if stage1:
            specs["llm"].name = "none"
            kw["objectives"] = {"atc": 1.0, "atm": 1.0, "atg": 1.0}
        torch.manual_seed(0)
        module = BridgeModule(**specs, optimizer=OptimSpec(lr=1e-4, lr_scale=lr_scale), **kw)
        module.trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
        return module, module.configure_optimizers()["optimizer"]

    module, opt = build({"cross_attention": 7.0})
    names = {id(p): n for n, p in module.named_parameters()}
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    placed = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    assert sorted(placed) == sorted(trainable)  # every trainable weight in exactly one group
    scaled = {names[id(p)] for g in opt.param_groups if g["lr"] == pytest.approx(7e-4) for p in g["params"]}
    cross = {n for n in trainable if n.startswith("bridge.qformer.") and
             (".crossattention." in n or n == "bridge.qformer.query_tokens")}
    assert scaled == cross and any(".crossattention.self.key." in n for n in cross)
    # Unscaled, the group folds back: the optimizer's layout is the one without the group.
    module, opt = build({})
    names = {id(p): n for n, p in module.named_parameters()}
    assert all(g["lr"] == pytest.approx(1e-4) for g in opt.param_groups)
    order = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    bridge_order = [n for n in order if n.startswith("bridge.") and not n.startswith("bridge.proj.")]
    expected = [n for n, p in module.named_parameters() if n.startswith("bridge.") and p.requires_grad
                and not n.startswith("bridge.proj.")]
    assert [n for n in bridge_order if _is_matrix(module, n)] == [n for n in expected if _is_matrix(module, n)]
    assert [n for n in bridge_order if not _is_matrix(module, n)] == [n for n in expected if not _is_matrix(module, n)]


def _is_matrix(module, name: str) -> bool:
    return dict(module.named_parameters())[name].ndim >= 2


def test_t5_prompt_truncation_keeps_the_end_of_a_long_instruction_by_default():
    from transformers import AutoTokenizer

    from bridgebench.llms.seq2seq import Seq2SeqText
    from bridgebench.runtime.tiny import tiny_checkpoint

    tok = AutoTokenizer.from_pretrained(str(tiny_checkpoint("t5")))
    instruction = "describe the music in detail and then say which instrument plays the lead"
    full = tok(instruction).input_ids
    assert len(full) > 6
    left = Seq2SeqText(tok, 6, 4)([instruction], ["a slow piano ballad with soft drums"])
    assert left["prompt_ids"][0].tolist() == full[-6:]  # LAVIS: truncation_side left, the end survives
    assert left["target_ids"][0].tolist()[:3] == tok("a slow piano ballad").input_ids[:3]  # targets: right
    right = Seq2SeqText(tok, 6, 4, "right")([instruction])
    assert right["prompt_ids"][0].tolist()[:5] == full[:5]


def test_dense_act_fn_gelu_gives_flan_t5_exact_gelu_and_keeps_it_gated():
    from bridgebench.llms.seq2seq import Seq2SeqLM
    from bridgebench.runtime.tiny import tiny_checkpoint

    path = str(tiny_checkpoint("t5"))
    for act, expected in ((None, "NewGELUActivation"), ("gelu", "GELUActivation")):
        ffn = Seq2SeqLM(path, dense_act_fn=act).model.encoder.block[0].layer[-1].DenseReluDense
        assert type(ffn.act).__name__ == expected and hasattr(ffn, "wi_0")  # LAVIS: gelu, still gated


def test_linear_schedule_warms_up_then_falls_in_a_straight_line_to_min_lr():
    from bridgebench.engine.schedule import lr_factor

    o = OptimSpec(lr=1e-4, min_lr=0.0, warmup_lr=0.0, warmup_steps=4, schedule="linear")
    rates = [1e-4 * lr_factor(o, step, total=24) for step in range(25)]
    assert rates[:5] == pytest.approx([0.0, 2.5e-5, 5e-5, 7.5e-5, 1e-4])  # warm-up from warmup_lr
    assert rates[14] == pytest.approx(5e-5) and rates[24] == pytest.approx(0.0)  # halfway, then min_lr
    steps = [a - b for a, b in zip(rates[4:], rates[5:])]
    assert steps == pytest.approx([5e-6] * 20)  # equal decrements: a line, not a cosine
    cosine = OptimSpec(lr=1e-4, min_lr=0.0, warmup_lr=0.0, warmup_steps=4, schedule="cosine")
    assert 1e-4 * lr_factor(cosine, 9, total=24) > rates[9]  # the cosine starts flatter


def _fsdp_units(root, policy):
    """The wrap units FSDP's recursive auto-wrap would build, each with the parameters it owns
    (those not inside a nested unit); the root unit comes last."""
    units = []

    def visit(module):
        for child in module.children():
            if policy(child, True, 0):
                visit(child)
            if policy(child, False, 0):
                units.append(child)

    visit(root)
    owned = []
    for unit in units + [root]:
        nested = {id(p) for other in units if other is not unit and any(other is m for m in unit.modules())
                  for p in other.parameters()}
        owned.append((unit, [p for p in unit.parameters() if id(p) not in nested]))
    return owned


@pytest.mark.parametrize("parts", [("clap", "qformer", "seq2seq"), ("mert", "linear_pool", "causal"),
                                   ("data2vec", "bridgenet", "seq2seq")])
def test_fsdp_wrap_units_never_mix_frozen_and_trained_weights(parts):
    from bridgebench.engine.strategies import wrap_policy

    m = tiny_module(encoder=parts[0], bridge=parts[1], llm=parts[2])
    units = _fsdp_units(m, wrap_policy(m))
    assert any(u is m.bridge for u, _ in units)  # the bridge is one unit
    frozen_blocks = [u for u, _ in units if u is not m and u is not m.bridge]
    assert len(frozen_blocks) >= 4  # encoder and LLM blocks are sharded one by one
    for unit, params in units:
        flags = {p.requires_grad for p in params}
        assert len(flags) <= 1, f"{type(unit).__name__} mixes frozen and trained weights"
    assert not any(p.requires_grad for p in units[-1][1])  # what stays in the root unit is frozen


def test_fsdp_strategy_config_parses():
    import yaml

    from bridgebench.engine.lightning_cli import run

    root = __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__)))
    with pytest.raises(SystemExit):
        run(["fit", "--config", f"{root}/experiments/blap_stage2.yaml", "--config", f"{root}/experiments/slurm/fsdp.yaml",
             "--print_config"])
    cfg = yaml.safe_load(open(f"{root}/experiments/slurm/fsdp.yaml"))
    assert cfg["trainer"]["strategy"]["class_path"] == "bridgebench.engine.strategies.BridgeFSDPStrategy"
    from bridgebench.engine.strategies import BridgeFSDPStrategy

    assert BridgeFSDPStrategy(sharding_strategy="FULL_SHARD").kwargs["use_orig_params"] is True


@pytest.mark.slow
@pytest.mark.parametrize("llm", ["seq2seq", "causal"])
def test_compile_switch_keeps_the_loss_and_the_checkpoint_keys(llm):
    from bridgebench.engine.module import BridgeModule
    from bridgebench.engine.speed import SpeedSpec

    torch.manual_seed(0)
    plain = BridgeModule(**tiny_specs(encoder="mert", bridge="qformer", llm=llm))
    torch.manual_seed(0)
    compiled = BridgeModule(**tiny_specs(encoder="mert", bridge="qformer", llm=llm), speed=SpeedSpec(compile="stacks"))
    batch = tiny_batch(plain)
    plain.eval()
    compiled.eval()
    with torch.no_grad():
        assert compiled.losses(batch)["loss"].item() == pytest.approx(plain.losses(batch)["loss"].item(), abs=1e-5)
    assert list(plain.state_dict()) == list(compiled.state_dict())


def test_auto_precision_stores_frozen_parts_in_bf16_only_where_bf16_matmuls_are_native(monkeypatch):
    from bridgebench.engine import frozen

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert frozen.resolve_dtype("auto") == torch.float32  # an AVX2 CPU emulates bf16 matmuls ~40x slower
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert frozen.resolve_dtype("auto") == torch.bfloat16  # an AVX512-BF16 EPYC: 2.6x faster matmuls
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert frozen.resolve_dtype("auto") == torch.bfloat16
    assert frozen.resolve_dtype("float32") == torch.float32
