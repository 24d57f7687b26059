"""A language model that answers text instructions in batches: the generator behind LP-MusicCaps'
captions from tags and AudioSetCaps' merge step (causal or seq2seq; a GGUF file is de-quantised
by transformers, so the packaged SmolLM2 runs offline)."""

from __future__ import annotations

from typing import Optional

from bridgebench.runtime.references import hub_error, is_hub_id, pretrained_problem, resolve_pretrained
from bridgebench.errors import ConfigError


class TagCaptioner:
    """A causal or seq2seq LM that answers instructions in batches (greedy or sampled)."""

    def __init__(self, model: str, gguf_file: Optional[str] = None, max_new_tokens: int = 96,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                 repetition_penalty: float = 1.0):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        problem = pretrained_problem("--model", model)
        if problem:
            raise ConfigError(problem)
        path = resolve_pretrained(model, "--model", family="llama")  # "tiny": the tiny random LLaMA
        kw = {"gguf_file": gguf_file} if gguf_file else {}
        try:
            config = AutoConfig.from_pretrained(path, **kw)
            self.seq2seq = bool(getattr(config, "is_encoder_decoder", False))
            cls = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
            self.model = cls.from_pretrained(path, **kw).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(path, **kw)
        except OSError as err:
            if is_hub_id(model):
                raise hub_error("--model", model, err) from None
            raise ConfigError(f"--model: cannot load '{model}'"
                              + (f" with --gguf-file {gguf_file}" if gguf_file else "") + f": {err}") from None
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right" if self.seq2seq else "left"
        self.settings = {"model": model, "gguf_file": gguf_file, "max_new_tokens": max_new_tokens,
                         "do_sample": do_sample, "temperature": temperature, "top_p": top_p, "seed": seed,
                         "repetition_penalty": repetition_penalty}
        self.torch = torch

    def prompt(self, instruction: str, system: Optional[str] = None) -> str:
        """The model's input text: through the chat template when the tokenizer has one (with
        ``system`` as a system turn), else the plain text, after ``system`` and a blank line."""
        tok = self.tokenizer
        if not self.seq2seq and getattr(tok, "chat_template", None):
            turns = [{"role": "user", "content": instruction}]
            if system is not None:
                turns.insert(0, {"role": "system", "content": system})
            try:
                return tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            except Exception:  # noqa: BLE001 - jinja's TemplateError: a template without a system role
                if system is None:
                    raise
                return tok.apply_chat_template([{"role": "user", "content": f"{system}\n\n{instruction}"}],
                                               tokenize=False, add_generation_prompt=True)
        return instruction if system is None else f"{system}\n\n{instruction}"

    def __call__(self, instructions: list[str], seed: Optional[int] = None, do_sample: Optional[bool] = None,
                 system: Optional[str] = None) -> list[str]:
        """Answers; ``seed``/``do_sample`` override the settings for this call (a retry that must
        differ from the first answer samples with another seed); ``system``: a system message."""
        torch, s = self.torch, self.settings
        sample = s["do_sample"] if do_sample is None else do_sample
        batch = self.tokenizer([self.prompt(i, system) for i in instructions], return_tensors="pt", padding=True,
                               add_special_tokens=self.seq2seq)
        torch.manual_seed(s["seed"] if seed is None else seed)
        kw = dict(max_new_tokens=s["max_new_tokens"], do_sample=sample,
                  pad_token_id=self.tokenizer.pad_token_id, repetition_penalty=s["repetition_penalty"])
        if sample:
            kw.update(temperature=s["temperature"], top_p=s["top_p"])
        with torch.no_grad():
            out = self.model.generate(**batch, **kw)
        if not self.seq2seq:
            out = out[:, batch["input_ids"].shape[1]:]
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
