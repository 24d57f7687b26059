"""``python -m bridgebench export``: a trained bridge as a self-contained folder (safetensors of the
weights no reference rebuilds, the resolved config, the frozen parts' references), read back by
``caption --ckpt`` and ``BridgeModule.from_pretrained``, and pushed to a hub repo through a stand-in
client that writes to a local folder (never the network)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from safetensors.torch import load_file

from bridgebench.__main__ import main
from bridgebench.engine.lightning_cli import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "tiny.yaml")


def _preset(name: str) -> str:
    return os.path.join(ROOT, "experiments", f"{name}.yaml")


def _tones(folder) -> list[str]:
    t = np.arange(32_000) / 16_000
    files = []
    for i, hz in enumerate((220.0, 440.0, 990.0)):
        path = folder / f"tone{i}.wav"
        sf.write(path, 0.3 * np.sin(2 * np.pi * hz * t) * (1 + i), 16_000)
        files.append(str(path))
    return files


def _captions(capsys, files: list[str], ckpt: str) -> list[str]:
    capsys.readouterr()
    assert main(["caption", *files, "--ckpt", ckpt]) == 0
    return capsys.readouterr().out.strip().splitlines()


def _one_error(code: int, err: str, *needles: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny stage-2 run of the MusiLingo preset (its bridge trained, its LLM frozen), decoding greedily."""
    run_dir = tmp_path_factory.mktemp("export") / "run"
    run(["fit", "--config", _preset("musilingo_stage2"), "--config", TINY, f"--trainer.default_root_dir={run_dir}",
         "--trainer.max_steps=3", "--model.generation.num_beams=1", "--model.generation.max_new_tokens=6"])
    return run_dir


