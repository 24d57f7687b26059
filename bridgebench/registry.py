"""ID -> class tables for the three component kinds, and the functions that build them from specs.

Plain dictionaries, no import-time registration: adding a kind means adding one row here, one
options dataclass in ``config.py`` and the class itself (README, "How to add a bridge").
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Optional

import torch

from bridgebench.bridges import Bridge, BridgeNetBridge, LinearPoolBridge, QFormerBridge
from bridgebench.config import BridgeSpec, EncoderSpec, LLMSpec
from bridgebench.encoders import AudioEncoder, ClapEncoder, ConvEncoder, Data2VecEncoder, MertEncoder
from bridgebench.llms import CausalLM, LanguageModel, Seq2SeqLM
from bridgebench.paths import resolve_pretrained

# name -> (class, family of its `tiny` stand-in)
ENCODERS = {
    "clap": (ClapEncoder, "clap"),
    "mert": (MertEncoder, "mert"),
    "data2vec": (Data2VecEncoder, "data2vec"),
    "cnn": (ConvEncoder, None),  # no checkpoint to resolve: scratch, tiny, or a weights file
}
BRIDGES = {
    "qformer": QFormerBridge,
    "bridgenet": BridgeNetBridge,
    "linear_pool": LinearPoolBridge,
}
LLMS = {
    "seq2seq": (Seq2SeqLM, "t5"),
    "causal": (CausalLM, "llama"),
}


def build_encoder(spec: EncoderSpec) -> AudioEncoder:
    cls, family = ENCODERS[spec.name]
    kwargs = asdict(getattr(spec, spec.name))
    if family is not None:
        kwargs["pretrained"] = resolve_pretrained(kwargs["pretrained"], f"model.encoder.{spec.name}.pretrained", family)
    else:
        kwargs["pretrained"] = os.path.expanduser(kwargs["pretrained"])
    return cls(**kwargs)


def build_bridge(spec: BridgeSpec, in_dim: int, out_dim: Optional[int], with_text: bool = False) -> Bridge:
    kwargs = asdict(getattr(spec, spec.name))
    if spec.name in ("qformer", "bridgenet"):
        kwargs["with_text"] = with_text  # stage 1 needs the text branch
    return BRIDGES[spec.name](in_dim, out_dim, **kwargs)


def _llm_kwargs(spec: LLMSpec) -> tuple[type, dict]:
    cls, family = LLMS[spec.name]
    kwargs = asdict(getattr(spec, spec.name))
    kwargs["pretrained"] = resolve_pretrained(kwargs["pretrained"], f"model.llm.{spec.name}.pretrained", family)
    if spec.name == "causal" and getattr(spec, spec.name).pretrained == "tiny":
        kwargs["gguf_file"] = None  # the tiny stand-in is a plain folder
    return cls, kwargs


def llm_width(spec: LLMSpec) -> int:
    """The LLM's embedding width, read from its config alone (no weights loaded)."""
    from transformers import AutoConfig

    _, kwargs = _llm_kwargs(spec)
    path, gguf = kwargs["pretrained"], kwargs.get("gguf_file")
    if gguf and os.path.isabs(gguf):
        path, gguf = os.path.split(gguf)
    config = AutoConfig.from_pretrained(path, **({"gguf_file": gguf} if gguf else {}))
    return int(config.get_text_config().hidden_size)


def build_llm(spec: LLMSpec, dtype: Optional[torch.dtype]) -> LanguageModel:
    cls, kwargs = _llm_kwargs(spec)
    return cls(mode=spec.mode, dtype=dtype, lora=spec.lora, **kwargs)
