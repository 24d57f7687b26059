"""The language-model protocol and what the two kinds share: loading, training mode, decoding.

A ``LanguageModel`` wraps a transformers model and its tokenizer. Text is tokenised in the data
loader's workers by ``text_processor`` (a small picklable object, not the model), and the module
gets tensors only. ``loss(soft, soft_mask, text)`` and ``generate(...)`` take the bridge's soft
prompt ``[B, N, hidden_size]`` and place it where the kind expects it.

Modes: ``frozen`` (eval mode, no parameter trains, weights may be stored in bf16), ``lora`` (peft
adapters train, base frozen) and ``full`` (every weight trains).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from bridgebench.specs import GenerationSpec, LoraOptions


def bucket_width(longest: int, buckets: Optional[list[int]]) -> int:
    """``longest`` rounded up to the next bucket (past the last: the next multiple of the last)."""
    if not buckets:
        return longest
    for size in sorted(buckets):
        if longest <= size:
            return size
    last = max(buckets)
    return -(-longest // last) * last


def buckets_problem(key: str, buckets) -> Optional[str]:
    """What is wrong with a ``length_buckets`` option, or None."""
    if buckets is None:
        return None
    if not buckets or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in buckets):
        return f"{key}: {buckets!r}; give positive whole token counts, e.g. [16, 32, 64, 128], or null"
    return None


def pad_right(seqs: list[list[int]], pad_id: int,
              buckets: Optional[list[int]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists to the longest (or its ``buckets`` length); returns ids [B, L] and a bool
    mask (L >= 1 so empty batches still stack)."""
    width = bucket_width(max([len(s) for s in seqs] + [1]), buckets)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


class LanguageModel(nn.Module):
    """Base class of the LLM wrappers."""

    kind: str = ""

    def __init__(self, model: nn.Module, tokenizer, pretrained: str, mode: str, lora: Optional[LoraOptions],
                 task_type: str):
        super().__init__()
        self.pretrained = pretrained
        self.mode = mode
        self.tokenizer = tokenizer
        self.hidden_size = model.get_input_embeddings().embedding_dim
        if mode == "lora":
            from peft import LoraConfig, get_peft_model

            cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=lora.target_modules, task_type=task_type)
            model = get_peft_model(model, cfg)
        elif mode == "frozen":
            model.requires_grad_(False)
        self.model = model

    @property
    def hf(self) -> nn.Module:
        """The transformers model, with LoRA layers injected when ``mode: lora``."""
        return self.model.get_base_model() if self.mode == "lora" else self.model

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf.get_input_embeddings()(ids)

    def decoding_kwargs(self, gen: GenerationSpec) -> dict:
        kw = dict(num_beams=gen.num_beams, max_new_tokens=gen.max_new_tokens, min_length=gen.min_length,
                  length_penalty=gen.length_penalty, repetition_penalty=gen.repetition_penalty,
                  do_sample=gen.do_sample)
        if gen.do_sample:
            kw.update(top_p=gen.top_p, temperature=gen.temperature)
        return kw

    def identity(self) -> str:
        return f"{self.kind}:{self.pretrained}:{self.mode}"

    # --- to implement ---
    text_processor = None

    def loss(self, soft: torch.Tensor, soft_mask: torch.Tensor, text: dict) -> torch.Tensor:
        raise NotImplementedError

    def generate(self, soft: torch.Tensor, soft_mask: torch.Tensor, text: dict, gen: GenerationSpec) -> list[str]:
        raise NotImplementedError
