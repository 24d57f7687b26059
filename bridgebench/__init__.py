"""bridgebench: build and compare audio-LLM bridges (frozen audio encoder -> trainable bridge ->
soft prompts for a language model) with PyTorch Lightning.

Layers, each importing only the ones before it: leaves (``errors``, ``specs``, ``runtime``) ->
components (``bridgebench.encoders``, ``.bridges``, ``.llms``, ``.datamodules``) -> ``evaluation``
(pure scoring) -> ``engine`` (the LightningModule, validation, checkpoints, the CLI) -> commands
(``tools``, ``captiondata``, ``__main__``). ``BridgeModule`` and ``AudioTextDataModule`` are
importable from here (loaded on first use, so importing a leaf stays cheap).
"""

__version__ = "0.1.0"
__all__ = ["BridgeModule", "AudioTextDataModule"]


def __getattr__(name: str):
    if name == "BridgeModule":
        from bridgebench.engine.module import BridgeModule

        return BridgeModule
    if name == "AudioTextDataModule":
        from bridgebench.datamodules import AudioTextDataModule

        return AudioTextDataModule
    raise AttributeError(f"module 'bridgebench' has no attribute {name!r}")
