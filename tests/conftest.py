"""Shared test setup: offline, a fresh cache per session, and small builders.

Every pretrained component in the default suite is a ``tiny`` stand-in that the session builds and
saves itself (real transformers config classes, random weights); nothing is downloaded.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

from bridgebench.runtime.env import quiet_libraries  # noqa: E402
from bridgebench.specs import (  # noqa: E402
    BridgeNetOptions,
    BridgeSpec,
    CausalOptions,
    ClapOptions,
    Data2VecOptions,
    EncoderSpec,
    GenerationSpec,
    LinearPoolOptions,
    LLMSpec,
    MertOptions,
    PrecisionSpec,
    QFormerOptions,
    Seq2SeqOptions,
)

quiet_libraries()


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("bridgebench-cache")
    old = os.environ.get("BRIDGEBENCH_CACHE")
    os.environ["BRIDGEBENCH_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("BRIDGEBENCH_CACHE", None)
    else:
        os.environ["BRIDGEBENCH_CACHE"] = old


@pytest.fixture(autouse=True)
def _java_tools(request, monkeypatch):
    """Java metrics (METEOR, SPICE, the PTB tokenizer) only where a test asks for them (marker ``java``)
    or is ``slow``: each scoring starts a JVM that loads METEOR's paraphrase table (~10 s on 2 cores),
    which every tiny fit+test would pay. Tests without Java score with the pure-Python tokenizer and
    report METEOR as unavailable; ``tests/test_metrics.py`` checks the Java path itself."""
    if request.node.get_closest_marker("java") is None and request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("BRIDGEBENCH_JAVA", "off")


def tiny_specs(encoder: str = "mert", bridge: str = "qformer", llm: str = "causal", **llm_kw):
    """Specs of a tiny model: only the three names differ between combinations."""
    return dict(
        encoder=EncoderSpec(name=encoder, clap=ClapOptions(pretrained="tiny"), mert=MertOptions(pretrained="tiny"),
                            data2vec=Data2VecOptions(pretrained="tiny")),
        bridge=BridgeSpec(name=bridge, qformer=QFormerOptions(bert="tiny", num_queries=4),
                          bridgenet=BridgeNetOptions(bert="tiny", num_queries=4),
                          linear_pool=LinearPoolOptions(window=8)),
        llm=LLMSpec(name=llm, seq2seq=Seq2SeqOptions(pretrained="tiny"),
                    causal=CausalOptions(pretrained="tiny", **llm_kw)),
        generation=GenerationSpec(num_beams=1, max_new_tokens=6, min_length=1),
        precision=PrecisionSpec("float32"),
    )


def tiny_module(**kw):
    from bridgebench.engine.module import BridgeModule

    causal = {k: kw.pop(k) for k in list(kw) if k in ("template", "end_symbol", "add_bos")}
    specs = tiny_specs(**{k: kw.pop(k) for k in ("encoder", "bridge", "llm") if k in kw}, **causal)
    specs.update(kw)
    return BridgeModule(**specs)


def tiny_batch(module, batch_size: int = 2, task: str = "caption", train: bool = True):
    """A real batch of the built-in tone set, through the real datamodule."""
    from bridgebench.datamodules import AudioTextDataModule

    dm = AudioTextDataModule(manifest="builtin:tones", task=task, batch_size=batch_size, num_workers=0,
                             clip_seconds=2.0)
    dm.connect(module.data_contract())
    loader = dm.train_dataloader() if train else dm.test_dataloader()
    return next(iter(loader))


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    # In-process CLI runs get their args explicitly; pytest's own argv must not leak into them.
    monkeypatch.setattr("sys.argv", ["bridgebench"])
