"""Crash safety: a run SIGKILLed mid-epoch resumes with --ckpt_path=last to the same weights, bitwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fit(run_dir, overlay, *extra):
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tests") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "bridgebench", "fit", "--config", "experiments/blap_stage2.yaml",
           "--config", "experiments/tiny.yaml", "--config", str(overlay), f"--trainer.default_root_dir={run_dir}",
           *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _overlay(path, kill_at=None, signal_name="SIGKILL"):
    callbacks = [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"save_last": True, "save_top_k": 0, "every_n_train_steps": 1,
                                "enable_version_counter": False}}]
    if kill_at is not None:
        callbacks.insert(0, {"class_path": "kill_callback.KillAtStep",
                             "init_args": {"step": kill_at, "signal_name": signal_name}})
    path.write_text(yaml.safe_dump({"trainer": {"max_steps": 20, "callbacks": callbacks, "limit_val_batches": 0,
                                                "num_sanity_val_steps": 0, "enable_progress_bar": False}}))
    return path


def _last_losses(run_dir):
    from bridgebench.engine.run_folder import fit_history

    rows = fit_history(run_dir)  # every fit command's rows, in order (a resumed fit's after the first's)
    return {int(r["step"]): r["train/loss"] for r in rows if r.get("train/loss")}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted 20-step run both signals are compared with (fitted once)."""
    root = tmp_path_factory.mktemp("straight")
    done = _fit(root / "run", _overlay(root / "plain.yaml"))
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "run"


@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, signal_name, straight):
    killed = tmp_path / "killed"
    died = _fit(killed, _overlay(tmp_path / "kill.yaml", kill_at=7, signal_name=signal_name))
    assert died.returncode == (-9 if signal_name == "SIGKILL" else 143)  # mid-epoch (an epoch is 13 steps)
    if signal_name == "SIGTERM":
        assert "stopped by SIGTERM" in died.stderr and "--ckpt_path=last" in died.stderr
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] <= 7
    resumed = _fit(killed, _overlay(tmp_path / "plain.yaml"), "--ckpt_path=last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 20
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key  # bitwise
    straight_losses, resumed_losses = _last_losses(straight), _last_losses(killed)
    assert straight_losses[19] == resumed_losses[19]
