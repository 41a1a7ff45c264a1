"""Student initialisation: random, pretrained, or from the teacher's weights; and PEFT."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_EXPERT_PARAMS = ("feed_forward.experts.gate_up_proj", "feed_forward.experts.down_proj")
_ROUTER = "feed_forward.router.weight"


def spread_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Evenly spaced teacher layers for the student's, first and last included."""
    if student_layers == 1:
        return [teacher_layers - 1]
    step = (teacher_layers - 1) / (student_layers - 1)
    return [round(i * step) for i in range(student_layers)]


def _select_experts(name: str, tensor: torch.Tensor, experts: list[int] | None) -> torch.Tensor:
    """Keep the chosen experts' slices of a stacked expert tensor or the router's rows."""
    if experts is None:
        return tensor
    if any(name.endswith(p) for p in _EXPERT_PARAMS) or name.endswith(_ROUTER):
        return tensor[experts]  # experts are the leading dimension of both
    return tensor


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher: nn.Module, layers: list[int] | None,
                      experts: list[int] | None) -> dict[str, Any]:
    """Copy embeddings, output head, final norm and the chosen teacher layers (and, in MoE
    layers, the chosen experts) into the student wherever shapes match. Returns a report:
    which tensors were copied and which were skipped, with why."""
    student_state = student.state_dict()
    teacher_state = {k: v for k, v in teacher.state_dict().items()}
    num_student_layers = student.config.num_hidden_layers
    if layers is None:
        layers = spread_layers(teacher.config.num_hidden_layers, num_student_layers)
    if len(layers) != num_student_layers:
        raise ValueError(f"student.teacher_layers names {len(layers)} layers; the student has "
                         f"{num_student_layers}")
    if max(layers) >= teacher.config.num_hidden_layers or min(layers) < 0:
        raise ValueError(f"student.teacher_layers {layers}: the teacher has "
                         f"{teacher.config.num_hidden_layers} layers")
    if experts is None and getattr(student.config, "num_local_experts", 0):
        experts = list(range(student.config.num_local_experts))
    copied, skipped = [], []
    for name, target in student_state.items():
        match = _LAYER.match(name)
        source_name = f"model.layers.{layers[int(match.group(1))]}.{match.group(2)}" \
            if match else name
        source = teacher_state.get(source_name)
        if source is None:
            skipped.append(f"{name}: no {source_name} in the teacher")
            continue
        try:
            source = _select_experts(name, source, experts)
        except IndexError:
            skipped.append(f"{name}: the teacher has fewer experts than {experts}")
            continue
        if source.shape != target.shape:
            skipped.append(f"{name}: shape {tuple(target.shape)} vs teacher "
                           f"{tuple(source.shape)}")
            continue
        target.copy_(source.to(target.dtype))
        copied.append(name)
    return {"teacher_layers": layers, "teacher_experts": experts, "copied": copied,
            "skipped": skipped}


def apply_peft(model: nn.Module, peft_config: dict[str, Any]) -> nn.Module:
    """Wrap ``model`` with the adapters a peft config mapping describes."""
    from peft import get_peft_model

    return get_peft_model(model, make_peft_config(peft_config))


def make_peft_config(peft_config: dict[str, Any]):
    """A peft config object; raises ValueError naming what is wrong."""
    from peft import get_peft_config

    fields = {"task_type": "CAUSAL_LM", **peft_config}
    if "peft_type" not in fields:
        raise ValueError("student.peft needs a peft_type (e.g. LORA, LOHA, IA3, ...)")
    try:
        return get_peft_config(fields)
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"student.peft: {exc}") from None
