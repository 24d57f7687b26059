"""Language models driven by soft prompts (see ``base.LanguageModel``)."""

from bridgebench.llms.base import LanguageModel
from bridgebench.llms.causal import CausalLM
from bridgebench.llms.seq2seq import Seq2SeqLM

__all__ = ["LanguageModel", "Seq2SeqLM", "CausalLM"]
