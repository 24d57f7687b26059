"""AudioSetCaps refinement: the prompt chain, the rules, the regenerate-until-not-below-the-labels
stopping rule, resume, and the real scorers (a trained stage-1 run, a CLAP checkpoint)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from bridgebench.captiondata import audiosetcaps as released
from bridgebench.captiondata.cli import main as captions_main
from bridgebench.captiondata.jsonl import read_rows
from bridgebench.datamodules.fixtures import BUILTINS
from bridgebench.errors import ConfigError
from bridgebench.datamodules.manifest import read_manifest
from bridgebench.captiondata.refine import (
    RefineSettings,
    extract,
    merge_prompt,
    parse_assume,
    refine,
    refine_rows,
    rule_violation,
    yes_no,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "tiny.yaml")
LABELS = ["hip hop", "synth lead", "bass", "drums", "slow tempo"]


class FakeALM:
    """Answers by prompt; ``presence`` maps clip -> (speech answer, music answer)."""

    def __init__(self, presence=None):
        self.presence = presence or {}
        self.asked: list[tuple[str, str]] = []

    def ask(self, audio, prompts):
        out = []
        for a, p in zip(audio, prompts, strict=True):
            self.asked.append((a, p))
            speech, music = self.presence.get(a, ("no", "yes"))
            if "speech in this audio" in p:
                out.append(speech)
            elif "music in this audio" in p:
                out.append(music)
            elif "speech" in p:
                out.append(f"calm male voice in <{a}>")
            elif "genre" in p:
                out.append(f"funk with an organ in <{a}>")
            else:
                out.append(f"a band plays in <{a}>")
        return out


class ScriptedLLM:
    """Returns, for each prompt, the next caption of the script of the clip named in it."""

    settings = {"model": "scripted"}

    def __init__(self, scripts: dict[str, list[str]]):
        self.scripts = {k: list(v) for k, v in scripts.items()}
        self.calls: list[dict] = []

    def __call__(self, instructions, seed=None, do_sample=None):
        self.calls.append({"n": len(instructions), "seed": seed, "do_sample": do_sample})
        out = []
        for text in instructions:
            clip = next(k for k in self.scripts if f"in <{k}>" in text)
            out.append(self.scripts[clip].pop(0))
        return out


class TableScorer:
    """Similarity from a table; any text not in it (the labels) scores ``label``."""

    name = "table"

    def __init__(self, table: dict[str, float], label: float = 0.5):
        self.table, self.label = table, label
        self.scored: list[str] = []

    def score(self, audio, texts):
        self.scored += texts
        return [self.table.get(t, self.label) for t in texts]


def _rows(clips):
    return [{"id": c, "tags": LABELS, "captions": ["orig"]} for c in clips]


def test_captions_below_their_labels_are_regenerated_until_kept_or_out_of_rounds():
    scripts = {"a": ["good a"], "b": ["weak b", "good b"], "c": ["weak c1", "weak c2", "weak c3"],
               "d": ["tie d"]}
    scorer = TableScorer({"good a": 0.9, "weak b": 0.3, "good b": 0.6, "weak c1": 0.1, "weak c2": 0.2,
                          "weak c3": 0.49, "tie d": 0.5})
    llm = ScriptedLLM(scripts)
    counts = {"kept": 0, "discarded": 0}
    kept, discarded = refine_rows(_rows("abcd"), list("abcd"), FakeALM(), llm, scorer,
                                  RefineSettings(rounds=3, seed=10), counts)
    assert {k["row"]["id"]: (k["caption"], k["refine"]["round"]) for k in kept} == {
        "a": ("good a", 1), "b": ("good b", 2), "d": ("tie d", 1)}  # a tie is not "below": kept
    assert [d["id"] for d in discarded] == ["c"]
    assert discarded[0]["reason"] == "below_labels" and discarded[0]["last_caption"] == "weak c3"
    assert discarded[0]["caption_score"] == pytest.approx(0.49) and discarded[0]["label_score"] == 0.5
    # Round 1 decodes as configured; each retry samples, with its own seed, and only the pending rows.
    assert llm.calls == [{"n": 4, "seed": None, "do_sample": None}, {"n": 2, "seed": 11, "do_sample": True},
                         {"n": 1, "seed": 12, "do_sample": True}]
    assert all(not s for s in llm.scripts.values())  # no caption generated beyond the rounds
    assert counts == {"kept": 3, "discarded": 1, "kept_round_1": 2, "kept_round_2": 1, "below_labels": 4}


def test_one_round_discards_without_retrying():
    llm = ScriptedLLM({"a": ["weak a"]})
    counts = {"kept": 0, "discarded": 0}
    kept, discarded = refine_rows(_rows("a"), ["a"], FakeALM(), llm, TableScorer({"weak a": 0.1}),
                                  RefineSettings(rounds=1), counts)
    assert not kept and len(discarded) == 1 and len(llm.calls) == 1


def test_rule_breaking_captions_are_regenerated_without_being_scored():
    long = " ".join(["word"] * 51)
    scripts = {"a": [long, "fine a"], "b": ["A hip hop, synth lead, bass groove", "fine b"],
               "c": ['He says "we will win tonight" twice', "fine c"], "d": ["", "", ""]}
    scorer = TableScorer({"fine a": 0.9, "fine b": 0.9, "fine c": 0.9})
    counts = {"kept": 0, "discarded": 0}
    kept, discarded = refine_rows(_rows("abcd"), list("abcd"), FakeALM(), ScriptedLLM(scripts), scorer,
                                  RefineSettings(rounds=3), counts)
    assert {k["row"]["id"]: k["refine"]["round"] for k in kept} == {"a": 2, "b": 2, "c": 2}
    assert discarded[0]["id"] == "d" and discarded[0]["reason"] == "empty" and discarded[0]["caption_score"] is None
    assert not set(scorer.scored) & {long, "", "A hip hop, synth lead, bass groove"}
    assert counts["rule_too_long"] == 1 and counts["rule_copies_labels"] == 1
    assert counts["rule_quotes_speech"] == 1 and counts["rule_empty"] == 3


@pytest.mark.parametrize("caption,why", [
    ("A slow hip hop beat where a synth lead carries the tune over bass and drums.", None),
    ("hip hop, synth lead, bass", "copies_labels"),
    ("Synth lead over hip hop drums and bass, slow tempo.", None),  # labels named, not the list copied
    ("A song " + "very " * 48 + "long", "too_long"),
    ("The singer shouts \u201cget up and dance\u201d", "quotes_speech"),
    ('a "lo-fi" beat', None),  # a quoted word is not quoted speech
    ("  ", "empty"),
])
def test_rule_violations(caption, why):
    assert rule_violation(" ".join(caption.split()), LABELS, 50) == why


def test_presence_questions_gate_the_speech_and_music_prompts():
    presence = {"x": ("Yes, a man talks.", "no"), "y": ("no", "yes"), "z": ("Maybe.", "I am not sure")}
    alm = FakeALM(presence)
    counts = {}
    answers = extract(alm, ["x", "y", "z"], RefineSettings(), counts)
    assert answers[0] == {"content": "a band plays in <x>", "speech_present": "yes", "speech": "calm male voice in <x>",
                          "music_present": "no"}
    assert answers[1] == {"content": "a band plays in <y>", "speech_present": "no", "music_present": "yes",
                          "music": "funk with an organ in <y>"}
    assert answers[2] == {"content": "a band plays in <z>", "speech_present": "unclear", "music_present": "unclear"}
    assert counts == {"unclear_speech_present": 1, "unclear_music_present": 1}
    prompt = merge_prompt(answers[0], "a, b", 50)
    assert "Speech: calm male voice in <x>" in prompt and "Reference labels: a, b" in prompt
    assert "speech_present" not in prompt and "at most 50 words" in prompt


def test_assumed_presence_is_not_asked():
    alm = FakeALM()
    settings = RefineSettings(assume=parse_assume(["speech_present=no", "music_present=yes"]))
    answers = extract(alm, ["x"], settings, {})
    assert answers[0]["music"] == "funk with an organ in <x>" and "speech" not in answers[0]
    assert not any("in this audio?" in p for _, p in alm.asked)
    with pytest.raises(ConfigError, match="GATE=yes"):
        parse_assume(["speechy=no"])
    assert yes_no("Yes.") is True and yes_no("no, none") is False and yes_no("nothing") is None


def test_refine_writes_a_manifest_and_resumes(tmp_path):
    manifest = str(BUILTINS["builtin:music-synth-small"]())
    _, rows = read_rows(manifest)
    rows = [r for r in rows if r["split"] == "train"][:5]

    class SameLLM:
        settings = {"model": "same"}

        def __call__(self, instructions, seed=None, do_sample=None):
            return ["A caption of a clip."] * len(instructions)

    scorer = TableScorer({"A caption of a clip.": 1.0}, label=0.5)
    out = tmp_path / "gen" / "refined.jsonl"
    first = refine(manifest, str(out), FakeALM(), SameLLM(), scorer, RefineSettings(), batch_size=2,
                   limit=3, splits=["train"], log=lambda s: None)
    assert first["kept"] == 3 and first["done_before"] == 0
    second = refine(manifest, str(out), FakeALM(), SameLLM(), scorer, RefineSettings(), batch_size=2,
                    limit=5, splits=["train"], log=lambda s: None)
    assert second["done_before"] == 3 and second["kept"] == 2
    written = [json.loads(x) for x in out.read_text().splitlines()]
    assert [w["id"] for w in written] == [r["id"] for r in rows]
    for w, r in zip(written, rows, strict=True):
        assert w["captions"] == ["A caption of a clip."] and w["source_captions"] == r["captions"]
        assert w["generation"]["method"] == "audiosetcaps" and w["refine"]["round"] == 1
        assert os.path.isfile(out.parent / w["audio"])  # audio paths rewritten relative to the output
    assert len(read_manifest(str(out))) == 5  # a valid manifest for the datamodules


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A tiny stage-1 run (the scorer) and a tiny stage-2 run on its encoder (the ALM)."""
    from bridgebench.engine.lightning_cli import run

    base = tmp_path_factory.mktemp("runs")
    stage1, stage2 = base / "s1", base / "s2"
    common = ["--config", TINY, "--trainer.max_steps=2"]
    run(["fit", "--config", os.path.join(ROOT, "experiments", "demo_stage1.yaml"), *common,
         f"--trainer.default_root_dir={stage1}"])
    run(["fit", "--config", os.path.join(ROOT, "experiments", "demo_qformer.yaml"), *common,
         f"--trainer.default_root_dir={stage2}", f"--model.stage1_checkpoint={stage1 / 'checkpoints' / 'last.ckpt'}",
         "--data.features=audio"])
    return stage1, stage2


