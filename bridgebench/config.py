"""Typed configuration of the three components (encoder, bridge, LLM) and the optimiser.

Each component section names one kind (``name: qformer``) and carries one options block per kind
(``qformer: {...}``, ``linear_pool: {...}``). Only the named kind's block is used, so swapping a
component is a one-line change (``name: linear_pool``) and a preset can hold the paper values of
several kinds at once. The dataclass docstrings are what ``--help`` prints.

``validate_config`` checks names and paths before anything is built; every problem is one
:class:`ConfigError` line that says what to change.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Optional


class ConfigError(ValueError):
    """A configuration mistake, reported as one line before any model is built."""


# === Encoders ===


@dataclass
class ClapOptions:
    """`clap`: the LAION-CLAP HTS-AT audio branch through transformers' ClapAudioModel (48 kHz)."""

    pretrained: str = "laion/larger_clap_music"
    """HF id or local dir of a CLAP checkpoint, a LAION-CLAP ``.pt`` file, ``tiny``, or ``small`` (a
    small random-init HTS-AT to train from scratch, as the demo does)."""
    clip_seconds: float = 10.0
    """HTS-AT sees fixed 10 s windows (1001 mel frames); shorter clips are zero-padded."""
    sample_rate: int = 48_000
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
    channels: int = 16
    """Channels of the first conv block; each of the four blocks doubles them (output width 8x)."""
    sample_rate: int = 16_000
    """Input rate; the mel bands span 50 Hz to min(14 kHz, Nyquist)."""
    clip_seconds: float = 10.0
    """Fixed input window; shorter clips are zero-padded (and masked)."""
    n_mels: int = 64
    """Mel bands of the log-mel front-end."""
    hop_ms: float = 10.0
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
    num_queries: int = 32
    """Learned query tokens = soft-prompt length."""
    cross_attention_freq: int = 2
    """Cross-attention in every k-th layer (layers 0, k, 2k, ...), newly initialised."""
    num_layers: Optional[int] = None
    """Use only the first N BERT layers (default: all)."""
    max_text_tokens: int = 128
    """Instruction tokens kept (left truncation), used by `bridgenet`."""
    gradient_checkpointing: bool = False
    """Recompute Q-Former layers in backward to save memory (all masks are explicit, so ATG stays exact)."""
    standardize_queries: bool = False
    """Stage 2: standardise each query output over the batch (BatchNorm without affine, running
    statistics at eval) before the projection. Q-Former outputs are mostly a clip-independent offset
    (LayerNorm'd learned queries); the projection then learns that offset and the soft prompt is
    nearly the same for every clip. Standardised, the clip-dependent part reaches the LLM and the
    offset is the projection's bias. Not in BLIP-2/BLAP; for short budgets with a frozen LLM."""
    dropout: Optional[float] = None
    """Hidden and attention dropout inside the Q-Former (default: the BERT config's, 0.1 for BERT and
    MiniLM). With ``standardize_queries``, set 0: standardising divides by the across-batch spread,
    and when the clip-dependent part of that spread is small the dropout noise dominates it, so the
    prompts at eval (no dropout) are no longer the ones the LLM was trained on (measured on the demo:
    test loss 4.4 with dropout off vs 0.85 with it on, same weights and clips)."""


@dataclass
class BridgeNetOptions(QFormerOptions):
    """`bridgenet`: MINT's instruction-aware Bridge-Net; instruction tokens join the queries in
    bidirectional self-attention and only the query outputs go to the LLM."""


@dataclass
class LinearPoolOptions:
    """`linear_pool`: MusiLingo adapter; non-overlapping temporal average pooling, then a linear layer."""

    window: int = 325
    """Frames per pooled token; ceil(T/window) tokens, the remainder averaged into one token."""
    hidden: Optional[int] = None
    """None: one linear layer (MusiLingo). An int: a hidden layer of that width with GELU before the
    output layer (LLaVA-1.5's two-layer MLP projector), for encoders whose classes a linear map
    cannot separate well enough for a frozen LLM."""
    tokens: int = 1
    """Soft-prompt vectors per pooled window (1: MusiLingo). More map one window to several vectors,
    as ClipCap maps one clip embedding to a prefix (e.g. window = the whole clip, tokens: 8)."""


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
    max_prompt_tokens: int = 128
    max_target_tokens: int = 64


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
    max_prompt_tokens: int = 128
    max_target_tokens: int = 160


