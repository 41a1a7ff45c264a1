"""Students: Llama-4-style causal LMs from presets, config files or checkpoints.

Public interface: ``PRESETS``, ``model_config``, ``load_config``, ``read_config_file``,
``build_model``, ``build_on_meta``, ``check_buildable``, ``load_pretrained``,
``init_from_teacher``, ``apply_peft``, ``make_peft_config``, ``decoder_of``, ``fused_head``,
``router_aux_loss``, ``enable_efficient_moe``; ``sources`` (what may be loaded, and whether
its code may run). Knows nothing of teachers' interfaces or of losses.
"""

from __future__ import annotations

from typing import Any

from students import sources
from students.configs import load_config, model_config, read_config_file
from students.heads import decoder_of, fused_head, router_aux_loss
from students.init import apply_peft, init_from_teacher, make_peft_config
from students.meta import build_on_meta, check_buildable
from students.presets import PRESETS

__all__ = ["PRESETS", "apply_peft", "build_model", "build_on_meta", "check_buildable",
           "decoder_of", "enable_efficient_moe", "fused_head", "init_from_teacher",
           "load_config", "load_pretrained", "make_peft_config", "model_config",
           "read_config_file", "router_aux_loss", "sources"]


def enable_efficient_moe(model) -> int:
    """Route Llama 4 MoE layers through the routed-tokens-only forward; returns how many."""
    from students.moe import enable_efficient_moe as enable

    return enable(model)


def build_model(config, efficient_moe: bool = True) -> Any:
    """A randomly initialised causal LM for ``config`` (initialisation follows torch's seed)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    if efficient_moe:
        enable_efficient_moe(model)
    return model


def load_pretrained(name_or_path: str, efficient_moe: bool = True,
                    trust_remote_code: bool = False, key: str = "", **kwargs) -> Any:
    """``AutoModelForCausalLM.from_pretrained``, with the efficient MoE forward. The model's
    own code runs only if ``trust_remote_code`` (else CustomCodeRefused, a ValueError);
    FileNotFoundError for a path that does not exist (both naming the recipe ``key``);
    OSError when its files cannot be read (truncated weights)."""
    import pickle

    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        model = sources.pretrained(AutoModelForCausalLM, name_or_path, trust_remote_code, key,
                                   **kwargs)
    except (SafetensorError, EOFError, pickle.UnpicklingError) as exc:
        raise OSError(f"cannot read the weights of {name_or_path} "
                      f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}); the file "
                      "may be truncated or corrupt.") from None
    if efficient_moe:
        enable_efficient_moe(model)
    return model