def test_refine_end_to_end_with_tiny_runs_and_a_tiny_lm(tiny_runs, tmp_path, capsys):
    from bridgebench.captiondata.refine import RunScorer

    stage1, stage2 = tiny_runs
    out = tmp_path / "refined.jsonl"
    args = ["refine", "builtin:music-synth-small", str(out), "--mode", "gated", "--alm", str(stage2), "--model", "tiny",
            "--scorer", str(stage1), "--rounds", "2", "--limit", "4", "--max-new-tokens", "8",
            "--assume", "speech_present=no", "music_present=yes", "--batch-size", "3", "--device", "cpu"]
    assert captions_main(args) == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts["kept"] + counts["discarded"] == 4
    kept = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    dropped = [json.loads(x) for x in open(str(out) + ".discarded.jsonl")] if counts["discarded"] else []
    assert len(kept) == counts["kept"] and len(dropped) == counts["discarded"]
    for rec in kept:  # the ALM's real answers fed the merge prompt, and the scores allowed keeping it
        ex = rec["refine"]["extraction"]
        assert ex["speech_present"] == "no" and ex["music_present"] == "yes" and "music" in ex and "content" in ex
        assert ex["content"] in rec["refine"]["prompt"]
        assert rec["refine"]["caption_score"] >= rec["refine"]["label_score"]
    for rec in dropped:
        assert rec["reason"] and (rec["caption_score"] is None or rec["caption_score"] < rec["label_score"])
    # The scorer is the stage-1 ATC similarity: same text, same clip, same score; texts differ -> scores differ.
    scorer = RunScorer(str(stage1))
    _, rows = read_rows("builtin:music-synth-small")
    clip = os.path.join(os.path.dirname(str(BUILTINS["builtin:music-synth-small"]())), rows[0]["audio"])
    s = scorer.score([clip, clip, clip], [rows[0]["captions"][0], rows[0]["captions"][0], "silence"])
    assert s[0] == pytest.approx(s[1]) and s[0] != pytest.approx(s[2]) and all(-1 <= x <= 1 for x in s)
    assert captions_main(args) == 0  # resumed: nothing left to do
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["done_before"] == 4