@dataclass
class LoraOptions:
    """LoRA adapters (peft), used when ``llm.mode: lora``."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
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
    embed_dim: int = 256
    """Width of the contrastive space."""
    dropout: float = 0.5
    """Dropout inside the ``mlp`` projections (BLAP: 0.5)."""
    temperature: float = 0.07
    """Initial value of the learnable ATC temperature."""
    label_smoothing: float = 0.1
    """On ATC and ATG (LAVIS)."""
    max_text_tokens: int = 32
    """Caption tokens of the text branch (right truncation)."""
    tag_min_count: int = 5
    """`tag` objective: tags carried by fewer training clips are left out of its vocabulary."""


@dataclass
class EvalSpec:
    """What ``test`` measures besides the losses: caption metrics of the generated text,
    classification by vocabulary ranking, and (stage 1) retrieval and zero-shot classification."""

    metric_modes: list[str] = field(default_factory=lambda: ["standard"])
    """Caption/QA scoring conventions: ``standard`` (aac-metrics, corpus level, PTB tokens),
    ``musilingo`` (its qa.py), ``lp-musiccaps`` (its evaluation); empty = none."""
    classify_label: Optional[str] = None
    """A manifest ``labels`` key (e.g. ``instrument``): rank its classes by LLM likelihood (MINT)."""
    classify_instruction: str = "What is the lead instrument?"
    """Instruction given with the audio when ranking the classes."""
    classify_candidates: Optional[list[str]] = None
    """The classes to rank (default: every value of ``classify_label`` in the test split)."""
    attribute_vocabulary: Optional[str] = None
    """``music-synth``: read the attributes each generated caption names (closed vocabularies) and
    report per-attribute accuracy against the clip's true labels."""

    rerank_k: int = 0
    """Re-rank the top-k ATC candidates by ATM logit + ATC similarity (LAVIS: 128); 0 = off."""
    zero_shot_label: Optional[str] = None
    """A manifest ``labels`` key (e.g. ``instrument``): classify clips by similarity to its classes."""
    zero_shot_prompt: str = "{label}"
    """Text for each class, e.g. ``this is a recording of {label}``."""


# === Optimisation and decoding ===


@dataclass
class OptimSpec:
    """AdamW over the trainable parameters, linear warmup then cosine decay, stepped every batch."""

    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.05
    """Applied to weights with >= 2 dims; biases and norms get none."""
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "cosine"
    """cosine (warmup then cosine to min_lr) or constant (warmup then lr)."""
    encoder_lr_scale: float = 1.0
    """Learning-rate multiplier for a trainable encoder's weights (the schedule scales with it): an
    encoder trained from scratch next to a pretrained bridge wants a larger step than the bridge."""
    projection_lr_scale: float = 1.0
    """Learning-rate multiplier for the bridge's output projection into the LLM (``bridge.proj``):
    it starts from scratch while the Q-Former starts from BERT or stage 1, and a frozen LLM is
    steered by it far sooner at a larger step than a pretrained Q-Former can take."""


@dataclass
class GenerationSpec:
    """Decoding used by validate/test/predict."""

    num_beams: int = 5
    max_new_tokens: int = 30
    min_length: int = 1
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    do_sample: bool = False
    top_p: float = 0.9
    temperature: float = 1.0
    seed: int = 0
    """Seed for sampled decoding, so sampled test runs are reproducible."""


ENCODER_KINDS = ("clap", "mert", "data2vec", "cnn")
BRIDGE_KINDS = ("qformer", "bridgenet", "linear_pool")
LLM_KINDS = ("seq2seq", "causal", "none")
LLM_MODES = ("frozen", "lora", "full")
OBJECTIVES = ("lm", "atc", "atm", "atg", "tag")
STAGE1_OBJECTIVES = ("atc", "atm", "atg")
FROZEN_DTYPES = ("auto", "float32", "bfloat16", "float16")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_LOCAL_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".gguf", ".json")


