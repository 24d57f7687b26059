"""`seq2seq`: an encoder-decoder LM (Flan-T5) driven by a soft prompt.

As in LAVIS/BLAP stage 2: the T5 encoder reads ``[soft prompt ; embedded prompt]`` with mask
``[soft mask ; prompt mask]``; the target text goes to the decoder as labels (padding = -100; T5
shifts right internally and appends its EOS through the tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from bridgebench.specs import GenerationSpec, LoraOptions
from bridgebench.llms.base import LanguageModel, buckets_problem, pad_right
from bridgebench.runtime.references import pretrained_problem


TRUNCATION_SIDES = ("left", "right")


def check_options(opts, key: str) -> list[str]:
    """Checks of ``seq2seq`` options beyond their declared ranges."""
    out = [p for p in [pretrained_problem(f"{key}.pretrained", opts.pretrained),
                       buckets_problem(f"{key}.length_buckets", opts.length_buckets)] if p]
    if opts.prompt_truncation not in TRUNCATION_SIDES:
        out.append(f"{key}.prompt_truncation: unknown value '{opts.prompt_truncation}'; choose one of: "
                   f"{', '.join(TRUNCATION_SIDES)}")
    return out


@dataclass
class Seq2SeqText:
    """Tokenises prompts and targets for the T5 path (runs in data-loader workers). A long prompt
    loses its start (``prompt_truncation: left``, as LAVIS's InstructBLIP T5 input tokenizer) or its
    end; a long target always loses its end."""

    tokenizer: object
    max_prompt_tokens: int
    max_target_tokens: int
    prompt_truncation: str = "left"
    length_buckets: Optional[list[int]] = None

    def __call__(self, instructions: list[str], targets: Optional[list[str]] = None) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        tok.truncation_side = self.prompt_truncation
        prompt = tok(instructions, truncation=True, max_length=self.max_prompt_tokens).input_ids
        out = {}
        out["prompt_ids"], out["prompt_mask"] = pad_right(prompt, tok.pad_token_id, self.length_buckets)
        if targets is not None:
            tok.truncation_side = "right"
            target = tok(targets, truncation=True, max_length=self.max_target_tokens).input_ids
            out["target_ids"], out["target_mask"] = pad_right(target, tok.pad_token_id, self.length_buckets)
        return out


class Seq2SeqLM(LanguageModel):
    kind = "seq2seq"

    def __init__(self, pretrained: str, mode: str = "frozen", dtype: Optional[torch.dtype] = None,
                 dense_act_fn: Optional[str] = None, max_prompt_tokens: int = 128, max_target_tokens: int = 64,
                 prompt_truncation: str = "left", length_buckets: Optional[list[int]] = None,
                 lora: Optional[LoraOptions] = None):
        from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

        config = AutoConfig.from_pretrained(pretrained)
        if dense_act_fn is not None:
            # LAVIS and BLAP load Flan-T5 with its FFN activation replaced (gelu_new -> gelu).
            config.dense_act_fn = dense_act_fn
        model = AutoModelForSeq2SeqLM.from_pretrained(pretrained, config=config, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(pretrained)
        super().__init__(model, tokenizer, pretrained, mode, lora, task_type="SEQ_2_SEQ_LM")
        self.text_processor = Seq2SeqText(tokenizer, max_prompt_tokens, max_target_tokens, prompt_truncation,
                                           length_buckets)

    def encoder_inputs(self, soft, soft_mask, text):
        prompt = self.embed(text["prompt_ids"])
        embeds = torch.cat([soft.to(prompt.dtype), prompt], dim=1)
        mask = torch.cat([soft_mask, text["prompt_mask"]], dim=1)
        return embeds, mask

    def loss(self, soft, soft_mask, text):
        embeds, mask = self.encoder_inputs(soft, soft_mask, text)
        labels = text["target_ids"].masked_fill(~text["target_mask"], -100)
        return self.model(inputs_embeds=embeds, attention_mask=mask.long(), labels=labels,
                          use_cache=False).loss.float()

    @torch.no_grad()
    def candidate_nll(self, soft, soft_mask, text, candidates: list[str], chunk: int = 64):
        """Summed token NLL of every candidate (EOS included) for every sample, LAVIS-style: the
        encoder runs once per sample and its states are repeated for the candidates.
        Returns (nll_sum [B, C], token_counts [B, C])."""
        embeds, mask = self.encoder_inputs(soft, soft_mask, text)
        states = self.model.get_encoder()(inputs_embeds=embeds, attention_mask=mask.long()).last_hidden_state
        cand = self.tokenizer(candidates, padding="longest", return_tensors="pt").to(soft.device)
        b, c = soft.shape[0], len(candidates)
        sums, counts = [], []
        for start in range(0, c, chunk):
            ids = cand.input_ids[start:start + chunk]
            keep = cand.attention_mask[start:start + chunk].bool()
            k = ids.shape[0]
            labels = ids.masked_fill(~keep, -100).repeat(b, 1)
            enc = states.repeat_interleave(k, dim=0)
            out = self.model(encoder_outputs=(enc,), attention_mask=mask.long().repeat_interleave(k, dim=0),
                             labels=labels)
            nll = torch.nn.functional.cross_entropy(out.logits.float().transpose(1, 2), labels, reduction="none",
                                                    ignore_index=-100)
            sums.append(nll.sum(1).view(b, k))
            counts.append(keep.sum(1).repeat(b).view(b, k))
        return torch.cat(sums, 1), torch.cat(counts, 1)

    @torch.no_grad()
    def generate(self, soft, soft_mask, text, gen: GenerationSpec) -> list[str]:
        embeds, mask = self.encoder_inputs(soft, soft_mask, text)
        out = self.model.generate(inputs_embeds=embeds, attention_mask=mask.long(), **self.decoding_kwargs(gen))
        return [s.strip() for s in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
