"""The paper presets hold the values their papers (or, where it is public and differs, their code)
use: each check names its source, so a preset drifting from its paper fails here. Only the YAML is
read; ``test_presets.py`` builds and runs every preset."""

from __future__ import annotations

import os

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def preset(name: str) -> dict:
    # ${...} interpolations resolved as the CLI resolves them (omegaconf), so a tied value such as
    # eval_batch_size: ${data.batch_size} reaches a component as the number, not the text.
    from omegaconf import OmegaConf

    with open(os.path.join(ROOT, "experiments", f"{name}.yaml")) as f:
        return OmegaConf.to_container(OmegaConf.create(yaml.safe_load(f)), resolve=True)


def header(name: str) -> str:
    with open(os.path.join(ROOT, "experiments", f"{name}.yaml")) as f:
        return f.read().split("\n\n")[0]


def test_blap_uses_16_query_tokens():
    # blap.txt:63: "we use 16 query tokens each of dimension 768"
    for name in ("blap_stage1", "blap_stage2"):
        assert preset(name)["model"]["bridge"]["qformer"]["num_queries"] == 16, name


def test_blap_stage1_optimiser_is_the_codes_adam_without_weight_decay():
    # BLAP2_Pretrain.py:536-537: torch.optim.Adam(self.parameters(), lr=...): no decay, no schedule
    opt = preset("blap_stage1")["model"]["optimizer"]
    assert opt["weight_decay"] == 0.0 and opt["schedule"] == "constant" and opt["warmup_steps"] == 0
    assert opt["lr"] == 3.0e-5
    assert "Deviations" in header("blap_stage1") and "3e-4" in header("blap_stage1")


BLAP_FORBIDDEN = ["Upbeat", "upbeat", "Upbeat,", "upbeat,", "The low quality recording", "This is a low-quality"]


def test_blap_stage2_is_the_shutterstock_recipe_with_its_caption_augmentation():
    cfg = preset("blap_stage2")
    # blap.txt:81-83: batch 400 on 8 GPUs, lr 3e-4, 70k steps; BLAP2_Pretrain.py:905-906: Adam only
    assert cfg["trainer"]["max_steps"] == 70_000
    assert cfg["data"]["batch_size"] * cfg["trainer"]["devices"] == 400
    opt = cfg["model"]["optimizer"]
    assert (opt["lr"], opt["weight_decay"], opt["schedule"], opt["warmup_steps"]) == (3.0e-4, 0.0, "constant", 0)
    assert "shutterstock" in cfg["data"]["manifest"]
    # BLAP2_Pretrain.py:582,710: the six phrases in this order, p 0.6
    assert cfg["data"]["drop_phrases"] == BLAP_FORBIDDEN and cfg["data"]["drop_phrase_p"] == 0.6
    assert "MusicCaps" in header("blap_stage2") and "Deviations" in header("blap_stage2")


def test_blap_musiccaps_finetune_starts_from_stage2_for_500_steps_at_lr_3e6():
    cfg = preset("blap_musiccaps_finetune")  # blap.txt:85
    assert cfg["trainer"]["max_steps"] == 500
    assert cfg["data"]["batch_size"] * cfg["trainer"]["devices"] == 400
    assert cfg["model"]["optimizer"]["lr"] == 3.0e-6 and cfg["model"]["optimizer"]["weight_decay"] == 0.0
    assert cfg["model"]["stage1_checkpoint"] == "runs/blap_stage2/checkpoints/last.ckpt"
    assert "musiccaps" in cfg["data"]["manifest"] and cfg["data"]["splits"]["val"] == "test"
    assert cfg["data"]["drop_phrases"] == BLAP_FORBIDDEN
    stage2 = preset("blap_stage2")["model"]
    assert {k: cfg["model"][k] for k in ("encoder", "bridge", "llm")} == {k: stage2[k] for k in ("encoder", "bridge", "llm")}


def test_mint_follows_its_pretraining_details_and_lavis_instructblip():
    for name in ("mint_stage1", "mint_stage2"):
        opt = preset(name)["model"]["optimizer"]
        # mint.txt:106: "Adam ... a linear schedule with 2000 warmup steps and a base learning rate of 1e-4"
        assert (opt["schedule"], opt["warmup_steps"], opt["lr"], opt["weight_decay"]) == ("linear", 2000, 1.0e-4, 0.0)
    stage1 = preset("mint_stage1")
    assert "wavcaps" in header("mint_stage1").lower() and "audiocaps" not in stage1["data"]["manifest"]  # mint.txt:90
    assert stage1["model"]["evaluation"]["rerank_k"] == 0  # LAION's setting: embedding similarity only
    t5 = preset("mint_stage2")["model"]["llm"]["seq2seq"]
    assert t5["dense_act_fn"] == "gelu"  # blip2_t5_instruct.py:92-96
    assert t5["prompt_truncation"] == "left" and t5["max_prompt_tokens"] == 30  # :89-90; mint.txt:106
    assert preset("mint_stage2")["data"]["instructions"] == ["Generate audio caption:"]  # Table 1


