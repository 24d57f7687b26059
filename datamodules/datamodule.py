"""The Lightning datamodule: manifest -> examples -> padded batches with tokenised text.

The model decides the audio rate, the window and the tokenisers; the datamodule learns them late
(``connect``, done automatically in ``setup`` from the trainer's module), so nothing about the
encoder or LLM is configured twice. Audio is decoded, mixed to mono and resampled to the encoder's
rate here, never by the user; training crops at random, evaluation deterministically from the
clip's start. Several captions per clip: training samples one per visit, evaluation keeps all as
references.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from bridgebench.datamodules.audio import load_audio
from bridgebench.datamodules.fixtures import BUILTINS
from bridgebench.datamodules.manifest import Clip, ManifestError, read_manifest

TASKS = ("caption", "qa")


@dataclass
class Example:
    clip: Clip
    instruction: Optional[str]  # None: drawn from the instruction templates
    targets: list[str]  # one is drawn in training; all are references in evaluation


def build_examples(clips: list[Clip], task: str, source: str) -> list[Example]:
    out = []
    for clip in clips:
        if task == "caption":
            if not clip.captions:
                raise ManifestError(f"{source}: clip '{clip.id}' has no captions (task: caption)")
            out.append(Example(clip, None, clip.captions))
        else:
            if not clip.qa:
                raise ManifestError(f"{source}: clip '{clip.id}' has no qa pairs (task: qa)")
            for pair in clip.qa:
                out.append(Example(clip, pair["instruction"], [pair["answer"]]))
    return out


class AudioTextDataset(Dataset):
    def __init__(self, examples: list[Example], sample_rate: int, clip_seconds: Optional[float],
                 instructions: list[str], train: bool):
        self.examples = examples
        self.sample_rate = sample_rate
        self.clip_samples = None if clip_seconds is None else int(round(clip_seconds * sample_rate))
        self.instructions = instructions
        self.train = train

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        ex = self.examples[index]
        audio = load_audio(ex.clip.audio, self.sample_rate, ex.clip.start, ex.clip.end)
        if self.clip_samples is not None and len(audio) > self.clip_samples:
            # Seeded per worker by Lightning (seed_everything(workers=True)), so crops are reproducible.
            offset = random.randrange(len(audio) - self.clip_samples + 1) if self.train else 0
            audio = audio[offset: offset + self.clip_samples]
        if ex.instruction is not None:
            instruction = ex.instruction
        else:
            instruction = random.choice(self.instructions) if self.train else self.instructions[0]
        target = random.choice(ex.targets) if self.train else ex.targets[0]
        return {"id": ex.clip.id, "audio": torch.from_numpy(audio), "instruction": instruction, "target": target,
                "references": list(ex.targets)}


@dataclass
class Collate:
    """Pads audio (+ mask) and tokenises the text with the model's processors."""

    text: object

    def __call__(self, items: list[dict]) -> dict:
        longest = max(len(it["audio"]) for it in items)
        audio = torch.zeros(len(items), longest)
        mask = torch.zeros(len(items), longest, dtype=torch.bool)
        for i, it in enumerate(items):
            audio[i, : len(it["audio"])] = it["audio"]
            mask[i, : len(it["audio"])] = True
        instructions = [it["instruction"] for it in items]
        targets = [it["target"] for it in items]
        return {"id": [it["id"] for it in items], "audio": audio, "audio_mask": mask, "instruction": instructions,
                "target": targets, "references": [it["references"] for it in items],
                "text": self.text(instructions, targets)}


class AudioTextDataModule(L.LightningDataModule):
    """Audio-text pairs from a JSONL manifest (see README, "Manifest format").

    Args:
        manifest: Path of a JSONL manifest, or a built-in set: ``builtin:tones``.
        task: ``caption`` (target = a caption, instruction = a template) or ``qa`` (the clip's
            instruction/answer pairs, one example each).
        instructions: Instruction templates for ``caption``; training draws one per example,
            evaluation uses the first.
        batch_size: Training batch size per device.
        eval_batch_size: Validation/test/predict batch size (default: batch_size).
        num_workers: Data-loader worker processes.
        clip_seconds: Longest audio window; longer clips are cropped (randomly in training). The
            encoder's own window, if shorter, wins.
        splits: Manifest split names used for train, val, test and predict.
        limit: Use only the first N examples of each split (quick checks).
    """

    def __init__(
        self,
        manifest: str = "builtin:tones",
        task: str = "caption",
        instructions: Optional[list[str]] = None,
        batch_size: int = 8,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 2,
        clip_seconds: Optional[float] = 30.0,
        splits: Optional[dict[str, str]] = None,
        limit: Optional[int] = None,
    ):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"data.task: unknown task '{task}'; choose one of: {', '.join(TASKS)}")
        self.manifest = manifest
        self.task = task
        self.instructions = list(instructions or ["Generate an objective music description."])
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.clip_seconds = clip_seconds
        self.splits = {"train": "train", "val": "val", "test": "test", "predict": "test", **(splits or {})}
        self.limit = limit
        self.contract = None
        self._clips: Optional[list[Clip]] = None

    def manifest_path(self) -> str:
        if self.manifest in BUILTINS:
            return str(BUILTINS[self.manifest]())
        if self.manifest.startswith("builtin:"):
            raise ManifestError(f"data.manifest: unknown built-in set '{self.manifest}'; known: {', '.join(BUILTINS)}")
        if not os.path.exists(self.manifest):
            raise ManifestError(f"data.manifest: '{self.manifest}' does not exist")
        return self.manifest

    def connect(self, contract) -> None:
        """Receive the model's data contract (sample rate, window, text processors)."""
        self.contract = contract

    def setup(self, stage: Optional[str] = None) -> None:
        if self.contract is None:
            if self.trainer is None or self.trainer.lightning_module is None:
                raise RuntimeError("AudioTextDataModule needs connect(module.data_contract()) before use")
            self.connect(self.trainer.lightning_module.data_contract())
        if self._clips is None:
            self._clips = read_manifest(self.manifest_path())

    def dataset(self, role: str) -> AudioTextDataset:
        self.setup()
        split = self.splits[role]
        clips = [c for c in self._clips if c.split == split]
        examples = build_examples(clips, self.task, f"{self.manifest} (split '{split}')")
        if self.limit is not None:
            examples = examples[: self.limit]
        if not examples:
            raise ManifestError(f"{self.manifest}: split '{split}' has no examples for task '{self.task}'")
        windows = [s for s in (self.clip_seconds, self.contract.max_seconds) if s is not None]
        return AudioTextDataset(examples, self.contract.sample_rate, min(windows) if windows else None,
                                self.instructions, train=role == "train")

    def _loader(self, role: str) -> DataLoader:
        train = role == "train"
        return DataLoader(
            self.dataset(role), batch_size=self.batch_size if train else self.eval_batch_size, shuffle=train,
            num_workers=self.num_workers, collate_fn=Collate(self.contract.text), drop_last=False,
            persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self):
        return self._loader("train")

    def val_dataloader(self):
        return self._loader("val")

    def test_dataloader(self):
        return self._loader("test")

    def predict_dataloader(self):
        return self._loader("predict")