def test_export_round_trip_gives_identical_captions_and_weights(trained, tmp_path, capsys):
    from bridgebench import BridgeModule
    from bridgebench.engine.runs import load_run

    out = tmp_path / "shared"
    capsys.readouterr()
    assert main(["export", str(trained), str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "from_pretrained" in printed
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "bridgebench.json", "config.yaml", "model.safetensors"]
    ckpt = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    weights = load_file(str(out / "model.safetensors"))
    # Exactly the trainable weights of the checkpoint (the frozen LLM and encoder are not copied).
    assert sorted(weights) == sorted(ckpt["state_dict"]) and weights
    assert all(torch.equal(weights[k], ckpt["state_dict"][k]) for k in weights)
    meta = json.loads((out / "bridgebench.json").read_text())
    assert meta["frozen"]["llm"]["pretrained"] == "tiny" and meta["frozen"]["encoder"]["pretrained"] == "tiny"
    assert meta["frozen"]["llm"]["identity"] and meta["weights"]["from_other_runs"] == []
    assert meta["hyper_parameters"]["generation"]["num_beams"] == 1
    config = yaml.safe_load((out / "config.yaml").read_text())  # the fit's resolved config
    assert config["trainer"]["max_steps"] == 3 and "${" not in (out / "config.yaml").read_text()
    assert "from_pretrained" in (out / "README.md").read_text()

    files = _tones(tmp_path)
    original = _captions(capsys, files, str(trained))
    assert _captions(capsys, files, str(out)) == original and len(original) == 3
    from_run, instruction = load_run(str(trained))
    exported = BridgeModule.from_pretrained(str(out))
    assert not exported.training and instruction == meta["instruction"]
    mine, theirs = exported.state_dict(), from_run.state_dict()
    assert sorted(mine) == sorted(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)  # frozen parts rebuilt identically too


def test_export_carries_an_encoder_an_earlier_run_trained(tmp_path, capsys):
    # The encoder of this bridge was trained by a tagging run and loaded from its checkpoint: the
    # export must hold it, since whoever loads the export has neither that file nor that run.
    tagging, bridge = tmp_path / "tagging", tmp_path / "bridge"
    common = ["--config", TINY, "--trainer.max_steps=2"]
    run(["fit", "--config", _preset("demo_encoder"), *common, f"--trainer.default_root_dir={tagging}"])
    run(["fit", "--config", _preset("demo_linear_pool"), *common, f"--trainer.default_root_dir={bridge}",
         f"--model.encoder_checkpoint={tagging}/checkpoints/last.ckpt", "--data.features=audio",
         "--model.generation.num_beams=1"])
    out = tmp_path / "out"
    assert main(["export", str(bridge), str(out)]) == 0
    # The tagging run itself exports too: its trained encoder and tag head, with the tag vocabulary.
    from bridgebench import BridgeModule
    from bridgebench.engine.runs import load_run

    tags_out = tmp_path / "tags_out"
    assert main(["export", str(tagging), str(tags_out)]) == 0
    tagger = BridgeModule.from_pretrained(str(tags_out))
    saved = torch.load(tagging / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert tagger.tagger is not None and tagger.tagger.vocabulary == saved["bridgebench"]["tag_vocabulary"]
    mine = tagger.state_dict()
    assert any(k.startswith("tagger.") for k in saved["state_dict"])
    assert all(torch.equal(mine[k], v) for k, v in saved["state_dict"].items())  # encoder and tag head
    theirs = load_run(str(tagging))[0].state_dict()  # a reload for captioning, which leaves the tag head out
    assert all(torch.equal(mine[k], v) for k, v in theirs.items())
    files = _tones(tmp_path)
    original = _captions(capsys, files, str(bridge))
    trained_encoder = {k: v for k, v in torch.load(tagging / "checkpoints" / "last.ckpt", weights_only=True)
                       ["state_dict"].items() if k.startswith("encoder.")}
    shutil.rmtree(tagging)  # gone, as on another machine
    meta = json.loads((out / "bridgebench.json").read_text())
    assert meta["hyper_parameters"]["encoder_checkpoint"] is None
    assert sorted(meta["weights"]["from_other_runs"]) == sorted(trained_encoder)
    assert _captions(capsys, files, str(out)) == original
    own = BridgeModule.from_pretrained(str(out)).state_dict()
    assert all(torch.equal(own[k], v) for k, v in trained_encoder.items())


class LocalHub:
    """Stands in for ``HfApi``: a repo is a folder under ``root``; records what was asked."""

    def __init__(self, root):
        self.root, self.calls = root, []

    def create_repo(self, repo_id, repo_type, private, exist_ok):
        self.calls.append(("create_repo", repo_id, repo_type, private, exist_ok))
        (self.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, repo_id, repo_type, folder_path, commit_message):
        self.calls.append(("upload_folder", repo_id, repo_type, commit_message))
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)

    def snapshot_download(self, repo_id, allow_patterns=None, **kw):
        folder = self.root / repo_id
        if not folder.is_dir():
            raise FileNotFoundError(f"Repository Not Found for url: https://huggingface.co/api/models/{repo_id}")
        return str(folder)


def test_push_to_hub_uploads_the_export_and_caption_loads_it_by_repo_id(trained, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    from bridgebench import BridgeModule
    from bridgebench.tools import export

    hub = LocalHub(tmp_path / "hub")
    monkeypatch.setattr(export, "hub_api", lambda: hub)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    out = tmp_path / "shared"
    capsys.readouterr()
    assert main(["export", str(trained), str(out), "--push-to-hub", "someone/tiny-bridge", "--private"]) == 0
    printed = capsys.readouterr().out
    assert "pushed to https://huggingface.co/someone/tiny-bridge" in printed
    assert [c[0] for c in hub.calls] == ["create_repo", "upload_folder"]
    assert hub.calls[0][1:] == ("someone/tiny-bridge", "model", True, True)
    assert sorted(p.name for p in (hub.root / "someone/tiny-bridge").iterdir()) == sorted(p.name for p in out.iterdir())
    files = _tones(tmp_path)
    assert _captions(capsys, files, "someone/tiny-bridge") == _captions(capsys, files, str(trained))
    module = BridgeModule.from_pretrained("someone/tiny-bridge")
    assert sorted(load_file(str(out / "model.safetensors"))) == sorted(module.trainable_state_keys())
    # A repo the hub does not have: one line.
    code = main(["caption", files[0], "--ckpt", "someone/missing"])
    _one_error(code, capsys.readouterr().err, "--ckpt: 'someone/missing'", "Repository Not Found")


def test_a_failed_upload_is_one_line_and_keeps_the_export(trained, tmp_path, capsys, monkeypatch):
    from bridgebench.tools import export

    class NoToken(LocalHub):
        def create_repo(self, **kw):
            raise RuntimeError("Invalid user token.\nmore detail")

    # huggingface_hub's own client, in offline mode (conftest): it refuses before any request is made.
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE
    capsys.readouterr()
    code = main(["export", str(trained), str(tmp_path / "offline"), "--push-to-hub", "someone/x"])
    _one_error(code, capsys.readouterr().err, "--push-to-hub someone/x: ", "offline mode", str(tmp_path / "offline"))
    monkeypatch.setattr(export, "hub_api", lambda: NoToken(tmp_path))
    code = main(["export", str(trained), str(tmp_path / "out"), "--push-to-hub", "someone/x"])
    _one_error(code, capsys.readouterr().err, "--push-to-hub someone/x: Invalid user token.", str(tmp_path / "out"))
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "offline" / "model.safetensors").is_file()


def test_export_bad_inputs_are_one_error_line(trained, tmp_path, capsys):
    def export(*argv):
        capsys.readouterr()
        return main(["export", *argv]), capsys.readouterr().err

    _one_error(*export(str(tmp_path / "nowhere"), str(tmp_path / "o1")), "RUN: '", "nowhere")
    (tmp_path / "empty_run").mkdir()
    _one_error(*export(str(tmp_path / "empty_run"), str(tmp_path / "o2")), "RUN: '", "empty_run")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    _one_error(*export(str(trained), str(full)), "OUT: '", "not an empty folder")
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    (tmp_path / "a_file").write_text("x")
    _one_error(*export(str(trained), str(tmp_path / "a_file" / "out")), "a_file")
    assert not list(tmp_path.glob("o1")) and not list(tmp_path.glob("o2"))
    # Loading: a folder that is not an export, and an export whose weights are damaged.
    code = main(["caption", *_tones(tmp_path)[:1], "--ckpt", str(full)])
    _one_error(code, capsys.readouterr().err, "--ckpt: '", "not a run folder", "nor an exported bridge")
    out = tmp_path / "damaged"
    assert export(str(trained), str(out))[0] == 0
    (out / "model.safetensors").write_bytes(b"\x00" * 16)
    from bridgebench import BridgeModule
    from bridgebench.errors import CheckpointError

    with pytest.raises(CheckpointError, match="cannot read .*model.safetensors"):
        BridgeModule.from_pretrained(str(out))