def test_clap_scorer_is_the_clap_models_audio_text_cosine(tmp_path):
    from transformers import ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapTextConfig

    from bridgebench.captiondata.refine import ClapScorer, load_scorer
    from bridgebench.runtime.tiny import tiny_checkpoint

    tok_dir = tiny_checkpoint("bert")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        shutil.copy(tok_dir / name, tmp_path / name)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    torch.manual_seed(0)
    config = ClapConfig(
        text_config=ClapTextConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, pad_token_id=tok.pad_token_id, max_position_embeddings=64),
        audio_config=ClapAudioConfig(enable_fusion=False, patch_embeds_hidden_size=8, depths=[1, 1, 1, 1],
                                     num_attention_heads=[1, 1, 2, 2], hidden_size=64),
        projection_dim=16)
    ClapModel(config).save_pretrained(str(tmp_path))
    ClapFeatureExtractor().save_pretrained(str(tmp_path))
    scorer = load_scorer(str(tmp_path))
    assert isinstance(scorer, ClapScorer)
    _, rows = read_rows("builtin:music-synth-small")
    root = os.path.dirname(str(BUILTINS["builtin:music-synth-small"]()))
    audio = [os.path.join(root, r["audio"]) for r in rows[:2]]
    texts = [rows[0]["captions"][0], "a dog barks"]
    got = scorer.score(audio, texts)
    # Reference: the model's own CLIP-style logits (scaled cosine of the projected embeddings).
    from bridgebench.datamodules.audio import load_audio

    fe = ClapFeatureExtractor.from_pretrained(str(tmp_path))
    inputs = fe([load_audio(a, fe.sampling_rate) for a in audio], sampling_rate=fe.sampling_rate, return_tensors="pt",
                truncation="rand_trunc")  # the clips are 4 s: padded, no random window
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        o = scorer.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                         input_features=inputs["input_features"])
    want = (o.logits_per_audio / scorer.model.logit_scale_a.exp()).diagonal()
    assert got == pytest.approx(want.tolist(), abs=1e-4)


