"""Typed configuration: the component sections (encoder, bridge, LLM) and the run's settings.

Pure data (a leaf: no I/O, no bridgebench imports but ``errors``). Each component section names one
kind (``name: qformer``) and carries one options block per kind (``qformer: {...}``,
``linear_pool: {...}``). Only the named kind's block is used, so swapping a component is a one-line
change and a preset can hold the paper values of several kinds at once. The attribute docstrings are
what ``--help`` prints. A field with a valid range declares it (``at_least``, ``positive``,
``fraction``); :func:`range_problems` reports every value outside its range, and
``bridgebench.engine.validate`` adds the checks that need the kind or the file system.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional


def _bounded(default: Any, rule: str, factory: bool = False):
    if factory:
        return field(default_factory=default, metadata={"range": rule})
    return field(default=default, metadata={"range": rule})


def at_least(minimum: float, default: Any):
    """A number >= ``minimum`` (None allowed when the default is None)."""
    return _bounded(default, f">={minimum}")


def positive(default: Any):
    """A number > 0 (None allowed when the default is None)."""
    return _bounded(default, ">0")


def fraction(default: Any, closed_low: bool = True):
    """A number in [0, 1] (or (0, 1] with ``closed_low=False``)."""
    return _bounded(default, "[0,1]" if closed_low else "(0,1]")


def _breaks(rule: str, value: Any) -> Optional[str]:
    """What is wrong with ``value`` under ``rule``, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{value!r} is not a number"
    if not math.isfinite(value):
        return f"{value} is not finite"
    if rule == ">0" and not value > 0:
        return f"{value}; it must be > 0"
    if rule.startswith(">=") and value < float(rule[2:]):
        bound = rule[2:].removesuffix(".0") if rule[2:].endswith(".0") else rule[2:]
        return f"{value}; it must be >= {bound}"
    if rule == "[0,1]" and not 0 <= value <= 1:
        return f"{value}; it must be between 0 and 1"
    if rule == "(0,1]" and not 0 < value <= 1:
        return f"{value}; it must be in (0, 1]"
    return None


def range_problems(spec: Any, key: str) -> list[str]:
    """Every field of ``spec`` (a dataclass, walked recursively) outside its declared range, as
    ``<key>.<field>: <value>; it must be ...`` lines."""
    out = []
    for f in dataclasses.fields(spec):
        value = getattr(spec, f.name)
        if dataclasses.is_dataclass(value):
            out += range_problems(value, f"{key}.{f.name}")
        elif "range" in f.metadata:
            problem = _breaks(f.metadata["range"], value)
            if problem:
                out.append(f"{key}.{f.name}: {problem}")
    return out


# === Encoders ===


@dataclass
class ClapOptions:
    """`clap`: the LAION-CLAP HTS-AT audio branch through transformers' ClapAudioModel (48 kHz)."""

    pretrained: str = "laion/larger_clap_music"
    """HF id or local dir of a CLAP checkpoint, a LAION-CLAP ``.pt`` file, ``tiny``, or ``small`` (a
    small random-init HTS-AT to train from scratch, as the demo does)."""
    clip_seconds: float = positive(10.0)
    """HTS-AT sees fixed 10 s windows (1001 mel frames); shorter clips are zero-padded."""
    sample_rate: int = at_least(1, 48_000)
    """Input rate. LAION: 48 kHz with a 1024-point STFT, hop 480, 50 Hz-14 kHz. Other rates scale the
    STFT and hop so a 10 s window still gives 1001 frames (fmax is capped at the Nyquist rate)."""


@dataclass
class MertOptions:
    """`mert`: MERT-v1 through transformers (remote code on the hub), 24 kHz."""

    pretrained: str = "m-a-p/MERT-v1-330M"
    """HF id or local dir, or ``tiny``."""
    layers: str = "mean"
    """``mean`` (uniform mean of all hidden states, MusiLingo), ``weighted`` (learned softmax
    weights, trained with the bridge), ``last``, or a layer index such as ``12``."""
    normalize: bool = False
    """Zero-mean/unit-variance per clip (MERT-v1's feature extractor has it off)."""
    trust_remote_code: bool = True
    """MERT's hub checkpoints carry their own modelling code."""


