"""Students: Llama-4-style causal LMs built from named presets plus overrides.

Public interface: ``PRESETS``, ``check_overrides``, ``model_config``, ``build_model``.
Knows nothing of teachers or losses.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

from students.heads import decoder_of, fused_head, router_aux_loss
from students.presets import PRESETS

__all__ = ["PRESETS", "build_model", "check_overrides", "decoder_of", "fused_head",
           "model_config", "router_aux_loss"]


def _config_fields() -> set[str]:
    from transformers import Llama4TextConfig

    return {f.name for f in dataclasses.fields(Llama4TextConfig)}


def check_overrides(key: str, overrides: Mapping[str, Any]) -> None:
    """Raise ValueError for override names that ``Llama4TextConfig`` does not have."""
    known = _config_fields()
    for name in overrides:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown key '{key}.{name}': not a Llama4TextConfig field.{hint}")


def model_config(preset: str, overrides: Mapping[str, Any], vocab_size: int,
                 eos_token_id: int | None = None, pad_token_id: int | None = None):
    """The ``Llama4TextConfig`` of ``preset`` with ``overrides``; the vocabulary follows
    the tokenizer, so ``vocab_size`` here always wins."""
    from transformers import Llama4TextConfig

    fields = {**PRESETS[preset], **overrides, "vocab_size": vocab_size,
              "bos_token_id": None, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
    try:
        return Llama4TextConfig(**fields)
    except (TypeError, ValueError) as exc:  # strict dataclass validation of field types
        raise ValueError(f"invalid model config for preset {preset!r} with overrides "
                        f"{dict(overrides)}: {exc}") from None


def build_model(config) -> Any:
    """A randomly initialised ``Llama4ForCausalLM`` (initialisation follows torch's seed)."""
    from transformers import Llama4ForCausalLM

    return Llama4ForCausalLM(config)
