"""Pseudo-captions from tags (LP-MusicCaps): instructions, baselines, resume, dictionary parsing."""

from __future__ import annotations

import json

import pytest

from bridgebench.captiondata.cli import main
from bridgebench.captiondata.from_tags import (
    INSTRUCTIONS,
    MalformedAnswer,
    evaluate,
    from_tags,
    parse_attribute_answer,
)
from bridgebench.captiondata.generator import TagCaptioner
from bridgebench.datamodules.fixtures import BUILTINS
from bridgebench.datamodules.manifest import read_manifest
from bridgebench.runtime.tiny import tiny_checkpoint


@pytest.fixture(scope="module")
def synth_manifest():
    return str(BUILTINS["builtin:music-synth-small"]())


def _rows(path):
    return [json.loads(x) for x in open(path).read().splitlines()]


@pytest.mark.parametrize("method,expected", [("tag_concat", "{tags}"), ("template", "the music is characterized by {tags}")])
def test_baselines_write_a_valid_manifest_with_sources_and_settings(synth_manifest, tmp_path, method, expected):
    out = tmp_path / "gen.jsonl"
    counts = from_tags(synth_manifest, str(out), method, limit=5)
    assert counts["written"] == 5 and counts["malformed"] == 0
    rows = _rows(out)
    src = {r["id"]: r for r in _rows(synth_manifest)}
    for row in rows:
        assert row["captions"] == [expected.format(tags=", ".join(src[row["id"]]["tags"]))]
        assert row["source_captions"] == src[row["id"]]["captions"]
        assert row["generation"] == {"method": method, "model": None}
    clips = read_manifest(out)  # a valid manifest whose audio paths still resolve
    assert len(clips) == 5 and all(open(c.audio, "rb").read(4) == b"RIFF" for c in clips)


class Recorder:
    """The real tiny-LM captioner, recording the instructions it was given."""

    def __init__(self, family):
        self.inner = TagCaptioner(str(tiny_checkpoint(family)), max_new_tokens=8)
        self.settings = self.inner.settings
        self.seen = []

    def __call__(self, instructions):
        self.seen.extend(instructions)
        return self.inner(instructions)


@pytest.mark.parametrize("family", ["llama", "t5"])
@pytest.mark.parametrize("method", list(INSTRUCTIONS))
def test_each_instruction_prompts_the_lm_with_the_tags(synth_manifest, tmp_path, family, method):
    rec = Recorder(family)
    out = tmp_path / "gen.jsonl"
    counts = from_tags(synth_manifest, str(out), method, rec, batch_size=2, limit=3)
    src = _rows(synth_manifest)[:3]
    assert rec.seen == [INSTRUCTIONS[method].format(tags=", ".join(r["tags"])) for r in src]
    assert counts["written"] + counts["malformed"] == 3
    if method == "attribute_prediction":  # a tiny random LM never writes a dictionary: counted, kept aside
        assert counts["malformed"] == 3 and not out.exists() or _rows(out) == []
        skipped = _rows(str(out) + ".skipped.jsonl")
        assert {s["reason"] for s in skipped} <= {"no dictionary in the answer", "unclosed dictionary",
                                                  "the dictionary does not parse", "empty answer"}
    for row in (_rows(out) if out.exists() else []):
        assert row["generation"]["method"] == method and row["generation"]["max_new_tokens"] == 8


def test_resume_skips_written_rows_and_survives_a_torn_last_line(synth_manifest, tmp_path):
    out = tmp_path / "gen.jsonl"
    assert from_tags(synth_manifest, str(out), "template", limit=4)["written"] == 4
    with open(out, "a") as f:
        f.write('{"id": "ms-000')  # a crash in the middle of a line
    counts = from_tags(synth_manifest, str(out), "template", limit=10)
    assert counts["done_before"] == 4 and counts["written"] == 6
    ids = [r["id"] for r in _rows(out)]
    assert len(ids) == len(set(ids)) == 10
    assert from_tags(synth_manifest, str(out), "template", limit=10)["written"] == 0


@pytest.mark.parametrize("answer,new,description", [
    ('{"new_attribute": ["groovy", "warm"], "description": "A warm groove."}', ["groovy", "warm"], "A warm groove."),
    ("Sure! {'new_attribute': 'dreamy, slow', 'description': 'A dreamy tune.'} Enjoy.", ["dreamy", "slow"],
     "A dreamy tune."),
    ('{"description": "Just a description {with braces}."}', [], "Just a description {with braces}."),
])
def test_attribute_answers_parse(answer, new, description):
    assert parse_attribute_answer(answer) == (new, description)


@pytest.mark.parametrize("answer,reason", [
    ("A song with guitar.", "no dictionary"), ('{"description": "cut off', "unclosed"),
    ("{new_attribute: [a], description: b}", "does not parse"), ('{"new_attribute": ["a"]}', "no 'description'"),
    ('{"new_attribute": [1, 2], "description": "x"}', "not a list of strings"), ("[1, 2] {}", "no 'description'"),
])
def test_malformed_attribute_answers_are_reported_not_raised(answer, reason):
    with pytest.raises(MalformedAnswer, match=reason):
        parse_attribute_answer(answer)


def test_malformed_answers_are_counted_and_listed(synth_manifest, tmp_path):
    answers = iter(['{"new_attribute": ["lofi"], "description": "A lofi jam."}', "no dict here",
                    "{'description': 'x', 'new_attribute': 'a, b'}"])

    class Fake:
        settings = {"model": "fake"}

        def __call__(self, instructions):
            return [next(answers) for _ in instructions]

    out = tmp_path / "gen.jsonl"
    counts = from_tags(synth_manifest, str(out), "attribute_prediction", Fake(), batch_size=3, limit=3)
    assert counts["written"] == 2 and counts["malformed"] == 1
    rows = _rows(out)
    assert rows[0]["captions"] == ["A lofi jam."] and rows[0]["new_attributes"] == ["lofi"]
    skipped = _rows(str(out) + ".skipped.jsonl")
    assert skipped[0]["answer"] == "no dict here" and skipped[0]["reason"] == "no dictionary in the answer"
    # a restart does not ask the LM again for the malformed row
    assert from_tags(synth_manifest, str(out), "attribute_prediction", Fake(), limit=3)["done_before"] == 3


def test_eval_scores_table2_metrics_and_attributes(synth_manifest, tmp_path, capsys):
    out = tmp_path / "gen.jsonl"
    from_tags(synth_manifest, str(out), "tag_concat", limit=12)
    scores = evaluate(str(out))
    for key in ("lpmc/bleu1", "lpmc/bleu4", "lpmc/meteor", "lpmc/rougeL", "lpmc/vocab_size", "lpmc/length_avg"):
        assert isinstance(scores[key], (int, float)) and not isinstance(scores[key], bool), key
    # The tag list names every true attribute of the clip.
    assert scores["attr_acc_instrument"] == 100.0 and scores["attr_acc_genre"] == 100.0
    assert main(["eval", str(out)]) == 0
    assert "| gen.jsonl |" in capsys.readouterr().out
