"""Every bad input gets one clear line: exit code 2, exactly one ``error:`` line naming the file or key,
no traceback. One real command line (a subprocess) per class of problem, run concurrently; the many
variants of each class run in-process through the same entry point (``bridgebench.__main__.main``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
import torch

from bridgebench.__main__ import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "tiny.yaml")
STAGE2 = os.path.join(ROOT, "experiments", "blap_stage2.yaml")
CAUSAL = os.path.join(ROOT, "experiments", "musilingo_stage2.yaml")
BASE = ["--config", STAGE2, "--config", TINY]


def one_error(code: int, err: str, *needles: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert code == 2, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    assert len(lines) == 1, err[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def run_main(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Bad files of every kind, and one trained tiny run to point commands at."""
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.ckpt").write_bytes(b"")
    (d / "folder.ckpt").mkdir()
    torch.save({"weights": [1, 2, 3]}, d / "plain.pt")
    torch.save({"state_dict": {"w": torch.ones(2)}}, d / "statedict.pt")
    (d / "file").write_text("a regular file")
    (d / "broken.yaml").write_text("trainer:\n  max_steps: [1, 2\n")
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000)
    sf.write(d / "tone.wav", tone, 16_000)
    (d / "audio_dir").mkdir()
    run = d / "run"
    assert main(["fit", "--config", CAUSAL, "--config", TINY, f"--trainer.default_root_dir={run}",
                 "--trainer.max_steps=1", "--trainer.limit_val_batches=0"]) == 0
    good = (run / "checkpoints" / "last.ckpt").read_bytes()
    (d / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    return d


def subprocess_cases(d) -> dict[str, tuple[list[str], tuple[str, ...]]]:
    manifest = d / "typed.jsonl"
    manifest.write_text(json.dumps({"audio": str(d / "tone.wav"), "caption": "a tone", "tags": "piano"}) + "\n")
    return {
        "checkpoint": (["test", *BASE, f"--ckpt_path={d / 'truncated.ckpt'}"], ("--ckpt_path", "truncated.ckpt")),
        "config value": (["fit", *BASE, "--data.batch_size=0"], ("data.batch_size",)),
        "manifest field": (["fit", *BASE, f"--data.manifest={manifest}"], (f"{manifest}:1", "'tags'")),
        "unwritable output": (["fit", *BASE, f"--trainer.default_root_dir={d / 'file' / 'run'}"],
                              ("trainer.default_root_dir", "is a file")),
        "caption --seconds": (["caption", str(d / "tone.wav"), "--ckpt", str(d / "run"), "--seconds", "0"],
                              ("--seconds",)),
        "captions from-tags": (["captions", "from-tags", str(manifest), str(d / "out.jsonl"), "--method", "writing",
                                "--model", str(d / "no-model")], ("--model", "no-model")),
        "results": (["results", str(d / "audio_dir")], ("metrics.json",)),
        "sweep": (["sweep", str(d / "file")], ("sweep file",)),
        "config file": (["fit", "--config", str(d / "broken.yaml")], ("--config", "broken.yaml", "line 3")),
        "cache config file": (["cache", "--config", str(d / "broken.yaml")], ("--config", "broken.yaml")),
    }


def test_each_class_of_bad_input_is_one_line_from_the_real_command_line(bad):
    cases = subprocess_cases(bad)

    def call(args):
        return subprocess.run([sys.executable, "-m", "bridgebench", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(zip(cases, pool.map(call, [args for args, _ in cases.values()])))
    for name, (_, needles) in cases.items():
        out = done[name]
        try:
            one_error(out.returncode, out.stderr, *needles)
        except AssertionError as err:
            raise AssertionError(f"case {name!r}: {err}") from None


@pytest.mark.parametrize("name,expected", [
    ("missing.ckpt", "does not exist"), ("empty.ckpt", "is empty"), ("truncated.ckpt", "truncated"),
    ("folder.ckpt", "is a folder"), ("plain.pt", "plain torch file"),
])
def test_every_checkpoint_option_reports_a_bad_file_by_option_and_name(bad, capsys, name, expected):
    path = str(bad / name)
    for command in ("test", "predict", "validate"):
        code, err = run_main(capsys, command, *BASE, f"--ckpt_path={path}", f"--trainer.default_root_dir={bad / 'x'}")
        one_error(code, err, "--ckpt_path", name, expected)
    code, err = run_main(capsys, "caption", str(bad / "tone.wav"), "--ckpt", path)
    one_error(code, err, "--ckpt", name, "does not exist" if name == "missing.ckpt" else "")
    if name != "plain.pt":  # a plain state dict is a valid source of weights for these two
        for option in ("stage1_checkpoint", "encoder_checkpoint"):
            code, err = run_main(capsys, "fit", *BASE, f"--model.{option}={path}",
                                 f"--trainer.default_root_dir={bad / 'y'}")
            one_error(code, err, f"model.{option}", name)


def test_fit_resumes_only_from_a_readable_checkpoint_and_last_needs_one_to_test(bad, capsys, tmp_path):
    code, err = run_main(capsys, "fit", *BASE, f"--ckpt_path={bad / 'truncated.ckpt'}",
                         f"--trainer.default_root_dir={tmp_path / 'a'}")
    one_error(code, err, "--ckpt_path", "truncated")
    code, err = run_main(capsys, "test", *BASE, "--ckpt_path=last", f"--trainer.default_root_dir={tmp_path / 'b'}")
    one_error(code, err, "--ckpt_path=last", "no checkpoint")
    code, err = run_main(capsys, "caption", str(bad / "tone.wav"), "--ckpt", str(bad / "audio_dir"))
    one_error(code, err, "--ckpt", "not a run folder")
    code, err = run_main(capsys, "fit", *BASE, f"--model.stage1_checkpoint={bad / 'plain.pt'}",
                         f"--trainer.default_root_dir={tmp_path / 'c'}")
    one_error(code, err, "model.stage1_checkpoint", "holds no weights")


@pytest.mark.parametrize("flag,key", [
    ("--data.batch_size=-1", "data.batch_size"), ("--data.eval_batch_size=0", "data.eval_batch_size"),
    ("--data.num_workers=-1", "data.num_workers"), ("--data.clip_seconds=0", "data.clip_seconds"),
    ("--data.clip_seconds=-2", "data.clip_seconds"), ("--data.limit=0", "data.limit"),
    ("--model.optimizer.lr=-0.001", "model.optimizer.lr"), ("--model.optimizer.lr=0", "model.optimizer.lr"),
    ("--model.generation.num_beams=0", "model.generation.num_beams"),
    ("--model.generation.top_p=1.5", "model.generation.top_p"),
    ("--model.stage1.temperature=0", "model.stage1.temperature"),
    ("--model.optimizer.warmup_steps=-5", "model.optimizer.warmup_steps"),
    ("--model.encoder.clap.clip_seconds=0", "model.encoder.clap.clip_seconds"),
    ("--model.optimizer.lr_scale={'projectoin': 2.0}", "model.optimizer.lr_scale.projectoin"),
    ("--model.precision.frozen=fp8", "model.precision.frozen"),
    ("--data.task=captioning", "data.task"),
])
def test_impossible_values_are_refused_before_anything_is_built(capsys, tmp_path, flag, key):
    code, err = run_main(capsys, "fit", *BASE, flag, f"--trainer.default_root_dir={tmp_path}")
    one_error(code, err, key)


def test_a_cross_attention_rate_on_a_bridge_without_cross_attention_is_refused(capsys, tmp_path):
    code, err = run_main(capsys, "fit", *BASE, "--model.bridge.name=linear_pool",
                         "--model.optimizer.lr_scale={'cross_attention': 10.0}", f"--trainer.default_root_dir={tmp_path}")
    one_error(code, err, "model.optimizer.lr_scale.cross_attention", "linear_pool", "qformer")


def test_an_llm_rate_on_a_frozen_llm_is_refused(capsys, tmp_path):
    code, err = run_main(capsys, "fit", *BASE, "--model.optimizer.lr_scale={'llm': 0.1}",
                         f"--trainer.default_root_dir={tmp_path}")
    one_error(code, err, "model.optimizer.lr_scale.llm", "model.llm.mode")


def test_every_problem_of_a_config_is_reported_at_once(capsys, tmp_path):
    code, err = run_main(capsys, "fit", *BASE, "--data.batch_size=0", "--model.optimizer.lr=-1",
                         "--model.generation.num_beams=0", "--model.bridge.name=qformr",
                         f"--trainer.default_root_dir={tmp_path}")
    assert code == 2 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 4
    for key in ("data.batch_size", "model.optimizer.lr", "model.generation.num_beams", "model.bridge.name"):
        assert any(key in ln for ln in lines), (key, lines)


def test_an_unreachable_hub_id_is_one_line_naming_the_key_and_the_id(capsys, tmp_path):
    code, err = run_main(capsys, "fit", *BASE, "--model.llm.seq2seq.pretrained=google/flan-t5-xl",
                         f"--trainer.default_root_dir={tmp_path}")
    one_error(code, err, "model.llm.seq2seq.pretrained", "google/flan-t5-xl", "network")


@pytest.mark.parametrize("row,needles", [
    ({"audio": 12, "caption": "x"}, ("'audio'", "a number")),
    ({"audio": "a.wav", "caption": "x", "start": "0.5"}, ("'start'",)),
    ({"audio": "a.wav", "caption": "x", "end": "ten"}, ("'end'",)),
    ({"audio": "a.wav", "caption": "x", "tags": "piano, slow"}, ("'tags'", "not a list")),
    ({"audio": "a.wav", "caption": "x", "tags": ["piano", 3]}, ("tag 2",)),
    ({"audio": "a.wav", "caption": "x", "labels": "piano"}, ("'labels'",)),
    ({"audio": "a.wav", "caption": "x", "labels": {"instrument": {"a": 1}}}, ("label 'instrument'",)),
    ({"audio": "a.wav", "captions": {"en": "x"}}, ("'captions'", "not a list")),
    ({"audio": "a.wav", "captions": "one caption"}, ("'captions'", "use 'caption'")),
    ({"audio": "a.wav", "caption": "x", "start": 2.0, "end": 1.0}, ("'end'", "after 'start'")),
    ({"audio": "a.wav", "caption": "x", "id": {"k": 1}}, ("'id'",)),
])
def test_manifest_fields_of_the_wrong_type_are_errors_naming_file_and_line(capsys, tmp_path, row, needles):
    manifest = tmp_path / "m.jsonl"
    good = {"audio": "b.wav", "caption": "fine"}
    manifest.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    code, err = run_main(capsys, "fit", *BASE, f"--data.manifest={manifest}", f"--trainer.default_root_dir={tmp_path / 'r'}")
    one_error(code, err, f"{manifest}:2", *needles)


def test_a_folder_as_audio_and_bad_caption_seconds(bad, capsys):
    code, err = run_main(capsys, "caption", str(bad / "audio_dir"), "--ckpt", str(bad / "run"))
    one_error(code, err, "audio_dir", "folder")
    for seconds in ("0", "-1"):
        code, err = run_main(capsys, "caption", str(bad / "tone.wav"), "--ckpt", str(bad / "run"), "--seconds", seconds)
        one_error(code, err, "--seconds")
    code, err = run_main(capsys, "caption", str(bad / "tone.wav"), "--ckpt", str(bad / "run"), "--seconds", "0.00001")
    one_error(code, err, "tone.wav", "no samples")


def test_unwritable_outputs_name_the_path_and_leave_nothing_half_written(bad, capsys, tmp_path):
    under_file = bad / "file" / "x"
    code, err = run_main(capsys, "results", str(bad / "run"), "--out", str(under_file / "t.md"))
    assert code == 2  # the run folder has no test yet: the first problem is reported
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": "a.wav", "tags": ["piano"]}) + "\n")
    code, err = run_main(capsys, "captions", "from-tags", str(manifest), str(under_file / "o.jsonl"), "--method",
                         "tag_concat")
    one_error(code, err, str(under_file), "is a file")
    code, err = run_main(capsys, "data", "convert", "musiccaps", str(manifest), str(under_file / "m.jsonl"))
    one_error(code, err, "output", "is a file")
    code, err = run_main(capsys, "sweep", os.path.join(ROOT, "experiments", "sweeps", "demo.yaml"), "--results",
                         str(under_file))
    one_error(code, err, "--results", "is a file")
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


def test_a_training_run_whose_every_clip_was_skipped_stops_with_one_line(capsys, tmp_path):
    manifest = tmp_path / "gone.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"{s}{i}", "audio": f"missing{i}.wav", "caption": "x", "split": s})
                                + "\n" for i, s in enumerate(["train"] * 4 + ["val"] * 2 + ["test"] * 2)))
    code, err = run_main(capsys, "fit", *BASE, f"--data.manifest={manifest}", "--data.skip_bad_audio=true",
                         f"--trainer.default_root_dir={tmp_path / 'r'}", "--trainer.max_steps=3")
    one_error(code, err, "every training clip", "skipped")
    rows = [json.loads(x) for x in open(tmp_path / "r" / "skipped_audio.jsonl")]
    by_stage = {stage: sorted(r["id"] for r in rows if r["stage"] == stage) for stage in ("train", "validate")}
    assert by_stage["train"] == ["train0", "train1", "train2", "train3"]  # training skips are named as such
    assert all(i.startswith("val") for i in by_stage["validate"])


def test_a_config_saved_by_another_run_never_writes_into_that_runs_checkpoints(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    common = ["--trainer.max_steps=1", "--trainer.limit_val_batches=0"]
    assert main(["fit", *BASE, f"--trainer.default_root_dir={first}", *common]) == 0
    kept = (first / "checkpoints" / "last.ckpt").read_bytes()
    saved = next(first.glob("logs/*-fit/config.yaml"))
    assert str(first / "checkpoints") in saved.read_text()  # the trap: the saved config names the folder
    capsys.readouterr()
    assert main(["fit", "--config", str(saved), f"--trainer.default_root_dir={second}", *common,
                 "--seed_everything=1"]) == 0
    assert "this run's checkpoints go to" in capsys.readouterr().err
    assert (second / "checkpoints" / "last.ckpt").is_file()
    assert (first / "checkpoints" / "last.ckpt").read_bytes() == kept


def test_fit_then_test_then_a_resumed_longer_fit_keep_every_row_and_each_config(tmp_path):
    from bridgebench.engine.run_folder import fit_history, invocations, read_history

    run = tmp_path / "run"
    common = [*BASE, f"--trainer.default_root_dir={run}", "--trainer.log_every_n_steps=1",
              "--trainer.limit_val_batches=0"]
    assert main(["fit", *common, "--trainer.max_steps=2"]) == 0
    assert main(["test", *common, "--ckpt_path=last"]) == 0
    first_test = (run / "metrics.json").read_text()
    assert main(["fit", *common, "--trainer.max_steps=4", "--ckpt_path=last"]) == 0
    assert main(["fit", *common, "--trainer.max_steps=4"]) == 2  # a fresh fit never replaces a fitted run
    assert [p.name for p in invocations(run)] == ["01-fit", "02-test", "03-fit"]  # the refused one made nothing
    steps = [int(r["step"]) for r in fit_history(run) if r.get("train/loss")]
    assert steps == [0, 1, 2, 3]  # the first fit's rows and the resumed fit's, in order
    configs = {p.name: (p / "config.yaml").read_text() for p in invocations(run)[:3]}
    assert "max_steps: 2" in configs["01-fit"] and "max_steps: 4" in configs["03-fit"]
    assert "ckpt_path: null" in configs["01-fit"] and "last.ckpt" in configs["02-test"]
    assert (run / "logs" / "02-test" / "metrics.json").read_text() == first_test  # its own copy stays
    events = [(r["folder"], r["event"]) for r in read_history(run)]
    assert events == [("logs/01-fit", "started"), ("logs/01-fit", "ok"), ("logs/02-test", "started"),
                      ("logs/02-test", "ok"), ("logs/03-fit", "started"), ("logs/03-fit", "ok")]