@dataclass
class Data2VecOptions:
    """`data2vec`: data2vec-audio through transformers, 16 kHz."""

    pretrained: str = "facebook/data2vec-audio-base"
    """HF id or local dir, or ``tiny``."""
    layers: str = "last"
    """``last``, ``mean``, ``weighted`` or a layer index (see ``mert.layers``)."""
    normalize: bool = True
    """Zero-mean/unit-variance per clip, as data2vec-audio's feature extractor does."""


@dataclass
class CnnOptions:
    """`cnn`: a small PANNs-style log-mel CNN (four conv blocks, 125 tokens per 10 s), meant to be
    trained from scratch in stage 1 where no pretrained audio encoder can be downloaded."""

    pretrained: str = "scratch"
    """``scratch`` (random init; stage 1 trains it), ``tiny`` (4 base channels, for tests) or a file
    saved with ``torch.save(encoder.model.state_dict(), path)``."""
    channels: int = at_least(1, 16)
    """Channels of the first conv block; each of the four blocks doubles them (output width 8x)."""
    sample_rate: int = at_least(1, 16_000)
    """Input rate; the mel bands span 50 Hz to min(14 kHz, Nyquist)."""
    clip_seconds: float = positive(10.0)
    """Fixed input window; shorter clips are zero-padded (and masked)."""
    n_mels: int = at_least(1, 64)
    """Mel bands of the log-mel front-end."""
    hop_ms: float = positive(10.0)
    """Mel hop; one output token per 8 hops."""


@dataclass
class EncoderSpec:
    """The frozen audio encoder: which kind, and each kind's options."""

    name: str = "clap"
    """One of: clap, mert, data2vec, cnn."""
    trainable: bool = False
    """Train the encoder's weights too (default: frozen, eval mode, no_grad)."""
    clap: ClapOptions = field(default_factory=ClapOptions)
    mert: MertOptions = field(default_factory=MertOptions)
    data2vec: Data2VecOptions = field(default_factory=Data2VecOptions)
    cnn: CnnOptions = field(default_factory=CnnOptions)


# === Bridges ===


@dataclass
class QFormerOptions:
    """`qformer`: BLIP-2 Q-Former; learned queries cross-attend to the audio features."""

    bert: str = "bert-base-uncased"
    """BERT checkpoint the Q-Former is initialised from (HF id, local dir, ``pkg:...``, or ``tiny``)."""
    num_queries: int = at_least(1, 32)
    """Learned query tokens = soft-prompt length."""
    cross_attention_freq: int = at_least(1, 2)
    """Cross-attention in every k-th layer (layers 0, k, 2k, ...), newly initialised."""
    num_layers: Optional[int] = at_least(1, None)
    """Use only the first N BERT layers (default: all)."""
    max_text_tokens: int = at_least(1, 128)
    """Instruction tokens kept (left truncation), used by `bridgenet`."""
    gradient_checkpointing: bool = False
    """Recompute Q-Former layers in backward to save memory (all masks are explicit, so ATG stays exact)."""
    standardize_queries: bool = False
    """Stage 2: standardise each query output over the batch (BatchNorm without affine, running
    statistics at eval) before the projection, so the clip-dependent part of the Q-Former's output,
    not its clip-independent offset, drives the soft prompt. Not in BLIP-2/BLAP. Needs ``dropout: 0``
    (dropout noise would dominate the spread it divides by)."""
    dropout: Optional[float] = fraction(None)
    """Hidden and attention dropout inside the Q-Former (default: the BERT config's, 0.1 for BERT and
    MiniLM)."""
    output_init: str = "default"
    """Initialisation of the output layer into the LLM: ``default`` (PyTorch's, as the papers) or
    ``embedding_scale`` (rescaled so the soft prompt starts at the LLM's word-embedding scale; small
    frozen LLMs learn slowly from prompts far off that scale)."""