def test_rows_without_labels_are_counted_not_refined(tmp_path):
    _, rows = read_rows("builtin:music-synth-small")
    root = os.path.dirname(str(BUILTINS["builtin:music-synth-small"]()))
    audio = os.path.join(root, rows[0]["audio"])
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": audio, "tags": ["jazz", "piano"], "captions": ["x"]}) + "\n"
                        + json.dumps({"id": "b", "audio": audio, "captions": ["y"]}) + "\n")

    class SameLLM:
        settings = {"model": "same"}

        def __call__(self, instructions, seed=None, do_sample=None):
            return ["A calm piano piece."] * len(instructions)

    counts = refine(str(manifest), str(tmp_path / "out.jsonl"), FakeALM(), SameLLM(),
                    TableScorer({"A calm piano piece.": 0.9}), RefineSettings(), log=lambda s: None)
    assert counts["no_labels"] == 1 and counts["kept"] == 1 and counts["discarded"] == 0


# === Released pipeline (--mode released, the default) ===


class ChatALM:
    """Answers each chat turn from a script per (clip, attempt); records the instructions."""

    def __init__(self, replies: dict[tuple[str, int], tuple[str, str, str]]):
        self.replies = replies
        self.asked: list[tuple[str, int, str]] = []

    def ask(self, audio, prompts, attempt=1):
        out = []
        for a, p in zip(audio, prompts, strict=True):
            self.asked.append((a, attempt, p))
            turn = next(k for k, q in enumerate(released.TURNS) if p.endswith(q))
            out.append(self.replies[(a, attempt)][turn])
        return out


