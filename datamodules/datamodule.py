"""The Lightning datamodule: manifest -> examples -> padded batches with tokenised text.

The model decides the audio rate, the window and the tokenisers; the datamodule learns them late
(``connect``, done automatically in ``setup`` from the trainer's module), so nothing about the
encoder or LLM is configured twice. Audio is decoded, mixed to mono and resampled to the encoder's
rate here, never by the user; training crops at random, evaluation deterministically from the
clip's start. Several captions per clip: training samples one per visit, evaluation keeps all as
references.

With ``features: cached`` the dataset serves the frozen encoder's cached outputs instead of audio
(see ``features.py``). With ``skip_bad_audio: true`` a clip that cannot be decoded is left out of
its batch, listed in the batch's ``skipped`` entry and counted by the module (reported at the end of
the epoch and written to the run folder); without it, the error stops the run naming the file.
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
from bridgebench.datamodules.augment import check_phrases, drop_phrases
from bridgebench.datamodules.features import FeatureStore, example_key
from bridgebench.datamodules.fixtures import BUILTINS
from bridgebench.datamodules.manifest import MAX_TEXT_CHARS, Clip, read_manifest
from bridgebench.errors import AudioError, ConfigError, ConfigProblems, FeatureCacheMiss, ManifestError
from bridgebench.runtime.distributed import rank_and_world

TASKS = ("caption", "qa", "caption+qa")
FEATURE_MODES = ("audio", "cached", "auto")
CROPS = ("random", "start")
TRAIN_TARGETS = ("random", "first")
TRAIN_QUESTIONS = ("one", "all")


def check_options(data: dict) -> list[str]:
    """Every problem of a ``data:`` section (the datamodule's arguments, as parsed), one line each."""
    out = []
    if data.get("eval_task") is not None and data["eval_task"] not in TASKS:
        out.append(f"data.eval_task: unknown value '{data['eval_task']}'; choose one of: {', '.join(TASKS)}")
    for key, options in (("task", TASKS), ("features", FEATURE_MODES), ("train_crop", CROPS),
                         ("train_target", TRAIN_TARGETS), ("train_questions", TRAIN_QUESTIONS)):
        if key in data and data[key] not in options:
            out.append(f"data.{key}: unknown value '{data[key]}'; choose one of: {', '.join(options)}")
    if data.get("train_questions", "one") == "all" and data.get("task", "caption") != "caption+qa":
        out.append(f"data.train_questions: 'all' applies to task caption+qa, not '{data.get('task', 'caption')}' "
                   "(task qa already trains on every question)")
    for key, low, optional in (("batch_size", 1, False), ("eval_batch_size", 1, True), ("num_workers", 0, False),
                               ("limit", 1, True)):
        value = data.get(key)
        if value is None and (optional or key not in data):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            out.append(f"data.{key}: {value!r}; it must be an integer >= {low}" + (" or null" if optional else ""))
    seconds = data.get("clip_seconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0):
        out.append(f"data.clip_seconds: {seconds!r}; it must be > 0, or null for whole clips")
    instructions = data.get("instructions")
    if instructions is not None and (not isinstance(instructions, list) or not instructions
                                     or not all(isinstance(i, str) for i in instructions)):
        out.append(f"data.instructions: {instructions!r}; give a non-empty list of instruction strings")
    out += check_phrases(data.get("drop_phrases"), data.get("drop_phrase_p", 0.6))
    splits = data.get("splits") or {}
    unknown = sorted(set(splits) - {"train", "val", "test", "predict"})
    if unknown:
        out.append(f"data.splits: unknown role(s) {unknown}; the roles are train, val, test, predict")
    manifest = data.get("manifest")
    if isinstance(manifest, str):
        if manifest.startswith("builtin:") and manifest not in BUILTINS:
            out.append(f"data.manifest: unknown built-in set '{manifest}'; known: {', '.join(BUILTINS)}")
        elif not manifest.startswith("builtin:") and not os.path.isfile(manifest):
            what = "is a folder, not a manifest file" if os.path.isdir(manifest) else "does not exist"
            out.append(f"data.manifest: '{manifest}' {what}")
    return out


@dataclass
class Example:
    clip: Clip
    instruction: Optional[str]  # None: drawn from the instruction templates
    targets: list[str]  # one is drawn in training; all are references in evaluation
    qa: Optional[list[dict]] = None  # set: one of these instruction/answer pairs is drawn per visit
    qa_type: Optional[str] = None  # the question's type (manifest qa ``type``), for per-type scores


def build_examples(clips: list[Clip], task: str, source: str, train: bool = False,
                   group: Optional[int] = None, all_questions: bool = False) -> list[Example]:
    """A split's examples. In training, ``caption+qa`` gives each clip two examples, its caption and a
    question drawn per visit (``all_questions``: its caption and every question, one example each);
    in evaluation it gives the caption and every question, so caption metrics and per-question-type
    answers are both measured (``eval_task``).

    In evaluation, ``group`` clips at a time (the evaluation batch across all ranks) come as their
    captions, then their questions clip by clip: a batch generates until its longest text ends, so a
    caption among short answers made every batch decode a caption's length. Every prefix still holds
    both kinds (a run cut short by ``limit_test_batches`` scores both). The scorers sort their rows, so
    no generated-text metric depends on the order; the logged loss is a mean of per-batch token means,
    so in homogeneous batches each example weighs about the same."""
    out: list[Example] = []
    step = group if group and not train else len(clips) or 1
    for start in range(0, len(clips), step):
        captions, questions = [], []
        for clip in clips[start:start + step]:
            if task in ("caption", "caption+qa"):
                if not clip.captions:
                    raise ManifestError(f"{source}: clip '{clip.id}' has no captions (task: {task})")
                captions.append(Example(clip, None, clip.captions))
            if task in ("qa", "caption+qa"):
                if not clip.qa:
                    raise ManifestError(f"{source}: clip '{clip.id}' has no qa pairs (task: {task})")
                if task == "qa" or not train or all_questions:
                    questions.extend(Example(clip, pair["instruction"], [pair["answer"]], qa_type=pair.get("type"))
                                     for pair in clip.qa)
                else:
                    captions.append(Example(clip, None, [], qa=clip.qa))
        out += captions + questions
    return out


class AudioTextDataset(Dataset):
    def __init__(self, examples: list[Example], sample_rate: int, clip_seconds: Optional[float],
                 instructions: list[str], train: bool, random_crop: bool = True, skip_bad_audio: bool = False,
                 store: Optional[FeatureStore] = None, serve_features: bool = False, cache_hint: str = "",
                 seed: int = 0, train_target: str = "random", qa_instructions: Optional[dict[str, str]] = None,
                 drop_phrases: Optional[list[str]] = None, drop_phrase_p: float = 0.6):
        self.examples = examples
        self.qa_instructions = qa_instructions or {}
        self.drop_phrases = drop_phrases  # None: targets as written (see augment.py)
        self.drop_phrase_p = drop_phrase_p
        self.train_target = train_target
        self.seed = seed
        self.sample_rate = sample_rate
        self.clip_seconds = clip_seconds
        self.clip_samples = None if clip_seconds is None else int(round(clip_seconds * sample_rate))
        self.instructions = instructions
        self.train = train
        self.random_crop = random_crop and train and not serve_features
        self.skip_bad_audio = skip_bad_audio
        self.store = store
        self.serve_features = serve_features
        self.cache_hint = cache_hint

    def __len__(self) -> int:
        return len(self.examples)

    def cache_key(self, clip: Clip) -> str:
        return example_key(clip.audio, clip.start, clip.end, self.clip_seconds, self.sample_rate)

    def _signal(self, clip: Clip, rng: random.Random) -> dict:
        if self.serve_features:
            key = self.cache_key(clip)
            if key not in self.store:
                raise FeatureCacheMiss(
                    f"{clip.audio}: no cached features in {self.store.root} (changed file, window or encoder?); "
                    f"fill the cache with: {self.cache_hint}")
            feats, valid = self.store.get(key)
            return {"features": feats, "valid": valid}
        audio = load_audio(clip.audio, self.sample_rate, clip.start, clip.end, window=self.clip_seconds,
                           choose_offset=(lambda spare: rng.randrange(spare + 1)) if self.random_crop else None)
        if self.clip_samples is not None:
            audio = audio[: self.clip_samples]  # resampling can round one sample over
        out = {"audio": torch.from_numpy(audio)}
        if self.store is not None:
            out["cache_key"] = self.cache_key(clip)
        return out

    def __getitem__(self, item) -> dict:
        index, epoch = item if isinstance(item, tuple) else (item, -1)
        ex = self.examples[index]
        rng = random.Random(f"{self.seed}/{epoch}/{index}")  # reproducible, whatever process reads it
        try:
            signal = self._signal(ex.clip, rng)
        except AudioError as err:
            if not self.skip_bad_audio:
                raise
            return {"skip": True, "id": ex.clip.id, "audio_path": ex.clip.audio, "reason": str(err)}
        # None for a caption; a question's manifest ``type``, or "qa" when the manifest gives none.
        qa_type = (ex.qa_type or "qa") if ex.instruction is not None else None
        if ex.qa is not None:
            pair = rng.choice(ex.qa)
            instruction, target, references = pair["instruction"], pair["answer"], [pair["answer"]]
            qa_type = pair.get("type") or "qa"
            instruction = self.qa_instructions.get(qa_type, instruction)
        else:
            if ex.instruction is not None:
                instruction = self.qa_instructions.get(qa_type, ex.instruction)
            else:
                instruction = rng.choice(self.instructions) if self.train else self.instructions[0]
            target = rng.choice(ex.targets) if self.train and self.train_target == "random" else ex.targets[0]
            references = list(ex.targets)
        if self.drop_phrases:
            target = drop_phrases(target, self.drop_phrases, self.drop_phrase_p, rng)
        return {"id": ex.clip.id, "example": index, **signal, "instruction": instruction, "target": target,
                "references": references, "labels": ex.clip.labels, "tags": ex.clip.tags,
                "qa_type": qa_type}


class EpochSampler(torch.utils.data.distributed.DistributedSampler):
    """One epoch's indices (this rank's share under DDP), each paired with the epoch number.

    The dataset derives every random choice (crop offset, caption, instruction) from
    (seed, epoch, index) and the order comes from (seed, epoch), so any epoch replays identically,
    also after a restart; ``resume_at`` skips the samples a checkpoint had already trained on.
    A DistributedSampler subclass, so Lightning keeps it under DDP and calls ``set_epoch``.
    """

    def __init__(self, dataset, shuffle: bool, seed: int):
        rank, world = rank_and_world()
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self._skip: tuple[int, int] = (-1, 0)  # (epoch, samples of this rank) to skip once

    def resume_at(self, epoch: int, samples: int) -> None:
        self._skip = (epoch, samples)

    def __iter__(self):
        indices = list(super().__iter__())  # seeded by (seed, epoch), padded and sharded per rank
        skip = self._skip[1] if self._skip[0] == self.epoch else 0
        self._skip = (-1, 0)
        for index in indices[skip:]:
            yield (index, self.epoch)


class ResumableLoader(DataLoader):
    """A DataLoader Lightning treats as resumable. Its position lives in the EpochSampler, which the
    module sets from the checkpoint's own progress counters (so prefetching never skews it)."""

    def state_dict(self) -> dict:
        return {"sampler": "EpochSampler"}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class Collate:
    """Pads audio (+ mask) and tokenises the text with the model's processors. ``bridge_instruction``
    (if set) is what a bridge that reads the instruction sees instead of each example's own (the
    LLM still gets the real one): the instruction-awareness ablation."""

    text: object
    bridge_instruction: Optional[str] = None

    def __call__(self, items: list[dict]) -> dict:
        skipped = [{k: it[k] for k in ("id", "audio_path", "reason")} for it in items if it.get("skip")]
        items = [it for it in items if not it.get("skip")]
        instructions = [it["instruction"] for it in items]
        targets = [it["target"] for it in items]
        for_bridge = None if self.bridge_instruction is None else [self.bridge_instruction] * len(items)
        batch = {"id": [it["id"] for it in items], "example": [it.get("example") for it in items],
                 "instruction": instructions, "target": targets,
                 "references": [it["references"] for it in items], "labels": [it["labels"] for it in items],
                 "tags": [it["tags"] for it in items], "qa_type": [it.get("qa_type") for it in items],
                 "skipped": skipped, "text": self.text(instructions, targets, for_bridge) if items else {}}
        if items and "features" in items[0]:
            batch["features"], _ = pad_batch([it["features"] for it in items])
            valid = torch.tensor([it["valid"] for it in items])
            batch["feature_mask"] = torch.arange(batch["features"].shape[1]).unsqueeze(0) < valid.unsqueeze(1)
        else:
            batch["audio"], batch["audio_mask"] = pad_batch([it["audio"] for it in items])
        if items and "cache_key" in items[0]:
            batch["cache_key"] = [it["cache_key"] for it in items]
        return batch


def pad_batch(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad tensors [T, ...] to [B, T_max, ...] with a bool mask [B, T_max]."""
    longest = max([len(s) for s in seqs] + [0])
    trailing = seqs[0].shape[1:] if seqs else ()
    out = torch.zeros((len(seqs), longest, *trailing), dtype=seqs[0].dtype if seqs else torch.float32)
    mask = torch.zeros(len(seqs), longest, dtype=torch.bool)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
        mask[i, : len(s)] = True
    return out, mask


class AudioTextDataModule(L.LightningDataModule):
    """Audio-text pairs from a JSONL manifest (see README, "Manifest format").

    Args:
        manifest: Path of a JSONL manifest, or a built-in set: ``builtin:tones``.
        task: ``caption`` (target = a caption, instruction = a template), ``qa`` (the clip's
            instruction/answer pairs, one example each) or ``caption+qa`` (training sees each clip
            twice an epoch: its caption, and one of its questions drawn per visit). The questions
            give every step direct targets for single attributes, which a caption names among many
            words.
        train_questions: With ``caption+qa``, what training draws of each clip besides its caption:
            ``one`` question per visit (each question type 1/2n of the draws for n types, while every
            caption names every attribute) or ``all`` of them, one example each (each type as often as
            the caption; the caption 1/(n+1) of the draws). An epoch holds n+1 examples a clip then.
        eval_task: What validation, test and predict use: ``caption``, ``qa`` or ``caption+qa`` (the
            caption and every question of each clip, scored apart: caption metrics on the captions,
            answers per question type). Default: ``task``, except that ``caption+qa`` evaluates on
            the captions alone.
        instructions: Instruction templates for ``caption``; training draws one per example,
            evaluation uses the first.
        batch_size: Training batch size per device.
        eval_batch_size: Validation/test/predict batch size (default: batch_size).
        num_workers: Data-loader worker processes.
        clip_seconds: Longest audio window; longer clips are cropped (randomly in training). The
            encoder's own window, if shorter, wins.
        splits: Manifest split names used for train, val, test and predict.
        limit: Use only the first N examples of each split (quick checks).
        features: ``audio`` (decode and encode every step), ``cached`` (serve the frozen
            encoder's outputs written by ``python -m bridgebench cache``; a missing clip is an
            error) or ``auto`` (the CLI fills the cache for missing clips first, then serves it).
        train_crop: ``random`` crops of long clips in training, or ``start`` (always from the
            clip's start; cached features imply it).
        skip_bad_audio: Leave undecodable clips out (counted, listed in the run folder) instead of
            stopping with an error naming the file.
        feature_cache: Folder of the feature cache (default: ``$BRIDGEBENCH_CACHE/features``).
        train_target: Which of a clip's captions training uses: ``random`` (one drawn per visit) or
            ``first`` (always the first, e.g. music-synth's canonical tag list). Evaluation always
            scores against all of them.
        qa_instructions: Instructions per question type (``{instrument: "The most prominent
            instrument in this music is"}``) that replace the manifest's wording of those questions,
            in training and evaluation: a paper's instruction templates on a set's own questions.
        bridge_instruction: A fixed text that a bridge reading the instruction (the Bridge-Net) sees
            instead of each example's instruction; the LLM still gets the real one. ``""`` blinds the
            bridge to the question: the instruction-awareness ablation (set it in fit to train so,
            or in test alone).
        drop_phrases: Phrases removed at random from the training and validation targets (BLAP's
            stage-2 augmentation of MusicCaps boiler-plate, e.g. "The low quality recording"): in this
            order, each occurrence of a phrase (case-sensitive substring) goes with probability
            ``drop_phrase_p`` until the first draw that keeps one (see ``augment.py``). Test and
            predict targets, and every reference, stay as written.
        drop_phrase_p: Probability of one removal (BLAP: 0.6).
    """

    def __init__(
        self,
        manifest: str = "builtin:tones",
        task: str = "caption",
        eval_task: Optional[str] = None,
        instructions: Optional[list[str]] = None,
        batch_size: int = 8,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 2,
        clip_seconds: Optional[float] = 30.0,
        splits: Optional[dict[str, str]] = None,
        limit: Optional[int] = None,
        features: str = "audio",
        train_crop: str = "random",
        skip_bad_audio: bool = False,
        feature_cache: Optional[str] = None,
        train_target: str = "random",
        train_questions: str = "one",
        qa_instructions: Optional[dict[str, str]] = None,
        bridge_instruction: Optional[str] = None,
        drop_phrases: Optional[list[str]] = None,
        drop_phrase_p: float = 0.6,
    ):
        super().__init__()
        problems = check_options(dict(manifest=manifest, task=task, eval_task=eval_task, instructions=instructions,
                                      batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers,
                                      clip_seconds=clip_seconds, splits=splits, limit=limit, features=features,
                                      train_crop=train_crop, train_target=train_target,
                                      train_questions=train_questions,
                                      drop_phrases=drop_phrases, drop_phrase_p=drop_phrase_p))
        if problems:
            raise ConfigProblems(problems)
        self.features = features
        self.train_crop = train_crop
        self.skip_bad_audio = skip_bad_audio
        self.train_target = train_target
        self.train_questions = train_questions
        self.bridge_instruction = bridge_instruction
        self.qa_instructions = dict(qa_instructions or {})
        self.drop_phrases = drop_phrases
        self.drop_phrase_p = drop_phrase_p
        self.feature_cache = feature_cache
        self.cache_hint = "python -m bridgebench cache --config <the same config files>"
        self.manifest = manifest
        self.task = task
        self.eval_task = eval_task or ("caption" if task == "caption+qa" else task)
        self.instructions = list(instructions or ["Generate an objective music description."])
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.clip_seconds = clip_seconds
        self.splits = {"train": "train", "val": "val", "test": "test", "predict": "test", **(splits or {})}
        self.limit = limit
        self.contract = None
        self._clips: Optional[list[Clip]] = None
        self._resume: Optional[tuple[int, int]] = None
        self.train_sampler: Optional[EpochSampler] = None

    def resume_at(self, epoch: int, batches: int) -> None:
        """Continue training inside ``epoch`` after ``batches`` batches (from a checkpoint)."""
        self._resume = (epoch, batches * self.batch_size)

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
            counts: dict = {}
            path = self.manifest_path()
            self._clips = read_manifest(path, counts)
            if counts.get("truncated"):
                from lightning.pytorch.utilities import rank_zero_warn

                rank_zero_warn(f"{path}: truncated {counts['truncated']} text(s) longer than "
                               f"{MAX_TEXT_CHARS} characters")
            self.text_counts = counts

    def clips(self, role: str) -> list[Clip]:
        """The clips of a role's split (train, val, test or predict)."""
        self.setup()
        return [c for c in self._clips if c.split == self.splits[role]]

    def tag_lists(self, role: str = "train") -> list[list[str]]:
        """The ``tags`` of every clip in a role's split (the `tag` objective's vocabulary source)."""
        return [c.tags for c in self.clips(role)]

    def target_texts(self, role: str = "train") -> list[str]:
        """Every caption and answer of a role's split (e.g. the training text, for novelty metrics)."""
        clips = self.clips(role)
        return [c for clip in clips for c in clip.captions] + [qa["answer"] for clip in clips for qa in clip.qa]

    def label_values(self, role: str, key: str) -> list[str]:
        """The distinct values of ``labels[key]`` in a role's split, sorted (list labels flattened)."""
        values = set()
        for clip in self.clips(role):
            if key in clip.labels:
                v = clip.labels[key]
                values.update(v if isinstance(v, list) else [v])
        return sorted(str(v) for v in values)

    def dataset(self, role: str) -> AudioTextDataset:
        split = self.splits[role]
        clips = self.clips(role)
        task = self.task if role == "train" else self.eval_task
        examples = build_examples(clips, task, f"{self.manifest} (split '{split}')", train=role == "train",
                                  group=self.eval_batch_size * rank_and_world()[1],
                                  all_questions=self.train_questions == "all")
        if self.limit is not None:
            examples = examples[: self.limit]
        if not examples:
            raise ManifestError(f"{self.manifest}: split '{split}' has no examples for task '{task}'")
        windows = [s for s in (self.clip_seconds, self.contract.max_seconds) if s is not None]
        return AudioTextDataset(examples, self.contract.sample_rate, min(windows) if windows else None,
                                self.instructions, train=role == "train", random_crop=self.train_crop == "random",
                                skip_bad_audio=self.skip_bad_audio, store=self.store(),
                                serve_features=self.features != "audio", cache_hint=self.cache_hint,
                                seed=self.seed(), train_target=self.train_target, qa_instructions=self.qa_instructions,
                                drop_phrases=self.drop_phrases if role in ("train", "val") else None,
                                drop_phrase_p=self.drop_phrase_p)

    @staticmethod
    def seed() -> int:
        """The run's seed (``seed_everything``), so data randomness follows it."""
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def store(self) -> Optional[FeatureStore]:
        """The feature store of the connected encoder, when its features can be cached."""
        key = self.contract.encoder_key
        if key is None:
            if self.features != "audio":
                raise ConfigError(f"data.features: {self.features} needs a frozen encoder with fixed layers "
                                 "(model.encoder.trainable: false, layers not 'weighted')")
            return None
        return FeatureStore.for_encoder(key, os.path.join(self.feature_cache, key) if self.feature_cache else None)

    def _loader(self, role: str, shuffle: Optional[bool] = None) -> DataLoader:
        train = role == "train"
        dataset = self.dataset(role)
        sampler = EpochSampler(dataset, shuffle=train if shuffle is None else shuffle, seed=self.seed())
        if train:
            self.train_sampler = sampler
            if self._resume is not None:
                sampler.resume_at(*self._resume)
                self._resume = None
        return ResumableLoader(
            dataset, batch_size=self.batch_size if train else self.eval_batch_size, sampler=sampler,
            num_workers=self.num_workers, collate_fn=Collate(self.contract.text, self.bridge_instruction),
            drop_last=False,
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
