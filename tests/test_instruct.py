"""Instruction tuning and question answering: per-question-type evaluation, answer accuracy by
vocabulary match, several classifications by ranking, and the Bridge-Net's instruction ablation."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import tiny_module

from bridgebench.datamodules import AudioTextDataModule
from bridgebench.engine.lightning_cli import run
from bridgebench.errors import ConfigProblems
from bridgebench.evaluation.answers import answer_accuracy, answer_correct
from bridgebench.evaluation.attributes import caption_answer_agreement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "tiny.yaml")


@pytest.mark.parametrize("qa_type,prediction,truth,right", [
    ("instrument", "The lead is an electric piano.", "electric piano", True),
    ("instrument", "acoustic piano", "electric piano", False),
    ("instrument", "electric piano or organ", "electric piano", False),  # hedging is wrong
    ("genre", "bossa nova", "bossa nova", True),
    ("tempo_class", "slow", "slow", True),
    ("tempo_class", "It has a slow tempo.", "slow", True),
    ("tempo_class", "medium or fast", "fast", False),
    ("dynamics", "loud dynamics", "loud", True),
    ("mode", "It is in a minor key.", "minor", True),
    ("key", "C# minor", "C# minor", True),
    ("key", "C minor", "C# minor", False),
    ("bpm", "about 126 bpm", "120 bpm", True),  # within 8%
    ("bpm", "140 bpm", "120 bpm", False),
    ("bpm", "120 or 130 bpm", "120 bpm", False),
    ("bpm", "1200 bpm", "120 bpm", False),  # a number is read whole, never a part of a longer one
    ("bpm", "120120 bpm", "120 bpm", False),
    ("bpm", "120 bpm (120.0)", "120 bpm", True),  # one tempo, written twice
    ("tempo_class", "medium dynamics", "medium", False),  # answers the other attribute
    ("dynamics", "medium tempo", "medium", False),
    ("dynamics", "a medium-tempo song", "medium", False),
    ("tempo_class", "a medium tempo with soft dynamics", "medium", True),
    ("key", "It is in a minor key.", "A minor", False),  # "a" is the article
])
def test_answers_are_scored_by_vocabulary_match_per_question_type(qa_type, prediction, truth, right):
    assert answer_correct(qa_type, prediction, truth) is right


def test_answer_accuracy_reports_each_type_and_their_mean():
    rows = [{"qa_type": "genre", "prediction": "rock", "references": ["rock"]},
            {"qa_type": "genre", "prediction": "jazz", "references": ["rock"]},
            {"qa_type": "mode", "prediction": "major", "references": ["major"]},
            {"qa_type": "free", "prediction": "anything", "references": ["x"]}]  # no vocabulary: text metrics only
    out = answer_accuracy(rows)
    assert out == {"qa/genre/accuracy": 50.0, "qa/mode/accuracy": 100.0, "qa/accuracy": 75.0}


def test_caption_answer_agreement_sets_each_clips_caption_beside_its_answer():
    labels = {"instrument": "organ", "genre": "rock"}
    captions = [{"id": "a", "prediction": "rock, organ, bass, drums, fast tempo", "labels": labels},
                {"id": "b", "prediction": "jazz, flute, bass, drums", "labels": labels},
                {"id": "c", "prediction": "rock, violin, drums", "labels": labels}]
    answers = [{"id": "a", "qa_type": "instrument", "prediction": "flute", "references": ["organ"], "labels": labels},
               {"id": "b", "qa_type": "instrument", "prediction": "organ", "references": ["organ"], "labels": labels},
               {"id": "c", "qa_type": "instrument", "prediction": "organ", "references": ["organ"], "labels": labels},
               {"id": "a", "qa_type": "genre", "prediction": "rock", "references": ["rock"], "labels": labels},
               {"id": "z", "qa_type": "genre", "prediction": "rock", "references": ["rock"], "labels": labels}]
    out = caption_answer_agreement(captions, answers)  # clip z has no caption: not paired
    assert out == pytest.approx({"qa/instrument/caption_only": 100 / 3, "qa/instrument/answer_only": 200 / 3,
                                 "qa/genre/caption_only": 0.0, "qa/genre/answer_only": 0.0})


def test_eval_task_caption_plus_qa_evaluates_every_question_with_its_type():
    module = tiny_module(bridge="linear_pool")
    dm = AudioTextDataModule(manifest="builtin:music-synth-small", task="caption+qa", eval_task="caption+qa",
                             batch_size=2, num_workers=0, clip_seconds=2.0)
    dm.connect(module.data_contract())
    test = dm.dataset("test")
    clips = dm.clips("test")
    assert len(test) == len(clips) * 8  # the caption and the 7 questions of each clip
    types = [test[i]["qa_type"] for i in range(len(test))]
    assert types.count(None) == len(clips)
    # A batch's worth of clips (2 here) at a time: their captions, then their questions, so a batch of
    # short answers is not held to a caption's length, and every prefix holds both kinds.
    assert types[:2] == [None, None] and None not in types[2:16] and types[16:18] == [None, None]
    assert [test[i]["id"] for i in range(2, 16)] == [clips[0].id] * 7 + [clips[1].id] * 7
    assert {t for t in types if t} == {"instrument", "genre", "tempo_class", "bpm", "key", "mode", "dynamics"}
    default = AudioTextDataModule(manifest="builtin:music-synth-small", task="caption+qa", num_workers=0)
    default.connect(module.data_contract())
    assert len(default.dataset("test")) == len(clips)  # without eval_task: captions alone, as before


def test_train_questions_all_trains_on_every_question_of_each_clip_beside_its_caption():
    module = tiny_module(bridge="linear_pool")
    sets = {}
    for draw in ("one", "all"):
        dm = AudioTextDataModule(manifest="builtin:music-synth-small", task="caption+qa", train_questions=draw,
                                 batch_size=2, num_workers=0, clip_seconds=2.0)
        dm.connect(module.data_contract())
        sets[draw] = dm.dataset("train")
    clips = len(dm.clips("train"))
    assert len(sets["one"]) == 2 * clips and len(sets["all"]) == 8 * clips
    items = [sets["all"][i] for i in range(len(sets["all"]))]
    types = [x["qa_type"] for x in items]
    assert types.count(None) == clips and {t: types.count(t) for t in set(types) - {None}} == {
        t: clips for t in ("instrument", "genre", "tempo_class", "bpm", "key", "mode", "dynamics")}
    asked = [x for x in items if x["qa_type"] == "instrument"]
    assert all(x["instruction"] == "What is the lead instrument?" and x["target"] == x["labels"]["instrument"]
               for x in asked)
    with pytest.raises(ConfigProblems, match="data.train_questions: unknown value 'some'"):
        AudioTextDataModule(manifest="builtin:music-synth-small", task="caption+qa", train_questions="some")
    with pytest.raises(ConfigProblems, match="'all' applies to task caption\\+qa, not 'caption'"):
        AudioTextDataModule(manifest="builtin:music-synth-small", task="caption", train_questions="all")


def test_the_bridge_can_be_shown_a_fixed_instruction_while_the_llm_gets_the_real_one():
    module = tiny_module(bridge="bridgenet", llm="causal")
    normal = AudioTextDataModule(manifest="builtin:music-synth-small", task="qa", batch_size=4, num_workers=0,
                                 clip_seconds=2.0)
    blind = AudioTextDataModule(manifest="builtin:music-synth-small", task="qa", batch_size=4, num_workers=0,
                                clip_seconds=2.0, bridge_instruction="")
    for dm in (normal, blind):
        dm.connect(module.data_contract())
    a, b = next(iter(normal.test_dataloader())), next(iter(blind.test_dataloader()))
    assert a["instruction"] == b["instruction"]
    assert torch.equal(a["text"]["post_ids"], b["text"]["post_ids"])  # the LLM's prompt is unchanged
    assert not torch.equal(a["text"]["bridge_mask"], b["text"]["bridge_mask"])
    assert b["text"]["bridge_mask"].sum(1).tolist() == [2] * 4  # [CLS] [SEP] of the empty text only


def test_a_qa_test_run_reports_answers_per_type_and_two_classifications(tmp_path, monkeypatch):
    args = ["--config", os.path.join(ROOT, "experiments", "demo_linear_pool.yaml"), "--config", TINY,
            f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=2", "--data.task=caption+qa",
            "--data.eval_task=caption+qa", "--data.features=audio", "--model.encoder_checkpoint=null",
            "--model.evaluation.metric_modes=[musilingo]",
            "--model.evaluation.classify=[{label: instrument, instruction: 'What is the lead instrument?'}, "
            "{label: genre, instruction: 'What genre is this music?'}]", "--trainer.limit_test_batches=4"]
    run(["fit", *args])
    from bridgebench.llms.causal import CausalLM

    ranked = []
    real = CausalLM.candidate_nll
    monkeypatch.setattr(CausalLM, "candidate_nll", lambda self, soft, *a, **k: (ranked.append(soft.shape[0]),
                                                                                 real(self, soft, *a, **k))[1])
    run(["test", *args, "--ckpt_path=last"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test/qa/accuracy", "test/qa/instrument/accuracy", "test/qa/musilingo/rouge_l_recall",
                "test/classify_instrument_accuracy_sum", "test/classify_genre_accuracy_mean",
                "test/attr_acc_instrument", "test/qa/instrument/caption_only", "test/qa/genre/answer_only"):
        assert isinstance(metrics.get(key), float), (key, sorted(metrics))
    rows = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert any("qa_type" in r for r in rows) and any("qa_type" not in r for r in rows)
    # Each clip is ranked once per label, though its caption and questions fall in several batches.
    assert sum(ranked) == 2 * len({r["id"] for r in rows}), ranked


def test_qa_instructions_replace_the_wording_of_their_question_type():
    module = tiny_module(bridge="linear_pool")
    mint = {"instrument": "The most prominent instrument in this music is", "genre": "The genre of this music is"}
    dm = AudioTextDataModule(manifest="builtin:music-synth-small", task="qa", num_workers=0, clip_seconds=2.0,
                             qa_instructions=mint)
    dm.connect(module.data_contract())
    items = [dm.dataset("test")[i] for i in range(14)]
    by_type = {it["qa_type"]: it["instruction"] for it in items}
    assert by_type["instrument"] == mint["instrument"] and by_type["genre"] == mint["genre"]
    assert by_type["tempo_class"] == "Is the tempo slow, medium or fast?"  # no template: the set's own wording
    train = AudioTextDataModule(manifest="builtin:music-synth-small", task="caption+qa", num_workers=0,
                                clip_seconds=2.0, qa_instructions=mint)
    train.connect(module.data_contract())
    ds = train.dataset("train")
    asked = [ds[(i, e)] for i in range(len(ds)) for e in range(3) if ds.examples[i].qa is not None]
    assert all(it["instruction"] == mint[it["qa_type"]] for it in asked if it["qa_type"] in mint)


@pytest.mark.parametrize("template", ["###Human: <Audio><AudioHere></Audio> {instruction} ###Assistant: ",
                                      "<AudioHere>{instruction} "])
def test_a_template_ending_in_a_space_gets_the_answer_as_the_next_word_of_running_text(template):
    # MusiLingo's and MINT's templates end in a space. Tokenised apart, a byte-level BPE makes it a
    # lone token and splits the answer's first word in a way no text does; the answer must get the ids
    # it has after the prompt in running text, the prompt none for the space.
    from transformers import AutoTokenizer

    from bridgebench.llms.causal import AUDIO_SLOT, CausalText
    from bridgebench.runtime.tiny import tiny_checkpoint

    tok = AutoTokenizer.from_pretrained(tiny_checkpoint("llama"))
    text = CausalText(tok, template, end_symbol="###" if "###" in template else None, add_bos=False,
                      max_prompt_tokens=64, max_target_tokens=48)
    question, answer = "What is the lead instrument?", "electric piano and soft drums"
    out = text([question], [answer])
    cue = template.split(AUDIO_SLOT, 1)[1].format(instruction=question)
    post = out["post_ids"][0][out["post_mask"][0].bool()].tolist()
    target = out["target_ids"][0][out["target_mask"][0].bool()].tolist()
    running = tok(cue + answer + (text.end_symbol or ""), add_special_tokens=False).input_ids
    assert post + (target if text.end_symbol else target[:-1]) == running
    assert tok.convert_ids_to_tokens(post)[-1] != tok.convert_ids_to_tokens(tok(" ").input_ids)[-1]
    assert target[: len(tok(" electric", add_special_tokens=False).input_ids)] == tok(" electric", add_special_tokens=False).input_ids
    # Without the trailing space (the chat templates) nothing changes: the answer is tokenised alone.
    plain = CausalText(tok, template.rstrip(" ") + "\n", end_symbol=None, add_bos=False, max_prompt_tokens=64,
                       max_target_tokens=48)([question], [answer])
    assert plain["target_ids"][0][plain["target_mask"][0].bool()].tolist()[:-1] == tok(answer, add_special_tokens=False).input_ids


def test_examples_repeated_by_distributed_padding_are_scored_once():
    # DistributedSampler pads the last round with repeats of the first examples so that every rank
    # steps equally; gathered, the repeats must not count twice (here: a right answer padded in twice).
    from types import SimpleNamespace

    from bridgebench.engine.evaluator import GenerationScorer, TagScorer
    from bridgebench.specs import EvalSpec

    module = SimpleNamespace(eval_spec=EvalSpec(metric_modes=[], qa_metric_modes=[], attribute_vocabulary="music-synth"),
                             is_global_zero=lambda: True, datamodule=lambda: None)
    scorer = GenerationScorer(module)
    scorer.start("test")
    for example, (clip, answer) in enumerate([("a", "rock"), ("b", "jazz"), ("c", "jazz"), ("a", "rock"), ("a", "rock")]):
        scorer.rows.append({"id": clip, "example": example % 3, "instruction": "What genre is this music?",
                            "prediction": answer, "references": ["rock"], "labels": {}, "qa_type": "genre"})
    out = scorer.compute("test")
    assert out["qa/genre/accuracy"] == pytest.approx(100 / 3)  # 60 if the two repeats were kept
    assert [r["id"] for r in scorer.rows] == ["a", "b", "c"] and "example" not in scorer.rows[0]

    tags = TagScorer(module)
    tags.start("test")
    tags.rows = [{"id": "a", "logits": [2.0, -2.0], "targets": [1, 0]}, {"id": "b", "logits": [-2.0, 2.0], "targets": [1, 0]},
                 {"id": "c", "logits": [1.0, 0.0], "targets": [0, 1]}, {"id": "a", "logits": [2.0, -2.0], "targets": [1, 0]}]
    once = TagScorer(module)
    once.start("test")
    once.rows = tags.rows[:3]
    assert tags.compute("test") == once.compute("test")
