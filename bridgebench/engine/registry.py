"""ID -> class tables for the three component kinds, and the functions that build them from specs.

Plain dictionaries, no import-time registration. Each row is a ``Kind``: the class, the family of
its ``tiny`` stand-in, and the kind's own option checks (a function in the component's file). Adding
a kind means its file, one row here and one options field in ``specs.py`` (README, "How to add a
bridge"); validation and assembly need nothing else.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Callable, Optional

import torch

from bridgebench.bridges import linear_pool, qformer
from bridgebench.bridges.base import Bridge
from bridgebench.encoders import clap, cnn, wav2vec_style
from bridgebench.encoders.base import AudioEncoder
from bridgebench.errors import ConfigError
from bridgebench.llms import causal, seq2seq
from bridgebench.llms.base import LanguageModel
from bridgebench.runtime.references import hub_error, is_hub_id, resolve_pretrained
from bridgebench.specs import BridgeSpec, EncoderSpec, LLMSpec


@dataclass(frozen=True)
class Kind:
    cls: type
    check: Callable[[object, str], list[str]]
    """``check(options, key) -> problems``: the kind's checks beyond its options' declared ranges."""
    family: Optional[str] = None
    """Family of the ``tiny`` stand-in that ``pretrained: tiny`` resolves to (None: the kind builds
    its own stand-ins, or has none)."""
    stage1: bool = False
    """A bridge with a Q-Former text branch: the stage-1 objectives (atc, atm, atg) can train it."""


ENCODERS = {
    "clap": Kind(clap.ClapEncoder, clap.check_options, "clap"),
    "mert": Kind(wav2vec_style.MertEncoder, wav2vec_style.check_options, "mert"),
    "data2vec": Kind(wav2vec_style.Data2VecEncoder, wav2vec_style.check_options, "data2vec"),
    "cnn": Kind(cnn.ConvEncoder, cnn.check_options),  # scratch, tiny, or a weights file
}
BRIDGES = {
    "qformer": Kind(qformer.QFormerBridge, qformer.check_options, stage1=True),
    "bridgenet": Kind(qformer.BridgeNetBridge, qformer.check_options, stage1=True),
    "linear_pool": Kind(linear_pool.LinearPoolBridge, linear_pool.check_options),
}
LLMS = {
    "seq2seq": Kind(seq2seq.Seq2SeqLM, seq2seq.check_options, "t5"),
    "causal": Kind(causal.CausalLM, causal.check_options, "llama"),
}
TABLES = {"encoder": ENCODERS, "bridge": BRIDGES, "llm": LLMS}


def _from_pretrained(key: str, reference: str, build: Callable):
    """Run a component's loading code; a hub id that cannot be fetched becomes one ConfigError line."""
    try:
        return build()
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - hub/network failures come in many exception types
        if is_hub_id(reference) and _is_hub_failure(err):
            raise hub_error(key, reference, err) from None
        raise


def _is_hub_failure(err: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(err)}
    hub = {"OSError", "LocalEntryNotFoundError", "RepositoryNotFoundError", "GatedRepoError", "HfHubHTTPError",
           "ConnectionError", "OfflineModeIsEnabled", "EntryNotFoundError", "HTTPError"}
    return bool(names & hub)


def _chain(err: BaseException):
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def build_encoder(spec: EncoderSpec) -> AudioEncoder:
    kind = ENCODERS[spec.name]
    kwargs = asdict(getattr(spec, spec.name))
    key = f"model.encoder.{spec.name}.pretrained"
    reference = kwargs["pretrained"]
    if kind.family is not None:
        kwargs["pretrained"] = resolve_pretrained(reference, key, kind.family)
    else:
        kwargs["pretrained"] = os.path.expanduser(reference)
    return _from_pretrained(key, reference, lambda: kind.cls(**kwargs))


def build_bridge(spec: BridgeSpec, in_dim: int, out_dim: Optional[int], with_text: bool = False) -> Bridge:
    kind = BRIDGES[spec.name]
    kwargs = asdict(getattr(spec, spec.name))
    if kind.stage1:
        kwargs["with_text"] = with_text  # stage 1 needs the text branch
    reference = kwargs.get("bert", "")
    return _from_pretrained(f"model.bridge.{spec.name}.bert", reference, lambda: kind.cls(in_dim, out_dim, **kwargs))


def _llm_kwargs(spec: LLMSpec) -> tuple[type, dict]:
    kind = LLMS[spec.name]
    kwargs = asdict(getattr(spec, spec.name))
    kwargs["pretrained"] = resolve_pretrained(kwargs["pretrained"], f"model.llm.{spec.name}.pretrained", kind.family)
    if getattr(spec, spec.name).pretrained == "tiny":
        kwargs.pop("gguf_file", None)  # the tiny stand-in is a plain folder
    return kind.cls, kwargs


def llm_width(spec: LLMSpec) -> int:
    """The LLM's embedding width, read from its config alone (no weights loaded)."""
    from transformers import AutoConfig

    _, kwargs = _llm_kwargs(spec)
    path, gguf = kwargs["pretrained"], kwargs.get("gguf_file")
    if gguf and os.path.isabs(gguf):
        path, gguf = os.path.split(gguf)
    reference = getattr(spec, spec.name).pretrained
    config = _from_pretrained(f"model.llm.{spec.name}.pretrained", reference,
                              lambda: AutoConfig.from_pretrained(path, **({"gguf_file": gguf} if gguf else {})))
    return int(config.get_text_config().hidden_size)


def build_llm(spec: LLMSpec, dtype: Optional[torch.dtype]) -> LanguageModel:
    cls, kwargs = _llm_kwargs(spec)
    reference = getattr(spec, spec.name).pretrained
    return _from_pretrained(f"model.llm.{spec.name}.pretrained", reference,
                            lambda: cls(mode=spec.mode, dtype=dtype, lora=spec.lora, **kwargs))
