"""Pseudo-captions from tags (LP-MusicCaps): instructions, baselines, resume, dictionary parsing."""

from __future__ import annotations

import json

import pytest

from bridgebench.captiondata.cli import main
from bridgebench.captiondata.from_tags import (
    CODE_INSTRUCTIONS,
    INSTRUCTIONS,
    MalformedAnswer,
    evaluate,
    from_tags,
    parse_attribute_answer,
    query,
    shuffled,
)
from bridgebench.errors import ConfigError
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
        assert row["captions"] == [expected.format(tags=", ".join(shuffled(src[row["id"]]["tags"], 0, row["id"])))]
        assert row["source_captions"] == src[row["id"]]["captions"]
        assert row["generation"] == {"method": method, "model": None, "shuffle_seed": 0}
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
    assert rec.seen == [query(method, r["tags"]) for r in src]
    assert counts["written"] + counts["malformed"] == 3
    if method == "attribute_prediction":  # a tiny random LM never writes a dictionary: counted, kept aside
        assert counts["malformed"] == 3 and not out.exists() or _rows(out) == []
        skipped = _rows(str(out) + ".skipped.jsonl")
        assert {s["reason"] for s in skipped} <= {"no dictionary in the answer", "unclosed dictionary",
                                                  "the dictionary does not parse", "empty answer"}
    for row in (_rows(out) if out.exists() else []):
        assert row["generation"]["method"] == method and row["generation"]["max_new_tokens"] == 8
        assert row["generation"]["prompts"] == "code"


def _tagged_manifest(path, tag_lists):
    path.write_text("".join(json.dumps({"id": f"r{i}", "audio": f"r{i}.wav", "captions": [f"caption {i}"],
                                        "tags": tags}) + "\n" for i, tags in enumerate(tag_lists)))
    return str(path)


class Fake:
    """An LM that records its queries and answers with a fixed caption."""

    settings = {"model": "fake"}

    def __init__(self):
        self.seen = []

    def __call__(self, instructions):
        self.seen.extend(instructions)
        return ["a caption"] * len(instructions)


def test_code_prompts_are_their_generate_py_queries(tmp_path):
    # generate.py: lower case, "summarize", singular wording for one tag, "instruction \n tags",
    # rows without tags skipped; the paper's capitalised plural wording only on request.
    manifest = _tagged_manifest(tmp_path / "m.jsonl", [["Rock"], ["Rock", "Male Vocal"], []])
    fake = Fake()
    counts = from_tags(manifest, str(tmp_path / "code.jsonl"), "summary", fake)
    assert counts["no_tags"] == 1 and counts["written"] == 2
    assert fake.seen == [
        "write a single sentence that summarize a song with the following single attribute. "
        "Don't write artist name or album name. \n Rock",
        "write a single sentence that summarize a song with the following attributes. "
        "Don't write artist name or album name. \n Rock, Male Vocal"]
    assert all(q == query("summary", t) for q, t in zip(fake.seen, [["Rock"], ["Rock", "Male Vocal"]]))
    assert set(CODE_INSTRUCTIONS) == set(INSTRUCTIONS)
    for singular, plural in CODE_INSTRUCTIONS.values():
        assert singular == singular.lower() or "Don't" in singular  # their only capitals: "Don't"
        assert "single attribute" in singular and "attributes." in plural
    paper = Fake()
    from_tags(manifest, str(tmp_path / "paper.jsonl"), "summary", paper, prompts="paper")
    assert paper.seen[0] == ("Write a single sentence that summarizes a song with the following attributes. "
                             "Don't write the artist name or album name. Rock")
    assert json.loads((tmp_path / "paper.jsonl").read_text().splitlines()[0])["generation"]["prompts"] == "paper"
    with pytest.raises(ConfigError, match="prompts"):  # one file, one prompt set
        from_tags(manifest, str(tmp_path / "paper.jsonl"), "summary", Fake(), prompts="code")


def test_baseline_shuffle_is_seeded_per_row_and_recorded(tmp_path):
    tags = [[f"tag{k}" for k in range(i, i + 6)] for i in range(8)]
    manifest = _tagged_manifest(tmp_path / "m.jsonl", tags)

    def captions(name, **kw):
        from_tags(manifest, str(tmp_path / name), "tag_concat", **kw)
        rows = _rows(tmp_path / name)
        assert {r["generation"]["shuffle_seed"] for r in rows} == {kw.get("seed", 0) if kw.get("shuffle", True) else None}
        return [r["captions"][0] for r in rows]

    first, again = captions("a.jsonl", seed=3), captions("b.jsonl", seed=3, batch_size=3)
    assert first == again  # the same seed gives the same order, whatever the batching
    stored = [", ".join(t) for t in tags]
    assert sum(a != s for a, s in zip(first, stored)) >= 6  # shuffled, as their eval.py does
    assert [sorted(c.split(", ")) for c in first] == [sorted(t) for t in tags]  # the same tags
    assert captions("c.jsonl", seed=4) != first
    assert captions("d.jsonl", shuffle=False) == stored
    with pytest.raises(ConfigError, match="shuffle_seed"):  # resuming with another seed would mix orders
        from_tags(manifest, str(tmp_path / "a.jsonl"), "tag_concat", seed=5)


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


def test_eval_counts_novelty_against_the_training_captions(tmp_path, capsys):
    manifest = _tagged_manifest(tmp_path / "m.jsonl", [["piano", "calm"], ["drums", "loud"]])
    out = tmp_path / "gen.jsonl"
    from_tags(manifest, str(out), "template", shuffle=False)
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "t0", "audio": "t0.wav", "split": "test", "captions": ["loud"]},  # not training: ignored
        {"id": "t1", "audio": "t1.wav", "split": "train", "captions": ["The music is characterized by piano."]},
        {"id": "t2", "audio": "t2.wav", "split": "train", "captions": ["drums, by calm"]}]))
    scores = evaluate(str(out), ("lp-musiccaps",), str(train))
    # predictions "the music is characterized by piano, calm" / "... by drums, loud": 9 words; the
    # training captions know 8 of them (lower-cased, "," and "." dropped): "loud" is new.
    assert scores["lpmc/vocab_size"] == 9 and scores["lpmc/novel_v"] == pytest.approx(1 / 9)
    assert scores["lpmc/novel_c"] == 1.0
    # Without training captions novelty is not counted against the references being scored.
    assert str(evaluate(str(out))["lpmc/novel_v"]).startswith("unavailable")
    # The files after --modes are files, not mode names.
    assert main(["eval", "--modes", "lp-musiccaps,standard", str(out), str(out), "--train-manifest", str(train)]) == 0
    printed = capsys.readouterr().out
    assert printed.count('"file"') == 2 and '"novel_vocab_vs": "train"' in printed
