"""`causal`: a decoder-only LM (Vicuna/LLaMA) driven by a soft prompt at an audio slot.

The sequence is ``[BOS ; template text before <AudioHere> ; soft prompt ; template text after it,
with the instruction ; answer + end symbol]`` (MusiLingo: ``###Human: <Audio><AudioHere></Audio>
{instruction} ###Assistant: `` and end symbol ``###``). Labels are -100 everywhere except the answer
and end-symbol tokens, so only they carry loss.

Unlike MusiLingo, which pads each piece to the batch maximum and leaves padding in the middle of
the sequence, the pieces are packed per sample (padding moved to the end for training, to the
front for generation), so position ids stay contiguous. ``lm_head`` runs only at answer positions,
which avoids vocabulary-sized logits at every prompt position.

Loads from a hub id, a local folder, or a GGUF file (``gguf_file``; transformers de-quantises it),
so the packaged SmolLM2-135M runs offline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from bridgebench.specs import GenerationSpec, LoraOptions
from bridgebench.llms.base import LanguageModel, buckets_problem, pad_right
from bridgebench.runtime.references import looks_local, pretrained_problem, resolve_pretrained

AUDIO_SLOT = "<AudioHere>"


def check_options(opts, key: str) -> list[str]:
    """Checks of ``causal`` options beyond their declared ranges: the reference, the audio slot of the
    template, and the GGUF file inside the reference's folder."""
    problem = pretrained_problem(f"{key}.pretrained", opts.pretrained)
    out = [problem] if problem else []
    if AUDIO_SLOT not in opts.template:
        out.append(f"{key}.template: must contain the audio slot '{AUDIO_SLOT}'")
    out += [p for p in [buckets_problem(f"{key}.length_buckets", opts.length_buckets)] if p]
    if opts.stop_strings is not None and not all(isinstance(x, str) and x for x in opts.stop_strings):
        out.append(f"{key}.stop_strings: {opts.stop_strings!r}; give non-empty strings, or null")
    if opts.gguf_file and opts.pretrained != "tiny" and not problem:
        base = resolve_pretrained(opts.pretrained, f"{key}.pretrained", build=False)
        path = os.path.join(base, opts.gguf_file) if os.path.isdir(base) else opts.gguf_file
        if (os.path.isdir(base) or looks_local(opts.gguf_file)) and not os.path.exists(path):
            out.append(f"{key}.gguf_file: '{path}' does not exist")
    return out


@dataclass
class CausalText:
    """Tokenises the template pieces and answers (runs in data-loader workers)."""

    tokenizer: object
    template: str
    end_symbol: Optional[str]
    add_bos: bool
    max_prompt_tokens: int
    max_target_tokens: int
    length_buckets: Optional[list[int]] = None

    def __call__(self, instructions: list[str], targets: Optional[list[str]] = None) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        before, after = self.template.split(AUDIO_SLOT, 1)
        # A template that ends in a space (MusiLingo's "###Assistant: ", MINT's "... is ") means the
        # answer follows as the next word. Tokenised apart, a byte-level BPE (SmolLM2) turns that space
        # into a lone token and the answer's first word into pieces no text has ("Ġ" + "p" "iano"
        # instead of "Ġpiano"), which a frozen LLM reads badly. So the space is cut from the prompt and
        # the answer is tokenised as it follows the prompt in running text. (LLaMA's SentencePiece gives
        # MusiLingo a whole-word token after its lone "▁"; this gives every tokeniser the whole word.)
        spaced = after.endswith(" ")
        bos = [tok.bos_token_id] if self.add_bos and tok.bos_token_id is not None else []
        pre, post, cues = [], [], []
        for instruction in instructions:
            pre.append(bos + tok(before.format(instruction=instruction), add_special_tokens=False).input_ids)
            cue = after.format(instruction=instruction)
            cue = cue.rstrip(" ") if spaced else cue
            ids = tok(cue, add_special_tokens=False).input_ids
            cues.append((cue, ids))
            post.append(ids[-self.max_prompt_tokens:])  # keep the end: it holds the assistant cue
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out = {}
        out["pre_ids"], out["pre_mask"] = pad_right(pre, pad, self.length_buckets)
        out["post_ids"], out["post_mask"] = pad_right(post, pad, self.length_buckets)
        if targets is not None:
            answers = []
            for (cue, cue_ids), target in zip(cues, targets):
                text = target + (self.end_symbol or "")
                ids = self.following(cue, cue_ids, text) if spaced else tok(text, add_special_tokens=False).input_ids
                if self.end_symbol is None:
                    ids = ids[: self.max_target_tokens - 1] + [tok.eos_token_id]
                else:
                    ids = ids[: self.max_target_tokens]
                answers.append(ids)
            out["target_ids"], out["target_mask"] = pad_right(answers, pad, self.length_buckets)
        return out

    def following(self, cue: str, cue_ids: list[int], text: str) -> list[int]:
        """The ids of ``text`` as it is tokenised after ``cue`` and one space in running text."""
        joint = self.tokenizer(cue + " " + text, add_special_tokens=False).input_ids
        if joint[: len(cue_ids)] == cue_ids:
            return joint[len(cue_ids):]
        # The cue's last token merged with what follows (rare: the cue ends in punctuation or a word);
        # then the answer is tokenised with its leading space on its own.
        return self.tokenizer(" " + text, add_special_tokens=False).input_ids


