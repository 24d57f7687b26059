"""Watching a run: TensorBoard beside the CSV in each command's folder, and a logger chosen by config."""

from __future__ import annotations

import csv
import json
import os

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bridgebench.engine.lightning_cli import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = os.path.join(ROOT, "experiments", "blap_stage2.yaml")
TINY = os.path.join(ROOT, "experiments", "tiny.yaml")


def _events(folder) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_fit_writes_the_training_curve_hparams_and_components_to_tensorboard_beside_the_csv(tmp_path):
    run(["fit", "--config", PRESET, "--config", TINY, f"--trainer.default_root_dir={tmp_path}",
         "--trainer.max_steps=4"])
    folder = tmp_path / "logs" / "01-fit"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    events = _events(folder)
    curve = [(e.step, e.value) for e in events.Scalars("train/loss")]
    with open(folder / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    # The same curve the CSV holds: one point per step of the 4 (log_every_n_steps is 1 in tiny.yaml).
    assert [s for s, _ in curve] == [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert [round(v, 5) for _, v in curve] == [round(float(r["train/loss"]), 5) for r in rows]
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    start = HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["bridge/name"].string_value == "qformer" and hparams["optimizer/lr"].number_value > 0
    texts = {tag.split("/")[0]: events.Tensors(tag)[0].tensor_proto.string_val[0].decode()
             for tag in events.Tags()["tensors"]}
    assert "bridge   qformer      trained" in texts["components"] and "llm      seq2seq      frozen" in texts["components"]
    config = (folder / "config.yaml").read_text()
    assert [ln[4:] for ln in texts["config"].splitlines()] == config.splitlines()  # data settings included
    assert "${" not in config and "clip_seconds: 2.0" in config


def test_loggers_chosen_by_config_log_beside_the_csv_into_the_commands_folder(tmp_path):
    # As W&B offline beside TensorBoard would be configured: a list; W&B's save_dir default is "." too.
    chosen = tmp_path / "loggers.yaml"
    chosen.write_text("trainer:\n  logger:\n"
                      "    - {class_path: TensorBoardLogger, init_args: {save_dir: '${trainer.default_root_dir}'}}\n"
                      "    - class_path: recording_logger.RecordingLogger\n")
    run(["fit", "--config", PRESET, "--config", TINY, "--config", str(chosen),
         f"--trainer.default_root_dir={tmp_path}", "--trainer.max_steps=2"])
    folder = tmp_path / "logs" / "01-fit"
    assert (folder / "metrics.csv").is_file()  # the run folder's own record stays
    assert [(e.step) for e in _events(folder).Scalars("train/loss")] == [0, 1]
    rows = [json.loads(line) for line in (folder / "recorded.jsonl").read_text().splitlines()]
    assert "bridge" in next(r["hparams"] for r in rows if "hparams" in r)
    assert [r["step"] for r in rows if "train/loss" in r.get("metrics", {})] == [0, 1]
    assert not os.path.exists("recorded.jsonl") and not list(tmp_path.glob("lightning_logs"))
    run(["fit", "--config", PRESET, "--config", TINY, f"--trainer.default_root_dir={tmp_path / 'only'}",
         "--trainer.max_steps=1", "--trainer.logger=recording_logger.RecordingLogger"])
    folder = tmp_path / "only" / "logs" / "01-fit"
    assert (folder / "metrics.csv").is_file() and (folder / "recorded.jsonl").is_file()
    assert not list(folder.glob("events.out.tfevents.*"))  # a configured list replaces TensorBoard
