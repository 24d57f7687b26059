"""README, "How to add a bridge", taken literally: a new bridge class, one options field in the
bridge spec and one registry row, nothing else; the new kind then validates, builds, trains and is
checkpointed like the shipped ones."""

from __future__ import annotations

import dataclasses

import lightning as L
import torch
from conftest import tiny_specs
from torch import nn

from bridgebench.bridges.base import Bridge
from bridgebench.datamodules import AudioTextDataModule
from bridgebench.engine import registry, validate
from bridgebench.engine.module import BridgeModule
from bridgebench.specs import BridgeSpec, at_least


# Step 1: the class (here a mean-pooled MLP to a fixed number of soft-prompt vectors).
class MeanMLPBridge(Bridge):
    def __init__(self, in_dim: int, out_dim: int, tokens: int = 2, hidden: int = 16):
        super().__init__()
        self.tokens = tokens
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU())
        self.proj = nn.Linear(hidden, out_dim * tokens)

    def forward(self, features, feature_mask, text=None):
        m = feature_mask.unsqueeze(-1).to(features.dtype)
        pooled = (features * m).sum(1) / m.sum(1).clamp_min(1)
        out = self.proj(self.body(pooled)).view(features.shape[0], self.tokens, -1)
        return out, torch.ones(out.shape[:2], dtype=torch.bool, device=out.device)

    def output_layer(self) -> nn.Linear:
        return self.proj


def check_options(opts, key: str) -> list[str]:
    return []


# Step 2: its options and one field for them in the bridge spec.
@dataclasses.dataclass
class MeanMLPOptions:
    tokens: int = at_least(1, 2)
    hidden: int = at_least(1, 16)


ToyBridgeSpec = dataclasses.make_dataclass(
    "ToyBridgeSpec", [("mean_mlp", MeanMLPOptions, dataclasses.field(default_factory=MeanMLPOptions))],
    bases=(BridgeSpec,))


def test_a_new_bridge_kind_needs_its_class_one_spec_field_and_one_registry_row(monkeypatch, tmp_path):
    # Step 3: one registry row.
    monkeypatch.setitem(registry.BRIDGES, "mean_mlp", registry.Kind(MeanMLPBridge, check_options))
    specs = tiny_specs(encoder="mert", llm="causal")
    specs["bridge"] = ToyBridgeSpec(name="mean_mlp")
    # Its declared ranges are checked by the one validation pass, like every other kind's.
    bad = ToyBridgeSpec(name="mean_mlp", mean_mlp=MeanMLPOptions(tokens=0))
    assert validate.problems({**specs, "bridge": bad}) == ["model.bridge.mean_mlp.tokens: 0; it must be >= 1"]
    module = BridgeModule(**specs)
    assert isinstance(module.bridge, MeanMLPBridge)
    dm = AudioTextDataModule(manifest="builtin:tones", batch_size=4, num_workers=0, clip_seconds=2.0)
    before = {k: v.clone() for k, v in module.bridge.state_dict().items()}
    trainer = L.Trainer(max_steps=3, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 3
    after = module.bridge.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # every part of it trained
    (path,) = (tmp_path / "checkpoints").glob("*.ckpt")
    ckpt = torch.load(path, weights_only=True)
    assert {k.split(".")[0] for k in ckpt["state_dict"]} == {"bridge"}  # trainable-only: exactly the new bridge