@dataclass
class BridgeNetOptions(QFormerOptions):
    """`bridgenet`: MINT's instruction-aware Bridge-Net; instruction tokens join the queries in
    bidirectional self-attention and only the query outputs go to the LLM."""


@dataclass
class LinearPoolOptions:
    """`linear_pool`: MusiLingo adapter; non-overlapping temporal average pooling, then a linear layer."""

    window: int = at_least(1, 325)
    """Frames per pooled token; ceil(T/window) tokens, the remainder averaged into one token."""
    hidden: Optional[int] = at_least(1, None)
    """None: one linear layer (MusiLingo). An int: a hidden layer of that width with GELU before the
    output layer (LLaVA-1.5's two-layer MLP projector), for encoders whose classes a linear map
    cannot separate well enough for a frozen LLM."""
    tokens: int = at_least(1, 1)
    """Soft-prompt vectors per pooled window (1: MusiLingo). More map one window to several vectors,
    as ClipCap maps one clip embedding to a prefix (e.g. window = the whole clip, tokens: 8)."""
    output_init: str = "default"
    """Initialisation of the output layer into the LLM: ``default`` (PyTorch's, as the papers) or
    ``embedding_scale`` (rescaled so the soft prompt starts at the LLM's word-embedding scale; small
    frozen LLMs learn slowly from prompts far off that scale)."""


@dataclass
class BridgeSpec:
    """The trainable bridge: which kind, and each kind's options. Its input and output widths come
    from the built encoder and LLM."""

    name: str = "qformer"
    """One of: qformer, bridgenet, linear_pool."""
    qformer: QFormerOptions = field(default_factory=QFormerOptions)
    bridgenet: BridgeNetOptions = field(default_factory=BridgeNetOptions)
    linear_pool: LinearPoolOptions = field(default_factory=LinearPoolOptions)


# === LLMs ===


@dataclass
class Seq2SeqOptions:
    """`seq2seq`: encoder-decoder LM (Flan-T5). Encoder input = [soft prompt ; prompt]."""

    pretrained: str = "google/flan-t5-xl"
    """HF id or local dir, or ``tiny``."""
    dense_act_fn: Optional[str] = None
    """Override the FFN activation (LAVIS and BLAP set ``gelu`` on Flan-T5)."""
    max_prompt_tokens: int = at_least(1, 128)
    max_target_tokens: int = at_least(1, 64)
    length_buckets: Optional[list[int]] = None
    """Pad each text piece of a batch (prompt, target) up to the next of these lengths instead of its
    longest member, e.g. ``[16, 32, 64, 128]`` (past the last: the next multiple of the last), so
    compiled and CUDA-graph shapes repeat; the masks keep the loss the same. None: the longest."""
    prompt_truncation: str = "left"
    """Which end of a prompt longer than ``max_prompt_tokens`` is cut: ``left`` (its start; LAVIS's
    InstructBLIP tokenizes the T5 input with truncation_side left, keeping the question at the end)
    or ``right``. Targets always lose their end."""


@dataclass
class CausalOptions:
    """`causal`: decoder-only LM (Vicuna/LLaMA). Input = [BOS ; prompt with the soft prompt at the
    audio slot ; answer + end symbol]; loss on the answer and end symbol only."""

    pretrained: str = "lmsys/vicuna-7b-v1.5"
    """HF id, local dir, ``pkg:<python package>`` or ``tiny``."""
    gguf_file: Optional[str] = None
    """GGUF file inside ``pretrained`` (or an absolute path); transformers de-quantises it."""
    template: str = "###Human: <Audio><AudioHere></Audio> {instruction} ###Assistant: "
    """Prompt around the audio slot ``<AudioHere>``; ``{instruction}`` is filled per sample."""
    end_symbol: Optional[str] = "###"
    """Appended to every answer and learned (MusiLingo: ``###``); None = the tokenizer's EOS."""
    add_bos: bool = True
    """Start with the tokenizer's BOS token when it has one."""
    max_prompt_tokens: int = at_least(1, 128)
    max_target_tokens: int = at_least(2, 160)
    length_buckets: Optional[list[int]] = None
    """Pad each text piece of a batch (prompt, target) up to the next of these lengths instead of its
    longest member, e.g. ``[16, 32, 64, 128]`` (past the last: the next multiple of the last), so
    compiled and CUDA-graph shapes repeat; the masks keep the loss the same. None: the longest."""
    stop_strings: Optional[list[str]] = None
    """Generation stops once a sequence's text ends with one of these, and the answer is cut there
    (MusiLingo's qa.py stops at ``###``); None: only at EOS or ``max_new_tokens``."""


