"""Model configs: a named preset, a config file, or a transformers config.json, plus
overrides. The vocabulary always follows the tokenizer."""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path
from typing import Any, Mapping

from students.presets import PRESETS


def _llama4_fields() -> set[str]:
    from transformers import Llama4TextConfig

    return {f.name for f in dataclasses.fields(Llama4TextConfig)}


def _hint(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def check_overrides(key: str, overrides: Mapping[str, Any], known: set[str] | None = None) -> None:
    """Raise ValueError for override names the config does not have (Llama 4 by default)."""
    known = _llama4_fields() if known is None else known
    for name in overrides:
        if name not in known:
            raise ValueError(f"unknown key '{key}.{name}': not a field of the model config."
                             f"{_hint(name, known)}")


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML/JSON config file, or a directory's config.json."""
    import yaml

    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                         f"{exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a model config must be a mapping of fields")
    return data


def model_config(preset: str, overrides: Mapping[str, Any], vocab_size: int,
                 eos_token_id: int | None = None, pad_token_id: int | None = None,
                 config_file: str | None = None):
    """The transformers config of ``preset`` (or of ``config_file``) with ``overrides``.

    A file whose mapping names a ``model_type`` other than Llama 4's text model is built
    with ``AutoConfig.for_model`` (any causal LM); otherwise the fields are Llama4TextConfig's.
    Raises ValueError with the offending key on any problem.
    """
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig, Llama4TextConfig

    base = dict(PRESETS[preset]) if config_file is None else read_config_file(config_file)
    special = {"vocab_size": vocab_size, "eos_token_id": eos_token_id,
               "pad_token_id": pad_token_id, "bos_token_id": None}
    model_type = base.pop("model_type", "llama4_text")
    where = f"config file {config_file}" if config_file else f"preset {preset!r}"
    for key in ("architectures", "transformers_version", "torch_dtype", "dtype"):
        base.pop(key, None)
    try:
        if model_type in ("llama4_text", "llama4"):
            base = base.get("text_config", base) if model_type == "llama4" else base
            check_overrides("overrides", base, _llama4_fields())
            check_overrides("overrides", overrides, _llama4_fields())
            return Llama4TextConfig(**{**base, **overrides, **special})
        config = AutoConfig.for_model(model_type, **base)
        known = set(config.to_dict())
        check_overrides("overrides", overrides, known)
        config.update({**overrides, **special})
        return config
    except (TypeError, ValueError, KeyError, StrictDataclassError) as exc:
        raise ValueError(f"invalid model config ({where}, overrides {dict(overrides)}): "
                         f"{exc}") from None
