"""Speed switches of a run (``model.speed``) that change how it computes, never what.

``compile: stacks`` compiles the bridge's forward and the LLM's encoder/decoder stacks whole;
``compile: regional`` compiles the bridge's forward and every transformer block of those stacks on
its own: the blocks of a stack share one class, so dynamo traces that class's code once and reuses
it for every layer (its guards check the class and the input shapes, and the weights are graph
inputs), and the cold compile no longer grows with depth. Compiling bound forwards and
``Module.compile`` (not wrapping the modules) keeps parameter names, so checkpoints and stage-1
loading are the same with and without a switch. ``fp8`` swaps the frozen LLM's linear layers for
torchao's float8 training layers; ``fused_adamw`` picks AdamW's kernels.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Optional

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

FP8_UNAVAILABLE = "model.speed.fp8 needs torchao and a GPU with FP8 (sm_89+)"

COMPILE_MODES = ("off", "stacks", "regional")
COMPILE_OPTIONS = ("default", "max-autotune-no-cudagraphs", "reduce-overhead")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


@dataclass
class SpeedSpec:
    """Speed switches: how a step computes, never what it computes (README, "Speed switches"). Every
    default is today's plain eager step; ``bench/gpu.py --ablate`` times each switch."""

    compile: str = "off"
    """``off``; ``stacks``: ``torch.compile`` the bridge's forward and the LLM's encoder/decoder
    stacks whole (compile time grows with depth: Flan-T5-xl's two stacks took > 6 min on an H200);
    ``regional``: the bridge's forward and each transformer block of the LLM's stacks, every block
    of a stack sharing one compiled code (one compile per block kind, whatever the depth). Parameter
    names and checkpoints are the same with every value."""
    compile_mode: str = "default"
    """torch.compile's mode (inductor only): ``default``, ``max-autotune-no-cudagraphs`` (autotuned GEMM
    kernels) or ``reduce-overhead`` (CUDA graphs: give the LLM's ``length_buckets`` so shapes repeat)."""
    compile_dynamic: Optional[bool] = None
    """torch.compile's ``dynamic``: None (static shapes first, dynamic after a shape changes), true
    (dynamic from the start) or false (one compile per shape; with ``length_buckets``)."""
    compile_backend: str = "inductor"
    """torch.compile's backend: ``inductor`` (kernels), or ``aot_eager`` / ``eager`` (no kernels:
    to check that a model traces, and in the tests)."""
    fp8: bool = False
    """FP8 matmuls (torchao float8 training) in the frozen LLM's linear layers whose widths are
    multiples of 16 (frozen: only their input gradients are needed). Needs ``pip install
    'bridgebench[gpu]'`` (torchao) and a GPU with FP8 (sm_89+: Ada, Hopper, Blackwell)."""
    fused_adamw: Optional[bool] = None
    """AdamW's kernels: None (fused where every trainable parameter is on a GPU, else foreach), true
    (fused on any device torch has it for, CPU included) or false (foreach, as LAVIS)."""


def fp8_problem(fp8: bool) -> Optional[str]:
    """The one-line reason ``fp8: true`` cannot run here, or None."""
    if not fp8:
        return None
    has_gpu = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)
    if not has_gpu or importlib.util.find_spec("torchao") is None:
        return f"{FP8_UNAVAILABLE}; install it with pip install 'bridgebench[gpu]' on such a GPU, or set it to false"
    return None


def llm_stacks(module) -> list[nn.Module]:
    """The LLM's encoder and decoder stacks (a decoder-only LM: its body), each once."""
    if module.llm is None:
        return []
    hf, stacks = module.llm.hf, []
    for getter in ("get_encoder", "get_decoder"):
        stack = getattr(hf, getter, None)
        stack = stack() if callable(stack) else None
        if isinstance(stack, nn.Module) and stack is not hf and all(stack is not s for s in stacks):
            stacks.append(stack)
    return stacks


def repeated_blocks(stack: nn.Module) -> list[nn.Module]:
    """A stack's transformer blocks: its longest ``ModuleList`` whose members share one class
    (T5Stack.block, LlamaModel.layers)."""
    best: list[nn.Module] = []
    for child in stack.modules():
        if isinstance(child, nn.ModuleList) and len({type(m) for m in child}) == 1 and len(child) > len(best):
            best = list(child)
    return best


def compile_kwargs(speed) -> dict:
    kw = {"dynamic": speed.compile_dynamic, "backend": speed.compile_backend}
    if speed.compile_mode != "default" and speed.compile_backend == "inductor":  # other backends have no modes
        kw["mode"] = speed.compile_mode
    return kw


def compile_parts(module, speed) -> list[str]:
    """``model.speed.compile``: compile the parts in place; returns what was compiled (for the log)."""
    if speed.compile == "off":
        return []
    kw = compile_kwargs(speed)
    # Every compiled block shares one code object (Module._call_impl) and so one cache of compiled
    # variants: T5 needs four (first and later block of each stack), and each new text shape under
    # dynamic: false or a shape change under None adds more; torch's default limit of 8 would send
    # the rest back to eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    done = []
    if module.bridge is not None:
        module.bridge.forward = torch.compile(module.bridge.forward, **kw)
        done.append(f"{type(module.bridge).__name__} (forward)")
    for stack in llm_stacks(module):
        blocks = repeated_blocks(stack) if speed.compile == "regional" else []
        if blocks:
            for block in blocks:
                block.compile(**kw)  # the class's code is traced once; every layer reuses it
            done.append(f"{type(stack).__name__} ({len(blocks)} x {type(blocks[0]).__name__})")
        else:
            stack.forward = torch.compile(stack.forward, **kw)
            done.append(f"{type(stack).__name__} (whole)")
    rank_zero_info(f"torch.compile ({speed.compile}, mode {speed.compile_mode}, backend {speed.compile_backend}): "
                   + ", ".join(done))
    return done


def step_begin(speed) -> None:
    """CUDA graphs (``compile_mode: reduce-overhead``) reuse their output buffers: mark where each
    step begins, so a graph's outputs of the step before may be overwritten."""
    if speed.compile != "off" and speed.compile_mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()


def fp8_linears(module) -> int:
    """``model.speed.fp8``: torchao float8 training layers for the frozen LLM's linear layers whose
    widths are multiples of 16 (what FP8 GEMMs need). Returns how many were swapped."""
    problem = fp8_problem(True)
    if problem:
        raise RuntimeError(problem)
    from torchao.float8 import convert_to_float8_training

    swapped = []

    def eligible(layer: nn.Module, name: str) -> bool:
        ok = isinstance(layer, nn.Linear) and layer.in_features % 16 == 0 and layer.out_features % 16 == 0
        if ok:
            swapped.append(name)
        return ok

    convert_to_float8_training(module.llm.hf, module_filter_fn=eligible)
    rank_zero_info(f"fp8: {len(swapped)} linear layers of the LLM run float8 matmuls (torchao)")
    return len(swapped)


def adamw_fused(params: list[torch.Tensor], fused_adamw: Optional[bool]) -> Optional[bool]:
    """AdamW's ``fused`` argument for ``model.speed.fused_adamw`` (None lets torch pick foreach)."""
    if fused_adamw is None:
        return True if params and all(p.is_cuda for p in params) else None
    return fused_adamw or None
