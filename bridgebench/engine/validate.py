"""One validation pass over a run's configuration: every problem at once, before anything is built.

``problems(model, data)`` returns one line per problem, each naming the key and saying what to
change: unknown kinds and enums, values outside the ranges their specs declare, each named kind's
own checks (its registry row), rules across sections, and the checkpoint files the config names.
``check(...)`` raises them together as ``ConfigProblems``. The CLI calls it right after parsing;
``BridgeModule`` and the datamodule call the same functions when built from Python.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from bridgebench.datamodules.datamodule import check_options as data_problems
from bridgebench.engine.checkpoints import checkpoint_problem
from bridgebench.engine.registry import TABLES
from bridgebench.engine.speed import COMPILE_BACKENDS, COMPILE_MODES, COMPILE_OPTIONS, SpeedSpec, fp8_problem
from bridgebench.errors import ConfigProblems
from bridgebench.specs import (
    FROZEN_DTYPES,
    LLM_MODES,
    LR_GROUPS,
    OBJECTIVES,
    SCHEDULES,
    STAGE1_OBJECTIVES,
    BridgeSpec,
    EncoderSpec,
    EvalSpec,
    GenerationSpec,
    LLMSpec,
    OptimSpec,
    PrecisionSpec,
    Stage1Spec,
    range_problems,
    spec_from_dict,
)

SECTIONS = {"encoder": EncoderSpec, "bridge": BridgeSpec, "llm": LLMSpec, "optimizer": OptimSpec,
            "generation": GenerationSpec, "stage1": Stage1Spec, "evaluation": EvalSpec, "precision": PrecisionSpec,
            "speed": SpeedSpec}


def _choice(key: str, value: Any, options) -> list[str]:
    if value not in options:
        what = "name" if key.endswith(".name") or key.startswith("model.objectives.") else "value"
        return [f"{key}: unknown {what} '{value}'; choose one of: {', '.join(str(o) for o in options)}"]
    return []


def as_specs(model: dict) -> dict[str, Any]:
    """The typed sections of a ``model:`` dict (dataclasses pass through)."""
    out = {}
    for name, cls in SECTIONS.items():
        value = model.get(name)
        out[name] = value if dataclasses.is_dataclass(value) else spec_from_dict(cls, value or {})
    return out


def model_problems(model: dict, check_files: bool = True) -> list[str]:
    """Every problem of a ``model:`` section (plain dicts or specs)."""
    specs = as_specs(model)
    out: list[str] = []
    for section in ("encoder", "bridge", "llm"):
        spec = specs[section]
        kinds = list(TABLES[section]) + (["none"] if section == "llm" else [])
        out += _choice(f"model.{section}.name", spec.name, kinds)
    for section, spec in specs.items():
        out += range_problems(spec, f"model.{section}")
    # The named kinds' own checks (their pretrained references, templates, layer choices, ...).
    for section in ("encoder", "bridge", "llm"):
        spec = specs[section]
        kind = TABLES[section].get(spec.name)
        if kind is not None:
            out += kind.check(getattr(spec, spec.name), f"model.{section}.{spec.name}")
    llm, bridge, encoder = specs["llm"], specs["bridge"], specs["encoder"]
    out += _choice("model.llm.mode", llm.mode, LLM_MODES)
    out += _choice("model.stage1.projection", specs["stage1"].projection, ("linear", "mlp"))
    out += _choice("model.optimizer.schedule", specs["optimizer"].schedule, SCHEDULES)
    precision = specs["precision"]
    out += _choice("model.precision.frozen", precision.frozen, FROZEN_DTYPES)
    if precision.frozen_eval is not None:
        out += _choice("model.precision.frozen_eval", precision.frozen_eval, FROZEN_DTYPES[1:])
    speed = specs["speed"]
    out += _choice("model.speed.compile", speed.compile, COMPILE_MODES)
    out += _choice("model.speed.compile_mode", speed.compile_mode, COMPILE_OPTIONS)
    out += _choice("model.speed.compile_backend", speed.compile_backend, COMPILE_BACKENDS)
    out += [p for p in [fp8_problem(speed.fp8)] if p]
    if speed.fp8 and llm.name == "none":
        out.append("model.speed.fp8 speeds up the LLM's linear layers; this run has none (model.llm.name: none)")
    optim = specs["optimizer"]
    for group, scale in (optim.lr_scale or {}).items():
        if group not in LR_GROUPS:
            out.append(f"model.optimizer.lr_scale.{group}: unknown group; the groups are {', '.join(LR_GROUPS)}")
        elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            out.append(f"model.optimizer.lr_scale.{group}: {scale!r}; it must be > 0")
        elif group == "llm" and llm.mode == "frozen":
            out.append("model.optimizer.lr_scale.llm: the LLM is frozen (model.llm.mode: frozen), nothing of it "
                       "trains; set model.llm.mode: lora (or full), or remove the entry")
        elif group == "cross_attention" and bridge.name in TABLES["bridge"] and not TABLES["bridge"][bridge.name].stage1:
            having = ", ".join(n for n, k in TABLES["bridge"].items() if k.stage1)
            out.append(f"model.optimizer.lr_scale.cross_attention: the {bridge.name} bridge has no cross-attention "
                       f"(the bridges with one: {having})")
    if len(optim.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in optim.betas):
        out.append(f"model.optimizer.betas: {list(optim.betas)}; give two numbers in [0, 1)")

    objectives = model.get("objectives") or {"lm": 1.0}
    for name, weight in objectives.items():
        out += _choice(f"model.objectives.{name}", name, OBJECTIVES)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
            out.append(f"model.objectives.{name}: weight {weight!r} must be > 0 (remove the entry to disable it)")
    if "tag" in objectives and not encoder.trainable:
        out.append("model.objectives.tag trains the audio encoder by tagging; set model.encoder.trainable: true")
    stage1 = [o for o in objectives if o in STAGE1_OBJECTIVES]
    bridge_kind = TABLES["bridge"].get(bridge.name)
    if stage1 and bridge_kind is not None and not bridge_kind.stage1:
        out.append(f"model.objectives: {', '.join(stage1)} need a Q-Former bridge "
                   f"({', '.join(k for k, v in TABLES['bridge'].items() if v.stage1)}), not '{bridge.name}'")
    if "lm" in objectives and llm.name == "none":
        out.append("model.objectives.lm needs a language model; set model.llm.name to seq2seq or causal")
    if check_files:
        for key, hint in (("encoder_checkpoint", "run the stage-1 preset that trains the encoder first (e.g. make "
                                                  "exp NAME=demo_encoder) or fix the path"),
                          ("stage1_checkpoint", "run the stage-1 preset first or fix the path")):
            problem = checkpoint_problem(model.get(key), f"model.{key}", hint)
            if problem:
                out.append(problem)
    return out


def cross_problems(model: dict, data: dict) -> list[str]:
    """Rules that span the model and data sections."""
    out = []
    specs = as_specs(model)
    bridge, encoder = specs["bridge"], specs["encoder"]
    kind = TABLES["bridge"].get(bridge.name)
    instructions = data.get("instructions") or ["Generate an objective music description."]
    reads_instruction = kind is not None and getattr(kind.cls, "uses_instruction", False)
    if reads_instruction and data.get("task", "caption") == "caption" and not any(
            isinstance(i, str) and i.strip() for i in instructions):
        out.append(f"data.instructions: the {bridge.name} bridge reads the instruction, but every instruction is "
                   "empty; give instruction templates, use task: qa, or use the qformer bridge")
    features = data.get("features", "audio")
    layers = getattr(getattr(encoder, encoder.name, None), "layers", None)
    if features in ("cached", "auto") and (encoder.trainable or layers == "weighted"):
        out.append(f"data.features: {features} needs a frozen encoder with fixed layers (model.encoder.trainable: "
                   "false, layers not 'weighted'); use data.features: audio")
    return out


def problems(model: dict, data: Optional[dict] = None, check_files: bool = True) -> list[str]:
    """Every problem of a parsed config's model and data sections."""
    out = model_problems(model, check_files)
    if data is not None:
        out += data_problems(data) + cross_problems(model, data)
    return out


def check(model: dict, data: Optional[dict] = None, check_files: bool = True) -> None:
    """Raise every problem at once (ConfigProblems), or return."""
    found = problems(model, data, check_files)
    if found:
        raise ConfigProblems(found)