@dataclass
class LoraOptions:
    """LoRA adapters (peft), used when ``llm.mode: lora``."""

    r: int = at_least(1, 8)
    alpha: int = positive(16)
    dropout: float = fraction(0.05)
    target_modules: Optional[list[str]] = None
    """Module names to adapt (default: peft's per-architecture choice)."""


@dataclass
class LLMSpec:
    """The language model: which kind, how it is trained, and each kind's options."""

    name: str = "seq2seq"
    """One of: seq2seq, causal, none (stage 1 without a language model)."""
    mode: str = "frozen"
    """frozen (default), lora, or full."""
    seq2seq: Seq2SeqOptions = field(default_factory=Seq2SeqOptions)
    causal: CausalOptions = field(default_factory=CausalOptions)
    lora: LoraOptions = field(default_factory=LoraOptions)


# === Stage 1 ===


@dataclass
class Stage1Spec:
    """Heads of the stage-1 objectives (atc, atm, atg) on the Q-Former / Bridge-Net."""

    projection: str = "linear"
    """ATC projections: ``linear`` (LAVIS/BLIP-2) or ``mlp`` (BLAP's 2-layer residual MLP with dropout)."""
    embed_dim: int = at_least(1, 256)
    """Width of the contrastive space."""
    dropout: float = fraction(0.5)
    """Dropout inside the ``mlp`` projections (BLAP: 0.5)."""
    temperature: float = positive(0.07)
    """Initial value of the learnable ATC temperature."""
    label_smoothing: float = fraction(0.1)
    """On ATC and ATG (LAVIS)."""
    max_text_tokens: int = at_least(1, 32)
    """Caption tokens of the text branch (right truncation)."""
    tag_min_count: int = at_least(1, 5)
    """`tag` objective: tags carried by fewer training clips are left out of its vocabulary."""


@dataclass
class ClassifySpec:
    """One classification by vocabulary ranking (MINT; LAVIS ``_predict_class``)."""

    label: str = "instrument"
    """A manifest ``labels`` key (e.g. ``instrument``) whose classes are ranked by LLM likelihood."""
    instruction: str = "What is the lead instrument?"
    """Instruction given with the audio when ranking the classes."""
    candidates: Optional[list[str]] = None
    """The classes to rank (default: every value of ``label`` in the test split)."""


@dataclass
class EvalSpec:
    """What ``test`` measures besides the losses: caption metrics of the generated text, answers
    per question type, classification by vocabulary ranking, and (stage 1) retrieval and zero-shot
    classification."""

    metric_modes: list[str] = field(default_factory=lambda: ["standard"])
    """Caption scoring conventions: ``standard`` (aac-metrics, corpus level, PTB tokens),
    ``musilingo`` (its qa.py), ``lp-musiccaps`` (its evaluation); empty = none."""
    qa_metric_modes: list[str] = field(default_factory=lambda: ["musilingo"])
    """Conventions for the answers to questions (per question type and over all questions)."""
    classify: list[ClassifySpec] = field(default_factory=list)
    """Classifications by vocabulary ranking, e.g. ``[{label: instrument, instruction: "What is the
    lead instrument?"}]``; each reports ``classify_<label>_accuracy_{sum,mean}`` (summed NLL as LAVIS,
    and length-normalised)."""
    attribute_vocabulary: Optional[str] = None
    """``music-synth``: read the attributes each generated caption names (closed vocabularies) and
    report per-attribute accuracy against the clip's true labels, and answer accuracy per question
    type."""

    rerank_k: int = at_least(0, 0)
    """Re-rank the top-k ATC candidates by ATM logit + ATC similarity (LAVIS: 128); 0 = off."""
    zero_shot_label: Optional[str] = None
    """A manifest ``labels`` key (e.g. ``instrument``): classify clips by similarity to its classes."""
    zero_shot_prompt: str = "{label}"
    """Text for each class, e.g. ``this is a recording of {label}``."""


