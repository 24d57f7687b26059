"""Cold ``torch.compile`` time of a training step: ``model.speed.compile: stacks`` vs ``regional``.

The model is blap_stage2's recipe with the tiny override (experiments/tiny.yaml: tiny CLAP, tiny
BERT Q-Former, tiny-width Flan-T5) and a T5 of N encoder + N decoder blocks, stage 2 on cached
features (the frozen encoder is not compiled). Each (mode, depth) runs in a fresh subprocess with
an empty inductor cache directory, so nothing compiled before is reused: the compile time is the
first compiled step (forward + backward) minus an eager step of the same model and batch.

    python bench/compile_time.py                         # 2+2 and 8+8 blocks, CPU -> bench/compile_time-cpu.json
    python bench/compile_time.py --depths 2 8 24 --device cuda --out bench/compile_time-h200.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def model_section(t5_folder: str) -> dict:
    """blap_stage2's model section under the tiny override, with the T5 at ``t5_folder``."""
    import yaml

    def merge(base: dict, over: dict) -> dict:
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        return out

    blap = yaml.safe_load(open(ROOT / "experiments" / "blap_stage2.yaml"))["model"]
    tiny = yaml.safe_load(open(ROOT / "experiments" / "tiny.yaml"))["model"]
    model = merge(blap, tiny)
    model["llm"]["seq2seq"]["pretrained"] = t5_folder
    return model


def write_t5(folder: Path, depth: int) -> None:
    """The tiny T5's widths and tokenizer with ``depth`` encoder and decoder blocks, random weights."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    from bridgebench.runtime.tiny import tiny_checkpoint

    src = tiny_checkpoint("t5")
    config = AutoConfig.from_pretrained(src, num_layers=depth, num_decoder_layers=depth)
    AutoModelForSeq2SeqLM.from_config(config).save_pretrained(folder)
    for f in src.iterdir():
        if not (folder / f.name).exists():
            (folder / f.name).write_bytes(f.read_bytes())


def child(mode: str, t5_folder: str, device: str, batch_size: int) -> dict:
    """One cold measurement (run in its own process)."""
    import torch

    from bridgebench.engine.module import BridgeModule
    from bridgebench.engine.speed import SpeedSpec
    from bridgebench.specs import BridgeSpec, EncoderSpec, LLMSpec, PrecisionSpec, spec_from_dict

    model = model_section(t5_folder)

    def build(compile_mode: str):
        torch.manual_seed(0)
        m = BridgeModule(encoder=spec_from_dict(EncoderSpec, model["encoder"]),
                         bridge=spec_from_dict(BridgeSpec, model["bridge"]), llm=spec_from_dict(LLMSpec, model["llm"]),
                         precision=PrecisionSpec("float32"), speed=SpeedSpec(compile=compile_mode))
        return m.to(device).train()

    plain = build("off")
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(batch_size, 32, plain.encoder.output_dim, generator=gen)
    text = plain.data_contract().text(["Generate an objective music description."] * batch_size,
                                      ["a calm piano melody with soft strings in the background"] * batch_size)
    batch = {"features": feats.to(device), "feature_mask": torch.ones(feats.shape[:2], dtype=torch.bool, device=device),
             "text": {k: v.to(device) for k, v in text.items()}}

    def step(m) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        m.losses(batch)["loss"].backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    step(plain)
    eager = min(step(plain), step(plain))
    compiled = build(mode)
    first = step(compiled)
    second = step(compiled)
    from torch._dynamo.utils import counters

    return {"mode": mode, "eager_step_s": eager, "first_step_s": first, "second_step_s": second,
            "compile_s": first - eager, "graphs": counters["stats"]["unique_graphs"],
            "t5_blocks": len(compiled.llm.hf.encoder.block), "torch": torch.__version__}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="*", default=[2, 8], help="T5 blocks per stack")
    parser.add_argument("--modes", nargs="*", default=["stacks", "regional"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", default=None, help="JSON output (default bench/compile_time-<device>.json)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "T5_FOLDER"), help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child:
        print("RESULT " + json.dumps(child(opts.child[0], opts.child[1], opts.device, opts.batch_size)), flush=True)
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for depth in opts.depths:
            folder = Path(tmp) / f"t5-{depth}"
            write_t5(folder, depth)
            for mode in opts.modes:
                cache = Path(tmp) / f"inductor-{mode}-{depth}"  # empty: a cold compile
                env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "TRITON_CACHE_DIR": str(cache / "triton")}
                started = time.perf_counter()
                done = subprocess.run([sys.executable, __file__, "--child", mode, str(folder), "--device", opts.device,
                                       "--batch-size", str(opts.batch_size)], env=env, capture_output=True, text=True)
                lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
                if done.returncode != 0 or not lines:
                    print(done.stderr[-3000:], file=sys.stderr)
                    return 1
                row = {"depth": depth, **json.loads(lines[-1][7:]), "process_s": time.perf_counter() - started}
                rows.append(row)
                print(f"{mode:8s} {depth}+{depth} T5 blocks: compile {row['compile_s']:.1f} s ({row['graphs']} graphs; "
                      f"eager step {row['eager_step_s']:.2f} s, compiled step {row['second_step_s']:.2f} s)", flush=True)
    report = {"device": opts.device, "cpus": os.cpu_count(), "batch_size": opts.batch_size, "rows": rows}
    out = Path(opts.out or ROOT / "bench" / f"compile_time-{opts.device}.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