def looks_local(value: str) -> bool:
    """True when a checkpoint string can only mean a local path (not a hub id)."""
    return (
        value.startswith(("/", "./", "../", "~"))
        or value.endswith(_LOCAL_SUFFIXES)
        or not _HUB_ID.match(value)
    )


def check_pretrained(key: str, value: str) -> None:
    """A pretrained reference is ``tiny``/``small``, ``pkg:<package>[/sub]``, an existing path, or a hub id."""
    if not value:
        raise ConfigError(f"{key}: empty checkpoint reference; give a hub id, a local path or 'tiny'")
    if value in ("tiny", "small"):
        return
    if value.startswith("pkg:"):
        from bridgebench.paths import resolve_package_path

        resolve_package_path(value, key)
        return
    path = os.path.expanduser(value)
    if os.path.exists(path):
        return
    if looks_local(value):
        raise ConfigError(f"{key}: checkpoint path '{value}' does not exist; fix the path or use a hub id")


def _check_name(key: str, name: str, kinds: tuple[str, ...]) -> None:
    if name not in kinds:
        raise ConfigError(f"{key}: unknown name '{name}'; choose one of: {', '.join(kinds)}")


def spec_from_dict(cls, data: dict):
    """Build a (nested) spec dataclass from a plain dict, e.g. a parsed YAML section."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        default = cls.__dataclass_fields__[f.name].default_factory
        if isinstance(value, dict) and default is not dataclasses.MISSING and dataclasses.is_dataclass(default()):
            value = spec_from_dict(type(default()), value)
        kwargs[f.name] = value
    return cls(**kwargs)


def validate_model_section(model: dict, check_stage1: bool = True) -> None:
    """``validate_config`` on the ``model:`` section of a parsed config (plain dicts)."""
    validate_config(
        spec_from_dict(EncoderSpec, model.get("encoder") or {}),
        spec_from_dict(BridgeSpec, model.get("bridge") or {}),
        spec_from_dict(LLMSpec, model.get("llm") or {}),
        dict(model.get("objectives") or {"lm": 1.0}),
        model.get("stage1_checkpoint") if check_stage1 else None,
        model.get("frozen_dtype", "auto"),
        spec_from_dict(Stage1Spec, model.get("stage1") or {}),
        model.get("encoder_checkpoint") if check_stage1 else None,
        model.get("eval_frozen_dtype"),
    )


def validate_config(
    encoder: EncoderSpec,
    bridge: BridgeSpec,
    llm: LLMSpec,
    objectives: dict[str, float],
    stage1_checkpoint: Optional[str] = None,
    frozen_dtype: str = "auto",
    stage1: Optional[Stage1Spec] = None,
    encoder_checkpoint: Optional[str] = None,
    eval_frozen_dtype: Optional[str] = None,
) -> None:
    """Check component names, options and paths. Raises one ConfigError line per problem found first."""
    if encoder_checkpoint is not None and not os.path.isfile(os.path.expanduser(encoder_checkpoint)):
        raise ConfigError(
            f"model.encoder_checkpoint: '{encoder_checkpoint}' does not exist; run the stage-1 preset that "
            "trains the encoder first (e.g. make exp NAME=demo_encoder) or fix the path"
        )
    if stage1 is not None:
        _check_name("model.stage1.projection", stage1.projection, ("linear", "mlp"))
    _check_name("model.encoder.name", encoder.name, ENCODER_KINDS)
    _check_name("model.bridge.name", bridge.name, BRIDGE_KINDS)
    _check_name("model.llm.name", llm.name, LLM_KINDS)
    _check_name("model.llm.mode", llm.mode, LLM_MODES)
    _check_name("model.frozen_dtype", frozen_dtype, FROZEN_DTYPES)
    if eval_frozen_dtype is not None and eval_frozen_dtype not in FROZEN_DTYPES[1:]:
        raise ConfigError(f"model.eval_frozen_dtype: unknown '{eval_frozen_dtype}'; choose one of: "
                          f"{', '.join(FROZEN_DTYPES[1:])}, or null")
    if not objectives:
        raise ConfigError("model.objectives: empty; enable at least one objective, e.g. {lm: 1.0}")
    for name, weight in objectives.items():
        _check_name(f"model.objectives.{name}", name, OBJECTIVES)
        if weight <= 0:
            raise ConfigError(f"model.objectives.{name}: weight {weight} must be > 0 (remove the entry to disable it)")

    enc = getattr(encoder, encoder.name)
    if encoder.name == "cnn":
        if enc.pretrained not in ("scratch", "tiny") and not os.path.isfile(os.path.expanduser(enc.pretrained)):
            raise ConfigError(
                f"model.encoder.cnn.pretrained: '{enc.pretrained}' is not scratch, tiny or an existing weights file"
            )
        if enc.channels < 1:
            raise ConfigError(f"model.encoder.cnn.channels: {enc.channels}; it must be >= 1")
    else:
        check_pretrained(f"model.encoder.{encoder.name}.pretrained", enc.pretrained)
    if encoder.name in ("mert", "data2vec"):
        layers = enc.layers
        if layers not in ("mean", "weighted", "last") and not re.fullmatch(r"-?\d+", layers):
            raise ConfigError(
                f"model.encoder.{encoder.name}.layers: '{layers}' is not mean, weighted, last or a layer index"
            )

    opts = getattr(bridge, bridge.name)
    if bridge.name in ("qformer", "bridgenet"):
        check_pretrained(f"model.bridge.{bridge.name}.bert", opts.bert)
        if opts.num_queries < 1:
            raise ConfigError(f"model.bridge.{bridge.name}.num_queries: {opts.num_queries}; it must be >= 1")
        if opts.cross_attention_freq < 1:
            raise ConfigError(
                f"model.bridge.{bridge.name}.cross_attention_freq: {opts.cross_attention_freq}; it must be >= 1"
            )
    elif opts.window < 1:
        raise ConfigError(f"model.bridge.linear_pool.window: {opts.window}; it must be >= 1")
    elif opts.tokens < 1:
        raise ConfigError(f"model.bridge.linear_pool.tokens: {opts.tokens}; it must be >= 1")
    elif opts.hidden is not None and opts.hidden < 1:
        raise ConfigError(f"model.bridge.linear_pool.hidden: {opts.hidden}; it must be >= 1, or null for one linear layer")

    if "tag" in objectives and not encoder.trainable:
        raise ConfigError(
            "model.objectives.tag trains the audio encoder by tagging; set model.encoder.trainable: true"
        )
    stage1 = [o for o in objectives if o in STAGE1_OBJECTIVES]
    if stage1 and bridge.name not in ("qformer", "bridgenet"):
        raise ConfigError(
            f"model.objectives: {', '.join(stage1)} need a Q-Former bridge (qformer or bridgenet), not '{bridge.name}'"
        )
    if "lm" in objectives and llm.name == "none":
        raise ConfigError("model.objectives.lm needs a language model; set model.llm.name to seq2seq or causal")
    if llm.name == "none":
        if stage1_checkpoint is not None and not os.path.isfile(os.path.expanduser(stage1_checkpoint)):
            raise ConfigError(f"model.stage1_checkpoint: '{stage1_checkpoint}' does not exist")
        return
    lopts = getattr(llm, llm.name)
    check_pretrained(f"model.llm.{llm.name}.pretrained", lopts.pretrained)
    if llm.name == "causal":
        if "<AudioHere>" not in lopts.template:
            raise ConfigError("model.llm.causal.template: must contain the audio slot '<AudioHere>'")
        if lopts.gguf_file and lopts.pretrained != "tiny":
            from bridgebench.paths import resolve_pretrained

            base = resolve_pretrained(lopts.pretrained, "model.llm.causal.pretrained", build=False)
            path = os.path.join(base, lopts.gguf_file) if os.path.isdir(base) else lopts.gguf_file
            if (os.path.isdir(base) or looks_local(lopts.gguf_file)) and not os.path.exists(path):
                raise ConfigError(f"model.llm.causal.gguf_file: '{path}' does not exist")

    if stage1_checkpoint is not None and not os.path.isfile(os.path.expanduser(stage1_checkpoint)):
        raise ConfigError(
            f"model.stage1_checkpoint: '{stage1_checkpoint}' does not exist; run the stage-1 preset first or fix the path"
        )
