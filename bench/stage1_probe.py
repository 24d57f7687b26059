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

Run:  python bench/stage1_probe.py --encoder-checkpoint runs/sweeps/_needs/demo_encoder/checkpoints/last.ckpt \\
          --stage1-checkpoint runs/sweeps/_needs/demo_stage1/seed0/checkpoints/last.ckpt [--out probe.json]
Assumes a manifest with ``labels`` (music-synth) and a Q-Former or Bridge-Net preset.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

import torch

LABELS = ("instrument", "genre", "tempo_class")


def query_stats(train: torch.Tensor) -> dict:
    """Similarity of the queries and spread of the standardised outputs; ``train``: [clips, queries, width]."""
    x = train.double()
    pair = ~torch.eye(x.shape[1], dtype=torch.bool)  # distinct query pairs only

    def mean_cos(v: torch.Tensor) -> float:
        cos = torch.nn.functional.cosine_similarity(v[:, :, None], v[:, None], dim=-1)
        return float(cos[:, pair].mean())

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


def query_outputs(config: str, encoder_ckpt: str, stage1_ckpt: Optional[str],
                  queries: Optional[torch.Tensor] = None) -> tuple[dict, torch.Tensor]:
    """{role: (outputs [clips, queries, width], labels)} for train and test, and the query tokens used."""
    from bridgebench.engine.lightning_cli import run

    cli = run(["--config", config, f"--model.encoder_checkpoint={encoder_ckpt}",
               f"--model.stage1_checkpoint={stage1_ckpt or 'null'}", "--trainer.default_root_dir=runs/probe",
               "--data.features=audio", "--data.eval_batch_size=64"], run=False)
    module, data = cli.model, cli.datamodule
    data.connect(module.data_contract())
    data.setup("fit")
    data.setup("test")
    module.eval()
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


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/demo_qformer.yaml", help="stage-2 preset of the bridge")
    parser.add_argument("--encoder-checkpoint", required=True)
    parser.add_argument("--stage1-checkpoint", required=True)
    parser.add_argument("--out", help="also write the rows to this JSON file")
    opts = parser.parse_args(argv)
    torch.manual_seed(0)
    variants = (("minilm", None, None), ("stage1", opts.stage1_checkpoint, None),
                ("stage1 weights + minilm queries", opts.stage1_checkpoint, "minilm"),
                ("minilm weights + stage1 queries", None, "stage1"))
    kept, rows = {}, {}
    for name, stage1, queries_of in variants:
        outputs, kept[name] = query_outputs(opts.config, opts.encoder_checkpoint, stage1, kept.get(queries_of))
        (xtr, ytr), (xte, yte) = outputs["train"], outputs["test"]
        row = query_stats(xtr)
        for k in LABELS:
            row[f"probe_{k}"] = probe_accuracy(xtr.flatten(1), ytr[k], xte.flatten(1), yte[k])
        rows[name] = row
        print(f"{name}: {json.dumps(row)}", flush=True)
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
