"""A model built on the meta device: every module and shape, no memory, no arithmetic.

A config can build and still describe no model (heads that do not divide, a negative
width, an encoder-decoder or a vision config where a causal LM is wanted); a recipe finds
out here, in milliseconds before any work, instead of minutes later at the build or the
first step. Measured on the published presets, build plus forward: scout 0.26 s,
behemoth 0.52 s; a tiny preset 0.02 s (``docs/reliability.md``).
"""

from __future__ import annotations

import warnings
from typing import Any


def _one_line(exc: Exception, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text if len(text) <= limit else text[:limit - 3] + '...'}"


def build_on_meta(config: Any) -> Any:
    """The causal LM of ``config`` on the meta device; ValueError when transformers has no
    causal LM for it or cannot build one with its sizes."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ValueError(f"a {getattr(config, 'model_type', type(config).__name__)!r} config "
                         "is not a causal language model (transformers' "
                         f"AutoModelForCausalLM has no class for {type(config).__name__}).")
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            return AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception as exc:  # any failure here is the config's: the shapes it asks for
        raise ValueError(f"cannot build a causal LM from this config ({_one_line(exc)}).") \
            from None


def check_buildable(config: Any) -> None:
    """ValueError unless ``config`` builds as a causal LM and, for a Llama 4 text model (the
    students' architecture), runs a forward on the meta device: shapes that only meet in
    the forward (no experts, more experts per token than experts, key/value heads that do
    not divide the heads) fail there. Other architectures are only built: their forwards
    may use operations that the meta device does not implement."""
    import torch
    from transformers import Llama4TextConfig

    model = build_on_meta(config)
    if not isinstance(config, Llama4TextConfig):
        return
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            model(input_ids=torch.zeros((1, 2), dtype=torch.long, device="meta"))
    except Exception as exc:  # the sizes do not fit together
        raise ValueError(f"the model this config describes cannot run ({_one_line(exc)}).") \
            from None