def test_mint_table2_presets_rank_the_labels_the_converters_write_after_their_table1_prompt():
    from bridgebench.datamodules.convert import MINT_FORMATS, MINT_TABLE1

    for fmt in ("nsynth", "openmic", "fma", "gtzan"):
        cfg = preset(f"mint_table2_{fmt}")
        dataset, label = MINT_FORMATS[fmt]
        assert cfg["model"]["evaluation"]["classify"] == [{"label": label, "instruction": MINT_TABLE1[dataset]}]
        assert cfg["data"]["task"] == "qa" and cfg["data"]["instructions"] == [MINT_TABLE1[dataset]]
        stage2 = preset("mint_stage2")["model"]
        assert {k: cfg["model"][k] for k in ("encoder", "bridge", "llm")} == {k: stage2[k] for k in ("encoder", "bridge", "llm")}
        assert "--model.stage1_checkpoint=runs/mint_stage2/checkpoints/last.ckpt" in header(f"mint_table2_{fmt}")
    assert "zero-shot" in header("mint_table2_gtzan")


MUSILINGO_STAGE2 = {  # train_configs/musilingo_stage2_finetune_*.yaml: (micro-batches, accumulation)
    "musilingo_stage2": (6 * 5000, 16), "musilingo_stage2_mi_short": (6 * 2500, 16),
    "musilingo_stage2_mi_long": (6 * 3000, 16), "musilingo_stage2_mi_mixed": (6 * 5000, 16),
    "musilingo_stage2_musiccaps": (6 * 1000, 8),
}


def test_musilingo_presets_score_in_its_convention_and_stop_at_the_end_symbol():
    for name in ["musilingo_stage1", *MUSILINGO_STAGE2]:
        assert "musilingo" in preset(name)["model"]["evaluation"]["metric_modes"], name
    for name, (micro, accum) in MUSILINGO_STAGE2.items():
        cfg = preset(name)
        assert cfg["model"]["llm"]["causal"]["stop_strings"] == ["###"]  # qa.py:80-88
        assert cfg["trainer"]["accumulate_grad_batches"] == accum and cfg["data"]["batch_size"] == 2
        assert cfg["trainer"]["max_steps"] == micro // accum
        assert cfg["model"]["optimizer"]["warmup_steps"] == round(micro / 6 / accum + 1e-9)  # one "epoch"
        assert cfg["model"]["stage1_checkpoint"] == "runs/musilingo_stage1/checkpoints/last.ckpt"
    caps = preset("musilingo_stage2_musiccaps")["data"]
    assert caps["task"] == "caption" and caps["instructions"] == ["Please give a caption to the music."]
    assert [preset(f"musilingo_stage2_mi_{k}")["data"]["task"] for k in ("short", "long", "mixed")] == ["qa"] * 3


def test_musilingo_stage1_trains_on_caption_writing_only(tmp_path):
    # msd_dataset.py:150 and musilingo.txt:115: only caption_writing, even from a four-column manifest
    import json

    import numpy as np
    import soundfile as sf

    from bridgebench.datamodules import AudioTextDataModule
    from bridgebench.datamodules.contract import DataContract, TextProcessor
    from bridgebench.datamodules.convert import convert

    rows = []
    for k in range(4):
        sf.write(tmp_path / f"t{k}.wav", np.zeros(1600, dtype=np.float32), 16_000)
        rows.append({"track_id": f"t{k}", "path": f"t{k}.wav", "caption_writing": f"writing {k}",
                     "caption_summary": f"summary {k}", "caption_paraphrase": f"paraphrase {k}",
                     "caption_attribute_prediction": f"attributes {k}"})
    (tmp_path / "msd_train.json").write_text(json.dumps(rows))
    convert("lp-musiccaps", str(tmp_path / "msd_train.json"), str(tmp_path / "m.jsonl"))  # all four columns
    data = {k: v for k, v in preset("musilingo_stage1")["data"].items() if k not in ("manifest", "num_workers")}
    dm = AudioTextDataModule(manifest=str(tmp_path / "m.jsonl"), num_workers=0, **data)
    dm.connect(DataContract(16_000, None, TextProcessor(lambda instructions, targets=None: {})))
    train = dm.dataset("train")
    targets = {train[(i, epoch)]["target"] for i in range(4) for epoch in range(5)}
    assert targets == {f"writing {k}" for k in range(4)}


def test_every_paper_preset_header_lists_its_deviations():
    import glob

    names = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(ROOT, "experiments", "*.yaml"))
                   if os.path.basename(p).startswith(("blap_", "mint_", "musilingo_")))
    assert len(names) == 15
    for name in names:
        lines = header(name).splitlines()
        start = lines.index("# Deviations from paper/code:")  # ValueError: the preset names none
        assert lines[start + 1].startswith("#  - "), name
