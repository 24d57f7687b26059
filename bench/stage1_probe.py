"""What a stage-1 run leaves in the Q-Former's query outputs, before any stage-2 training.

For issue [3/7]'s question (why the BLAP recipe's stage 1 left the stage-2 Q-Former behind the
same Q-Former straight from MiniLM), this builds the stage-2 bridge of a preset four ways, all on
the same frozen encoder: MiniLM init, the stage-1 run, the stage-1 weights with MiniLM's query
tokens, and MiniLM's weights with the stage-1 query tokens. For each it reads the query outputs of
every train and test clip (eval mode, no gradient) and reports

- ``query_cos``: mean cosine between the 16 queries of a clip (1.0 = every soft-prompt token alike);
- ``centered_query_cos``: the same after stage 2's standardisation (each coordinate centred and
  scaled over the training clips), i.e. on the clip-dependent part that reaches the projection;
- ``pcs_90`` / ``pcs_99``: principal directions that carry 90% / 99% of that standardised output;
- ``probe_<label>``: test accuracy of a linear probe (multinomial logistic regression, L2) trained on
  the train clips' flattened outputs: whether the information is there at all.

With ``--layers``, it says where the queries merge instead: for MiniLM init and for each stage-1 run
given, layer by layer on the test clips, the queries' mean cosine after each layer, and for each
cross-attention layer the entropy of its attention over the audio frames as a fraction of the
uniform one (1.0 = every query averages all frames alike) and how alike the queries' cross-attention
updates are.

With ``--soft-prompt RUN ...`` it reads trained stage-2 runs instead: the mean cosine between the
soft-prompt tokens of each of the first 64 test clips, raw and with each token's mean over the clips
taken out (what stage 2 made of the queries).

Run:  python bench/stage1_probe.py --encoder-checkpoint runs/sweeps/_needs/demo_encoder/checkpoints/last.ckpt \\
          --stage1-checkpoint runs/sweeps/_needs/demo_stage1/checkpoints/last.ckpt [--out probe.json]
      python bench/stage1_probe.py --layers --encoder-checkpoint ... --stage1-checkpoint A.ckpt [B.ckpt ...]
      python bench/stage1_probe.py --soft-prompt runs/diag/qformer_b16 [more run folders]
Assumes a manifest with ``labels`` (music-synth) and a Q-Former or Bridge-Net preset.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

import torch

LABELS = ("instrument", "genre", "tempo_class")


def mean_cos(v: torch.Tensor) -> float:
    """Mean cosine between the distinct query pairs of each clip; ``v``: [clips, queries, width]."""
    cos = torch.nn.functional.cosine_similarity(v[:, :, None].double(), v[:, None].double(), dim=-1)
    return float(cos[:, ~torch.eye(v.shape[1], dtype=torch.bool)].mean())


def attention_entropy(probs: torch.Tensor, mask: Optional[torch.Tensor]) -> float:
    """Mean entropy of attention rows ``probs`` [B, heads, queries, keys] as a fraction of the entropy
    of uniform attention over the keys each row may see (``mask`` [B, 1, keys], True = visible)."""
    visible = (mask.sum(-1).double() if mask is not None else torch.full(probs.shape[:1], probs.shape[-1]))
    entropy = -(probs.double() * probs.double().clamp_min(1e-12).log()).sum(-1)  # [B, heads, queries]
    return float((entropy / visible.clamp_min(2).log().view(-1, 1, 1)).mean())


def layer_stats(bridge, features: torch.Tensor, mask: torch.Tensor, text: Optional[dict] = None) -> dict:
    """Per layer of the bridge's Q-Former on one batch: query cosine after the layer; per
    cross-attention layer, the attention entropy over the frames and the cosine between the queries'
    updates (what the attention adds, before the residual and LayerNorm)."""
    rows, hooks, nq = {}, [], bridge.num_queries
    for i, layer in enumerate(bridge.qformer.encoder.layer):
        hooks.append(layer.register_forward_hook(
            lambda mod, inp, out, i=i: rows.__setitem__(f"layer {i}: query cos", round(mean_cos(out[:, :nq]), 4))))
        if layer.crossattention is None:
            continue

        def cross(mod, inp, out, i=i):
            probs, update = mod.explicit(*inp)
            m = inp[2]
            rows[f"layer {i}: cross-attention entropy"] = round(attention_entropy(probs, m), 4)
            rows[f"layer {i}: cross-attention update cos"] = round(mean_cos(update), 4)

        hooks.append(layer.crossattention.register_forward_hook(cross))
    try:
        with torch.no_grad():
            bridge.query_outputs(features, mask, text)
    finally:
        for h in hooks:
            h.remove()
    return dict(sorted(rows.items(), key=lambda kv: int(kv[0].split(":")[0].split()[1])))


def query_stats(train: torch.Tensor) -> dict:
    """Similarity of the queries and spread of the standardised outputs; ``train``: [clips, queries, width]."""
    x = train.double()
    flat = x.reshape(len(x), -1)
    z = (flat - flat.mean(0)) / (flat.std(0) + 1e-6)
    energy = torch.linalg.svdvals(z) ** 2
    share = energy.cumsum(0) / energy.sum()
    return {"query_cos": round(mean_cos(x), 4), "centered_query_cos": round(mean_cos(z.view_as(x)), 4),
            "pcs_90": int((share < 0.90).sum()) + 1, "pcs_99": int((share < 0.99).sum()) + 1}


def probe_accuracy(x_train: torch.Tensor, y_train: list, x_test: torch.Tensor, y_test: list,
                   l2: float = 1e-2, steps: int = 200) -> float:
    """Test accuracy (%) of a multinomial logistic regression on standardised features (L-BFGS)."""
    classes = sorted(set(y_train))
    index = {c: i for i, c in enumerate(classes)}
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    xtr, xte = (x_train - mean) / std, (x_test - mean) / std
    ytr = torch.tensor([index[c] for c in y_train])
    weight = torch.zeros(xtr.shape[1], len(classes), requires_grad=True)
    bias = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xtr @ weight + bias, ytr) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (xte @ weight + bias).argmax(1)
    return round(100.0 * sum(classes[p] == y for p, y in zip(pred.tolist(), y_test)) / len(y_test), 1)


def build(config: str, encoder_ckpt: str, stage1_ckpt: Optional[str]):
    """The stage-2 module of ``config`` (eval mode) from these checkpoints, and its datamodule, set up."""
    from bridgebench.engine.lightning_cli import run

    cli = run(["--config", config, f"--model.encoder_checkpoint={encoder_ckpt}",
               f"--model.stage1_checkpoint={stage1_ckpt or 'null'}", "--trainer.default_root_dir=runs/probe",
               "--data.features=audio", "--data.eval_batch_size=64"], run=False)
    module, data = cli.model, cli.datamodule
    data.connect(module.data_contract())
    data.setup("fit")
    data.setup("test")
    return module.eval(), data


def query_outputs(config: str, encoder_ckpt: str, stage1_ckpt: Optional[str],
                  queries: Optional[torch.Tensor] = None) -> tuple[dict, torch.Tensor]:
    """{role: (outputs [clips, queries, width], labels)} for train and test, and the query tokens used."""
    module, data = build(config, encoder_ckpt, stage1_ckpt)
    bridge = module.bridge
    if queries is not None:
        bridge.qformer.query_tokens.data.copy_(queries)
    out = {}
    for role, loader in (("train", data._loader("train", shuffle=False)), ("test", data.test_dataloader())):
        hidden, labels = [], {k: [] for k in LABELS}
        with torch.no_grad():
            for batch in loader:
                feats, mask = module.encode(batch)
                hidden.append(bridge.query_outputs(feats.float(), mask, batch["text"]).float())
                for k in LABELS:
                    labels[k] += [clip[k] for clip in batch["labels"]]
        out[role] = (torch.cat(hidden), labels)
    return out, bridge.qformer.query_tokens.detach().clone()


def soft_prompt_cos(run: str, clips: int = 64) -> dict:
    """Token similarity of a trained run's soft prompt on its data's first test clips."""
    from pathlib import Path

    from bridgebench.datamodules import AudioTextDataModule
    from bridgebench.engine.runs import load_run, run_data

    module, _ = load_run(run)
    settings = run_data(Path(run))  # the data the run was fitted on
    data = AudioTextDataModule(**{**settings, "eval_batch_size": clips, "features": "audio", "num_workers": 0})
    data.connect(module.data_contract())
    data.setup("test")
    with torch.no_grad():
        soft, _ = module.soft_prompt(next(iter(data.test_dataloader())))
    soft = soft.float()
    return {"tokens": soft.shape[1], "token_cos": round(mean_cos(soft), 4),
            "centered_token_cos": round(mean_cos(soft - soft.mean(0, keepdim=True)), 4)}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/demo_qformer.yaml", help="stage-2 preset of the bridge")
    parser.add_argument("--soft-prompt", nargs="+", metavar="RUN",
                        help="instead: soft-prompt token similarity of these trained stage-2 run folders")
    parser.add_argument("--encoder-checkpoint")
    parser.add_argument("--stage1-checkpoint", nargs="+",
                        help="a stage-1 run's checkpoint (with --layers: one or more)")
    parser.add_argument("--layers", action="store_true",
                        help="per-layer query cosine and cross-attention entropy (first 64 test clips) instead")
    parser.add_argument("--out", help="also write the rows to this JSON file")
    opts = parser.parse_args(argv)
    torch.manual_seed(0)
    if opts.soft_prompt:
        rows = {run: soft_prompt_cos(run) for run in opts.soft_prompt}
        for run, row in rows.items():
            print(f"{run}: {json.dumps(row)}", flush=True)
    elif not (opts.encoder_checkpoint and opts.stage1_checkpoint):
        parser.error("--encoder-checkpoint and --stage1-checkpoint are required (unless --soft-prompt)")
    elif opts.layers:
        rows = {}
        for name in ["minilm", *opts.stage1_checkpoint]:
            module, data = build(opts.config, opts.encoder_checkpoint, None if name == "minilm" else name)
            batch = next(iter(data.test_dataloader()))
            with torch.no_grad():
                feats, mask = module.encode(batch)
            rows[name] = layer_stats(module.bridge, feats.float(), mask, batch["text"])
        print("| | " + " | ".join(rows) + " |\n|" + " --- |" * (len(rows) + 1))
        for key in rows["minilm"]:
            print(f"| {key} | " + " | ".join(f"{r[key]:.4f}" for r in rows.values()) + " |")
    elif len(opts.stage1_checkpoint) > 1:
        parser.error("--stage1-checkpoint: one checkpoint, unless --layers")
    else:
        rows = probe_rows(opts.config, opts.encoder_checkpoint, opts.stage1_checkpoint[0])
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


def probe_rows(config: str, encoder_ckpt: str, stage1_ckpt: str) -> dict:
    """The four variants' query statistics and linear probes."""
    variants = (("minilm", None, None), ("stage1", stage1_ckpt, None),
                ("stage1 weights + minilm queries", stage1_ckpt, "minilm"),
                ("minilm weights + stage1 queries", None, "stage1"))
    kept, rows = {}, {}
    for name, stage1, queries_of in variants:
        outputs, kept[name] = query_outputs(config, encoder_ckpt, stage1, kept.get(queries_of))
        (xtr, ytr), (xte, yte) = outputs["train"], outputs["test"]
        row = query_stats(xtr)
        for k in LABELS:
            row[f"probe_{k}"] = probe_accuracy(xtr.flatten(1), ytr[k], xte.flatten(1), yte[k])
        rows[name] = row
        print(f"{name}: {json.dumps(row)}", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