# === Optimisation and decoding ===


@dataclass
class OptimSpec:
    """AdamW over the trainable parameters (with weight decay 0 it is Adam), a linear warmup, then
    the schedule, stepped every optimizer step."""

    lr: float = positive(1e-4)
    min_lr: float = at_least(0, 1e-5)
    warmup_lr: float = at_least(0, 1e-6)
    warmup_steps: int = at_least(0, 0)
    weight_decay: float = at_least(0, 0.05)
    """Applied to weights with >= 2 dims; biases and norms get none."""
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"
    """cosine (warmup, then cosine to min_lr), linear (warmup, then a straight line to min_lr) or
    constant (warmup, then lr)."""
    lr_scale: dict[str, float] = field(default_factory=dict)
    """Learning-rate multipliers per parameter group (the schedule scales with them): ``encoder`` (a
    trainable encoder), ``projection`` (the bridge's output layer into the LLM, which starts from
    scratch while a Q-Former starts from BERT or stage 1) and ``cross_attention`` (a Q-Former's or
    Bridge-Net's cross-attention layers and query tokens, which BERT has no weights for) and ``llm``
    (the LLM's LoRA adapters or, with ``llm.mode: full``, its weights: a pretrained model wants a
    smaller step than a bridge trained from scratch); every other weight uses ``lr``."""


@dataclass
class PrecisionSpec:
    """Storage dtypes of the frozen parts (trainable weights stay float32; Lightning's
    ``trainer.precision`` sets the autocast of the computation)."""

    frozen: str = "auto"
    """Frozen encoder and LLM (a LoRA LLM's base weights): auto (bf16 where bf16 matmuls are native:
    GPUs that support them, CPUs with AMX; else float32), float32, bfloat16 or float16."""
    frozen_eval: Optional[str] = None
    """The frozen LLM's dtype while validating, testing and predicting (None: ``frozen``). CPUs with
    AMX train faster in bf16 but generate far slower, so a CPU run can train in bf16 and generate in
    float32."""


@dataclass
class GenerationSpec:
    """Decoding used by validate/test/predict."""

    num_beams: int = at_least(1, 5)
    max_new_tokens: int = at_least(1, 30)
    min_length: int = at_least(0, 1)
    length_penalty: float = 1.0
    repetition_penalty: float = positive(1.0)
    do_sample: bool = False
    top_p: float = fraction(0.9, closed_low=False)
    temperature: float = positive(1.0)
    seed: int = 0
    """Seed for sampled decoding, so sampled test runs are reproducible."""



LLM_MODES = ("frozen", "lora", "full")
OBJECTIVES = ("lm", "atc", "atm", "atg", "tag")
STAGE1_OBJECTIVES = ("atc", "atm", "atg")
FROZEN_DTYPES = ("auto", "float32", "bfloat16", "float16")
SCHEDULES = ("cosine", "constant", "linear")
OUTPUT_INITS = ("default", "embedding_scale")
LR_GROUPS = ("encoder", "projection", "cross_attention", "llm")


def spec_from_dict(cls, data: dict):
    """Build a (nested) spec dataclass from a plain dict, e.g. a parsed YAML section or a
    checkpoint's hyper-parameters. Unknown keys are ignored."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        default = f.default_factory
        if isinstance(value, dict) and default is not dataclasses.MISSING and dataclasses.is_dataclass(default()):
            value = spec_from_dict(type(default()), value)
        kwargs[f.name] = value
    return cls(**kwargs)
