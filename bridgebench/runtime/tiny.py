"""Tiny stand-ins for every pretrained family, built from the real transformers config classes.

Nothing can be downloaded in CI, yet the loading code must be the real one. So ``tiny`` builds a
model of the right family at a toy size with random weights (seeded), plus a real tokenizer
trained on a small word list, and saves both with ``save_pretrained``; the components then load it
with the same ``from_pretrained`` call they use for hub checkpoints. Folders are built once per
cache (``$BRIDGEBENCH_CACHE/tiny/<family>-v<N>``), atomically and under a file lock, so parallel
test workers and DDP ranks never see half-written files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from bridgebench.runtime.paths import build_once, cache_dir

# Bump when a builder changes, so stale tiny folders are never reused.
TINY_VERSION = 3

FAMILIES = ("clap", "clap-small", "mert", "data2vec", "bert", "t5", "llama")

# Words the tiny tokenizers know: captions of the fixture data, the prompt templates, some music terms.
_WORDS = """
a an the this is of with and in at to on for by from it its sound sounds audio clip music track song recording
soft loud quiet low high pitched pitch tone tones sine square sawtooth noise wave waves buzzy pure bright dark
steady short long slow fast moderate tempo bpm beat groove rhythm piano guitar drums bass violin flute trumpet
saxophone organ vibraphone synth lead strings rock jazz funk waltz ballad electronic hip hop bossa nova major minor
key describe description generate objective provide caption give please what which instrument plays playing
played question answer human assistant audio here is are was were one two three four
""".split()
_TEMPLATES = [
    "###Human: <Audio><AudioHere></Audio> {instruction} ###Assistant: ",
    "Generate an objective music description.",
    "Provide a music caption for this audio clip.",
    "Please give a caption to the music.",
    "What is the lead instrument?",
]


def _corpus() -> list[str]:
    lines = list(_TEMPLATES)
    for i in range(0, len(_WORDS), 6):
        lines.append(" ".join(_WORDS[i:i + 6]))
    lines.append(" ".join(_WORDS))
    return lines * 3


def tiny_checkpoint(family: str) -> Path:
    """Folder of the tiny ``family`` checkpoint, building it on first use."""
    if family not in FAMILIES:
        raise ValueError(f"no tiny stand-in for family '{family}'; known: {', '.join(FAMILIES)}")

    def build(tmp: Path) -> None:
        # Seeded, but on a forked generator: building on first use must not change the caller's
        # random stream (a run that builds its tiny models would otherwise differ from the same
        # run with them cached).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            _BUILDERS[family](tmp)
        (tmp / ".complete").write_text("ok\n")

    return build_once(cache_dir() / "tiny" / f"{family}-v{TINY_VERSION}", ".complete", build)


# === Tokenizers ===


def _bert_tokenizer(out: Path):
    from transformers import BertTokenizerFast

    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    pieces += sorted(set(_WORDS)) + list(letters) + ["##" + c for c in letters] + list(".,?!:;#<>/{}'-")
    (out / "vocab.txt").write_text("\n".join(pieces) + "\n")
    # The constructor with vocab_file= gives wrong ids on transformers 5; from_pretrained(dir) is right.
    tok = BertTokenizerFast.from_pretrained(str(out), do_lower_case=True)
    tok.save_pretrained(str(out))
    return tok


def _t5_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(_corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    t5 = T5TokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0)
    t5.save_pretrained(str(out))
    return t5


def _llama_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    fast.save_pretrained(str(out))
    return fast


# === Models ===


def _save_clap(out: Path, **sizes) -> None:
    from transformers import ClapAudioConfig, ClapAudioModel

    ClapAudioModel(ClapAudioConfig(enable_fusion=False, **sizes)).save_pretrained(str(out))


def _build_clap(out: Path) -> None:
    _save_clap(out, patch_embeds_hidden_size=8, depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 2],
               hidden_size=32, projection_dim=16)


def _build_clap_small(out: Path) -> None:
    # A small HTS-AT (about 1 M parameters) to train from scratch (the demo used it before the cnn encoder).
    _save_clap(out, patch_embeds_hidden_size=32, depths=[1, 1, 2, 1], num_attention_heads=[2, 4, 8, 8],
               hidden_size=256, projection_dim=128, drop_path_rate=0.0)


def _wav2vec_style_kwargs() -> dict:
    # Stride product 320 as in the real models (50 Hz at 16 kHz, 75 Hz at 24 kHz).
    return dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 8, 8),
        conv_kernel=(10, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
    )


def _build_mert(out: Path) -> None:
    # MERT-v1 is a HuBERT-style model with its own remote code; a HuBERT config is the offline stand-in.
    from transformers import HubertConfig, HubertModel

    cfg = HubertConfig(**_wav2vec_style_kwargs(), feat_extract_norm="layer", do_stable_layer_norm=True)
    HubertModel(cfg).save_pretrained(str(out))


def _build_data2vec(out: Path) -> None:
    from transformers import Data2VecAudioConfig, Data2VecAudioModel

    kw = _wav2vec_style_kwargs()
    kw.pop("num_conv_pos_embeddings")
    cfg = Data2VecAudioConfig(**kw, conv_pos_kernel_size=5, num_conv_pos_embeddings=2)
    Data2VecAudioModel(cfg).save_pretrained(str(out))


def _build_bert(out: Path) -> None:
    from transformers import BertConfig

    tok = _bert_tokenizer(out)
    from transformers import BertForMaskedLM

    cfg = BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=256, architectures=["BertForMaskedLM"],
    )
    BertForMaskedLM(cfg).save_pretrained(str(out))  # with an MLM head, like bert-base-uncased


def _build_t5(out: Path) -> None:
    from transformers import T5Config, T5ForConditionalGeneration

    tok = _t5_tokenizer(out)
    cfg = T5Config(
        vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
        tie_word_embeddings=False,
    )
    T5ForConditionalGeneration(cfg).save_pretrained(str(out))


def _build_llama(out: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _llama_tokenizer(out)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
    )
    LlamaForCausalLM(cfg).save_pretrained(str(out))


_BUILDERS = {
    "clap": _build_clap,
    "clap-small": _build_clap_small,
    "mert": _build_mert,
    "data2vec": _build_data2vec,
    "bert": _build_bert,
    "t5": _build_t5,
    "llama": _build_llama,
}
