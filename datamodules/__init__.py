"""Data: manifests, audio decoding, built-in sets and the Lightning datamodule."""

from bridgebench.datamodules.audio import AudioError, load_audio
from bridgebench.datamodules.datamodule import AudioTextDataModule
from bridgebench.datamodules.manifest import ManifestError, read_manifest

__all__ = ["AudioTextDataModule", "AudioError", "ManifestError", "load_audio", "read_manifest"]
