"""bridgebench: build and compare audio-LLM bridges (frozen audio encoder -> trainable bridge ->
soft prompts for a language model) with PyTorch Lightning.

Subpackages: ``bridgebench.encoders``, ``bridgebench.bridges``, ``bridgebench.llms``,
``bridgebench.datamodules``; assembly in ``bridgebench.module`` and ``bridgebench.cli``.
"""

__version__ = "0.1.0"