def pack(embeds: torch.Tensor, mask: torch.Tensor, labels: Optional[torch.Tensor], left: bool):
    """Move each row's padding to one side, keeping the order of real positions."""
    key = mask.long() if left else (~mask).long()
    order = torch.sort(key, dim=1, stable=True).indices
    embeds = torch.gather(embeds, 1, order.unsqueeze(-1).expand_as(embeds))
    mask = torch.gather(mask, 1, order)
    labels = torch.gather(labels, 1, order) if labels is not None else None
    return embeds, mask, labels


class CausalLM(LanguageModel):
    kind = "causal"

    def __init__(self, pretrained: str, mode: str = "frozen", dtype: Optional[torch.dtype] = None,
                 gguf_file: Optional[str] = None,
                 template: str = "###Human: <Audio><AudioHere></Audio> {instruction} ###Assistant: ",
                 end_symbol: Optional[str] = "###", add_bos: bool = True, max_prompt_tokens: int = 128,
                 max_target_tokens: int = 160, length_buckets: Optional[list[int]] = None,
                 stop_strings: Optional[list[str]] = None, lora: Optional[LoraOptions] = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kw = {}
        if gguf_file:
            if os.path.isabs(gguf_file):
                pretrained, gguf_file = os.path.split(gguf_file)
            kw["gguf_file"] = gguf_file
        model = AutoModelForCausalLM.from_pretrained(pretrained, dtype=dtype or torch.float32, **kw)
        tokenizer = AutoTokenizer.from_pretrained(pretrained, **kw)
        super().__init__(model, tokenizer, pretrained, mode, lora, task_type="CAUSAL_LM")
        self.gguf_file = gguf_file
        self.end_symbol = end_symbol
        self.stop_strings = list(stop_strings or [])
        self.text_processor = CausalText(tokenizer, template, end_symbol, add_bos, max_prompt_tokens,
                                         max_target_tokens, length_buckets)

    def assemble(self, soft, soft_mask, text, with_target: bool):
        """Embeddings, mask and labels of [pre ; soft ; post ; (target)], packed."""
        pre, post = self.embed(text["pre_ids"]), self.embed(text["post_ids"])
        pieces = [pre, soft.to(pre.dtype), post]
        masks = [text["pre_mask"], soft_mask, text["post_mask"]]
        labels = None
        if with_target:
            pieces.append(self.embed(text["target_ids"]))
            masks.append(text["target_mask"])
            n_prompt = sum(p.shape[1] for p in pieces[:3])
            ignore = torch.full((soft.shape[0], n_prompt), -100, dtype=torch.long, device=soft.device)
            answer = text["target_ids"].masked_fill(~text["target_mask"], -100)
            labels = torch.cat([ignore, answer], dim=1)
        embeds, mask = torch.cat(pieces, dim=1), torch.cat(masks, dim=1)
        return pack(embeds, mask, labels, left=not with_target)

    def loss_from_inputs(self, embeds, mask, labels) -> torch.Tensor:
        """Next-token cross-entropy at labelled positions only; the LM head runs only there."""
        hf = self.hf
        body = getattr(hf, hf.base_model_prefix)
        # use_cache=False: no key/value cache is filled in training (it also kept a compiled block
        # from serving every layer: each layer's cache slot is a different guard).
        hidden = body(inputs_embeds=embeds, attention_mask=mask.long(), use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        selected = targets != -100
        logits = hf.get_output_embeddings()(hidden[:, :-1][selected])
        return F.cross_entropy(logits.float(), targets[selected])

    def loss(self, soft, soft_mask, text):
        return self.loss_from_inputs(*self.assemble(soft, soft_mask, text, with_target=True))

    @torch.no_grad()
    def candidate_nll(self, soft, soft_mask, text, candidates: list[str], chunk: int = 16):
        """Summed token NLL of every candidate answer (with its end symbol, as trained) for every
        sample. Returns (nll_sum [B, C], token_counts [B, C]).

        The prompt (soft prompt and instruction, the long part) runs once per sample and its key/value
        cache is shared by the candidates, which are short: ranking 12 instruments costs about one
        prompt pass instead of twelve. Left padding with explicit position ids keeps every real
        token at the position it has in training, so the scores equal scoring each candidate alone."""
        import copy
        import inspect

        hf = self.hf
        body = getattr(hf, hf.base_model_prefix)
        head = hf.get_output_embeddings()
        answers = self.text_processor([""] * len(candidates), candidates)
        cand_ids, cand_mask = answers["target_ids"].to(soft.device), answers["target_mask"].to(soft.device)
        embeds, mask, _ = self.assemble(soft, soft_mask, text, with_target=False)  # left-padded
        positions = (mask.long().cumsum(1) - 1).clamp_min(0)
        # transformers 5.2x renamed `past_key_values` to `cache` (the old name warns, then goes).
        cache_arg = "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"
        prefix = body(inputs_embeds=embeds, attention_mask=mask.long(), position_ids=positions, use_cache=True)
        prefix_cache = getattr(prefix, cache_arg)
        first = F.log_softmax(head(prefix.last_hidden_state[:, -1]).float(), dim=-1)  # [B, V]: first answer token
        b, c = soft.shape[0], len(candidates)
        sums, counts = [], []
        for start in range(0, c, chunk):
            ids, keep = cand_ids[start:start + chunk], cand_mask[start:start + chunk]
            k = ids.shape[0]
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(k)
            ids_b, keep_b = ids.repeat(b, 1), keep.repeat(b, 1)  # row i*k + j: sample i, candidate j
            full_mask = torch.cat([mask.repeat_interleave(k, dim=0), keep_b], dim=1).long()
            pos = positions[:, -1:].repeat_interleave(k, dim=0) + torch.arange(1, ids.shape[1] + 1, device=ids.device)
            hidden = body(inputs_embeds=self.embed(ids_b), attention_mask=full_mask, position_ids=pos,
                          use_cache=True, **{cache_arg: cache}).last_hidden_state
            nll = -first.repeat_interleave(k, dim=0).gather(1, ids_b[:, :1]).squeeze(1)
            if ids.shape[1] > 1:
                rest = F.cross_entropy(head(hidden[:, :-1]).float().transpose(1, 2), ids_b[:, 1:], reduction="none")
                nll = nll + (rest * keep_b[:, 1:]).sum(1)
            sums.append(nll.view(b, k))
            counts.append(keep_b.sum(1).view(b, k))
        return torch.cat(sums, 1), torch.cat(counts, 1)

    @torch.no_grad()
    def generate(self, soft, soft_mask, text, gen: GenerationSpec) -> list[str]:
        embeds, mask, _ = self.assemble(soft, soft_mask, text, with_target=False)
        kw = self.decoding_kwargs(gen)
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        if self.stop_strings:
            # A sequence ends once its text ends with a stop string (transformers' StopStringCriteria
            # reads the tokens' text, so "###" stops whichever tokens spell it); MusiLingo's qa.py
            # stops at "###" by its two LLaMA token spellings, checking only the batch's first row.
            kw.update(stop_strings=self.stop_strings, tokenizer=tok)
        out = self.model.generate(inputs_embeds=embeds, attention_mask=mask.long(), pad_token_id=pad,
                                  eos_token_id=tok.eos_token_id, **kw)
        texts = tok.batch_decode(out, skip_special_tokens=True)
        for cut in ([self.end_symbol] if self.end_symbol else []) + self.stop_strings:
            texts = [t.split(cut, 1)[0] for t in texts]  # qa.py: output.split('###')[0]
        return [t.strip() for t in texts]