class MergeLLM:
    """Returns the next caption scripted for the clip whose description is in the prompt."""

    settings = {"model": "merge"}

    def __init__(self, scripts):
        self.scripts = {k: list(v) for k, v in scripts.items()}
        self.calls = []

    def __call__(self, instructions, seed=None, do_sample=None, system=None):
        self.calls.append({"n": len(instructions), "seed": seed, "do_sample": do_sample, "system": system})
        return [self.scripts[next(k for k in self.scripts if f"<{k}>" in text)].pop(0) for text in instructions]


def test_released_chat_carries_its_history_and_retries_answers_outside_100_to_500_chars():
    short = ("<a> birds", "none", "none")  # assembled: far below 100 characters
    fine = ("<a> " + "a calm piano melody with soft strings " * 2, "There is no speech.", "Classical, piano.")
    alm = ChatALM({("a", 1): short, ("a", 2): fine, ("b", 1): short, ("b", 2): short})
    counts = {}
    got = released.describe(alm, ["a", "b"], released.ReleasedSettings(), counts)
    assert got[0] == {"response": "Description: " + fine[0] + "\nSpeech: " + fine[1] + "\nMusic: " + fine[2],
                      "attempts": 2}
    assert 100 <= len(got[0]["response"]) <= 500
    assert got[1]["attempts"] == 2 and len(got[1]["response"]) < 100  # the last attempt is kept anyway
    assert counts == {"alm_retried": 2, "alm_out_of_range": 1}
    # Turn 3 of clip a's second chat sees both earlier questions and answers of that chat.
    third = [p for a, k, p in alm.asked if a == "a" and k == 2][2]
    assert third == (f"{released.TURNS[0]}\n{fine[0]}\n{released.TURNS[1]}\n{fine[1]}\n{released.TURNS[2]}")
    assert released.TURNS[0] == "Describe this audio according to the sounds in it within 50 words."


@pytest.mark.parametrize("speech,music,kept", [
    ("There is no speech in this audio.", "Rock with guitars.", ("", "Music: Rock with guitars.")),
    ("A man speaks English calmly.", "The music is not present.", ("Speech: A man speaks English calmly.\n", "")),
    ("The speaker does not sound happy.", "no music", ("", "")),  # any negation drops the line
    ("No speech.", "No music.", ("Speech: No speech.\n", "Music: No music.")),  # case-sensitive, as theirs
])
def test_released_keyword_filter_drops_speech_and_music_lines(speech, music, kept):
    response = released.assemble(["It is not quiet.", speech, music])
    assert released.kept_lines(response) == ("Description: It is not quiet.\n", *kept)


def test_released_merge_prompt_is_their_fixed_text():
    prompt = released.merge_prompt(("Description: d\n", "", "Music: m"), "Music, Guitar")
    rules = ("Do not mention the specific content of speech! Do not mention the specific content of speech!",
             "Do not output the ground truth labels in the caption! Do not output the ground truth labels in the caption!")
    gap = " " * 24
    assert prompt == ("Details:\n1 Crowd-sourced workers:{Description: d\nMusic: m}\n2 The ground truth labels:"
                      "{Music, Guitar}\nMy instructions:\n" + gap + rules[0] + gap + rules[1] + gap
                      + "\nOutput your caption (Within 50 words):")
    assert released.SYSTEM.startswith("I'm currently doing crowd-sourced labeling") and not released.SYSTEM.endswith("\n")


def test_released_scoring_texts_lose_punctuation_and_are_padded_by_repetition():
    caption = "A rock song; electric guitar, drums. " * 4 + "Loud"  # 152 characters
    cap, lab = released.scoring_texts(caption, "Music, Guitar")
    assert lab == "Music  Guitar" * 11 and len(lab) == 143  # 152 // 13 copies, no separator
    assert cap == caption.replace(";", " ").replace(",", " ").replace(".", " ")  # the longer one is unchanged
    assert released.padded(["", "abc"]) == ["", "abc"]


