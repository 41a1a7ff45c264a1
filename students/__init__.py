"""Students: Llama-4-style causal LMs from presets, config files or checkpoints.

Public interface: ``PRESETS``, ``model_config``, ``load_config``, ``read_config_file``,
``build_model``, ``load_pretrained``, ``init_from_teacher``, ``apply_peft``,
``make_peft_config``, ``decoder_of``, ``fused_head``, ``router_aux_loss``,
``enable_efficient_moe``. Knows nothing of teachers' interfaces or of losses.
"""

from __future__ import annotations

from typing import Any

from students.configs import load_config, model_config, read_config_file
from students.heads import decoder_of, fused_head, router_aux_loss
from students.init import apply_peft, init_from_teacher, make_peft_config
from students.presets import PRESETS

__all__ = ["PRESETS", "apply_peft", "build_model", "decoder_of", "enable_efficient_moe",
           "fused_head", "init_from_teacher", "load_config", "load_pretrained",
           "make_peft_config", "model_config", "read_config_file", "router_aux_loss"]


def enable_efficient_moe(model) -> int:
    """Route Llama 4 MoE layers through the routed-tokens-only forward; returns how many."""
    from students.moe import enable_efficient_moe as enable

    return enable(model)


def build_model(config, efficient_moe: bool = True) -> Any:
    """A randomly initialised causal LM for ``config`` (initialisation follows torch's seed)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config)
    if efficient_moe:
        enable_efficient_moe(model)
    return model


def load_pretrained(name_or_path: str, efficient_moe: bool = True, **kwargs) -> Any:
    """``AutoModelForCausalLM.from_pretrained``, with the efficient MoE forward."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    if efficient_moe:
        enable_efficient_moe(model)
    return model