def test_released_refine_keeps_the_codes_caption_and_never_discards_for_the_score(tmp_path):
    _, rows = read_rows("builtin:music-synth-small")
    root = os.path.dirname(str(BUILTINS["builtin:music-synth-small"]()))
    audio = os.path.join(root, rows[0]["audio"])
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": c, "audio": audio, "tags": ["Music", "Guitar"], "captions": ["x"]})
                                + "\n" for c in "ab"))
    desc = "with a bright electric guitar riff over a steady drum groove in a rock style"
    class TwoClipALM(ChatALM):  # both rows share one audio file: tell them apart by call order
        def ask(self, audio_files, prompts, attempt=1):
            return [[f"<{c}> {desc}", "There is no speech.", "Rock."][next(
                k for k, q in enumerate(released.TURNS) if p.endswith(q))] for c, p in zip("ab", prompts)]

    llm = MergeLLM({"a": ["try one of a", "try two of a"], "b": ["b beats its labels"]})
    label = released.scoring_texts("try one of a", "Music, Guitar")[1]
    scorer = TableScorer({"try one of a": 0.45, "try two of a": 0.30, "b beats its labels": 0.9}, label=0.5)
    counts = released.refine_released(str(manifest), str(tmp_path / "out.jsonl"), TwoClipALM({}), llm, scorer,
                                      released.ReleasedSettings(seed=7), log=lambda s: None)
    assert counts["kept"] == 2 and counts["discarded"] == 0
    assert counts["kept_below_labels"] == 1 and counts["kept_try_1"] == 1 and counts["filtered_speech"] == 2
    out = {r["id"]: r for r in (json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines())}
    # a: neither try beats the labels: the code keeps the LAST try, though try 1 scored higher.
    assert out["a"]["captions"] == ["try two of a"]
    assert out["a"]["refine"]["kept_try"] == 2 and out["a"]["refine"]["beat_labels"] is False
    assert [t["caption_score"] for t in out["a"]["refine"]["tries"]] == [0.45, 0.30]
    assert out["b"]["captions"] == ["b beats its labels"] and out["b"]["refine"]["kept_try"] == 1
    # Caption and label text were normalised before scoring; the filtered speech line is not in the prompt.
    assert label in scorer.scored and "Music  Guitar" in label
    assert "Speech:" not in out["a"]["refine"]["prompt"] and "Music: Rock." in out["a"]["refine"]["prompt"]
    # Every try samples with its own seed, under their system message; b was not tried again.
    assert llm.calls == [{"n": 2, "seed": 7, "do_sample": True, "system": released.SYSTEM},
                         {"n": 1, "seed": 8, "do_sample": True, "system": released.SYSTEM}]
    assert out["a"]["generation"]["method"] == "audiosetcaps-released" and out["a"]["generation"]["keep"] == "last try"


def test_released_is_the_default_mode_end_to_end_with_tiny_runs(tiny_runs, tmp_path, capsys):
    stage1, stage2 = tiny_runs
    out = tmp_path / "released.jsonl"
    args = ["refine", "builtin:music-synth-small", str(out), "--alm", str(stage2), "--model", "tiny",
            "--scorer", str(stage1), "--limit", "3", "--max-new-tokens", "8", "--batch-size", "2", "--device", "cpu"]
    assert captions_main(args) == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts["kept"] + counts["discarded"] == 3
    for rec in ([json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []):
        info = rec["refine"]
        assert rec["generation"]["method"] == "audiosetcaps-released"
        assert info["alm_response"].startswith("Description: ") and 1 <= info["alm_attempts"] <= 2
        assert rec["captions"] == [info["tries"][info["kept_try"] - 1]["caption"]] and info["kept_try"] == len(info["tries"])
        assert info["beat_labels"] == (info["tries"][-1]["caption_score"] >= info["tries"][-1]["label_score"])


def test_the_merge_llm_gets_the_system_message_as_a_system_turn_where_its_template_has_one():
    from bridgebench.captiondata.generator import TagCaptioner
    from bridgebench.runtime.tiny import tiny_checkpoint

    llm = TagCaptioner(str(tiny_checkpoint("llama")), max_new_tokens=4)
    llm.tokenizer.chat_template = None  # no template: the system text leads, a blank line before the prompt
    assert llm.prompt("hi", "SYS") == "SYS\n\nhi" and llm.prompt("hi") == "hi"
    llm.tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>"
    assert llm.prompt("hi", "SYS") == "<system>SYS\n<user>hi\n<assistant>"
    llm.tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no') }}"
                                   "{% endif %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}<assistant>")
    assert llm.prompt("hi", "SYS") == "<user>SYS\n\nhi\n<assistant>"  # a template without a system role
