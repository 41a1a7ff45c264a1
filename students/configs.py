"""Model configs: the one loader behind ``distill run`` and ``distill inspect``.

A model is a preset name (``PRESETS``), a YAML/JSON file, or a directory holding
``config.json``. A mapping without ``model_type`` holds ``Llama4TextConfig`` fields; one with
``model_type`` is any transformers config, built by the class that name picks, exactly as
``AutoConfig.from_pretrained`` builds it (legacy keys such as ``rope_theta`` and
``rope_scaling`` included). A multimodal config (``model_type: llama4``) gives its text model,
the part a student is. Keys the config class neither declares nor reads are refused with a
suggestion, naming the file, or ``overrides.NAME`` for an override; in a transformers
config.json only misspelt ones are (published files carry leftovers that AutoConfig keeps).
The vocabulary always follows the tokenizer.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
from pathlib import Path
from typing import Any, Mapping

from students.presets import PRESETS

# Where a composite (multimodal) config keeps its text model, as transformers names it.
TEXT_KEY = "text_config"
# difflib similarity from which an undeclared key of a config.json is a misspelling of a
# declared one ('num_hidden_layer': 0.97, 'hiden_size': 0.95), not one of the leftovers
# published files carry ("use_mrope" in Qwen2.5's, near "use_mtp": 0.75).
MISSPELLING = 0.85


def _hint(name: str, known: set[str], cutoff: float = 0.6) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=cutoff)
    return f" Did you mean '{close[0]}'?" if close else ""


# ---------------------------------------------------------------- reading a source

def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML/JSON config file, or in a directory's config.json."""
    import yaml

    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"directory {str(path)!r} has no config.json, so it is not a "
                             "checkpoint directory.")
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"config file not found: {str(path)!r} (no such file or directory).")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}.") from None
    try:  # YAML is a superset of JSON; JSON's own parser gives the clearer message for .json
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{path} is not valid YAML: {problem}{where}.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of config fields (such as hidden_size: "
                         f"5120); it holds {type(data).__name__}.")
    return data


def _read_path(path: Path) -> tuple[dict[str, Any], str, str]:
    """(mapping, where for errors, source) of a config file or a directory holding one."""
    if path.is_dir():
        return read_config_file(path), str(path / "config.json"), "checkpoint"
    return read_config_file(path), str(path), "config file"


def _source(name_or_path: str) -> tuple[dict[str, Any], str, str]:
    """(mapping, where for errors, source) of a preset name, a config file or a directory.
    A preset name wins over a file of the same name."""
    if name_or_path in PRESETS:
        return dict(PRESETS[name_or_path]), f"preset {name_or_path!r}", "preset"
    path = Path(name_or_path)
    looks_like_a_path = any(sep in name_or_path for sep in "/\\") \
        or path.suffix in (".json", ".yaml", ".yml")
    if path.exists() or looks_like_a_path:
        return _read_path(path)
    raise ValueError(f"unknown model {name_or_path!r}: not a preset, a config file or a "
                     f"checkpoint directory.{_hint(name_or_path, set(PRESETS))} "
                     f"Presets: {', '.join(PRESETS)}.")


# ---------------------------------------------------------------- which keys a class takes

@functools.lru_cache(maxsize=None)
def _declared(cls: type) -> frozenset[str]:
    """Names ``cls`` declares: its dataclass fields (PreTrainedConfig's common ones too),
    their aliases, the attributes it sets itself, and the generation parameters that
    ``GenerationConfig.from_model_config`` reads from a model config."""
    from transformers import GenerationConfig

    names = {f.name for f in dataclasses.fields(cls)} | set(cls.attribute_map) | {"model_type"}
    try:
        names |= {k for k in vars(cls()) if not k.startswith("_")}
    except Exception:  # a class that cannot be built with its defaults: fields only
        pass
    return frozenset(names | set(GenerationConfig().to_dict()))


def _undeclared(cls: type, data: Mapping[str, Any]) -> list[str]:
    """Keys of ``data`` that ``cls`` neither declares nor consumes. transformers keeps any key
    as a plain attribute, so what it consumes for backward compatibility (``rope_theta``,
    ``rope_scaling``, ``torch_dtype``...) is found by building ``cls`` with that one key:
    a consumed key does not stay an attribute of its own name."""
    import warnings

    from transformers.utils import logging

    unknown = []
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # a probe's own defaults may not suit the key: no warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            declared = _declared(cls)
            for key, value in data.items():
                if key in declared:
                    continue
                try:
                    probe = cls(**{str(key): value})
                except Exception:  # the class read the key and judged its value; the build
                    continue       # reports it with the file's other fields
                if key in vars(probe):
                    unknown.append(str(key))
    finally:
        logging.set_verbosity(verbosity)
    return unknown


def _refuse_unknown(cls: type, data: Mapping[str, Any], head: str, label: str = "",
                    strict: bool = True, note: str = "") -> None:
    """ValueError for the first key of ``data`` that ``cls`` does not take, worded
    "{head}unknown key '{label}KEY'": "x.json: ", "text_config." for a file's key;
    "", "overrides." for an override (the caller names the recipe section). Not ``strict``
    (a transformers config.json): only misspellings are refused, and other undeclared keys
    are kept as AutoConfig keeps them, plain attributes that no model code reads."""
    known = set(_declared(cls))
    for key in _undeclared(cls, data):
        if strict or _hint(key, known, MISSPELLING):
            raise ValueError(f"{head}unknown key '{label}{key}': not a field of {cls.__name__}."
                             f"{_hint(key, known)}{note}")


def _config_class(model_type: str, where: str) -> type:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"{where}: model_type {model_type!r} is not one this transformers "
                         f"knows.{_hint(model_type, set(CONFIG_MAPPING.keys()))}")
    return CONFIG_MAPPING[model_type]


def _text_class(cls: type, text: Mapping[str, Any], where: str) -> type:
    """The class transformers builds ``text_config`` with (SubConfigSpec.create_subconfig):
    a fixed class, or one picked by the section's model_type (LLaVA-like configs)."""
    from transformers import PreTrainedConfig

    spec = cls.sub_configs_defaults[TEXT_KEY]
    if isinstance(spec.config_class, type) and issubclass(spec.config_class, PreTrainedConfig):
        return spec.config_class
    return _config_class(str(text.get("model_type", spec.model_type)), where)


# ---------------------------------------------------------------- building

def _build(data: Mapping[str, Any], where: str, overrides: Mapping[str, Any],
           fixed: Mapping[str, Any]) -> Any:
    """The config of ``data`` (the text model of a composite one) with ``overrides`` (checked,
    named ``overrides.KEY``) and ``fixed`` (set by the caller, not checked) on top. They are
    merged before the class is built, so derived fields (moe_layers, layer_types) follow."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import Llama4TextConfig

    data = dict(data)
    model_type = data.pop("model_type", None)
    cls = Llama4TextConfig if model_type is None else _config_class(str(model_type), where)
    composite = TEXT_KEY in (getattr(cls, "sub_configs_defaults", None) or {})
    text = data.get(TEXT_KEY) if composite else data
    if text is None:
        text = {}
    if not isinstance(text, dict):
        raise ValueError(f"{where}: {TEXT_KEY} must be a mapping of fields; it holds "
                         f"{type(text).__name__}.")
    text_cls = _text_class(cls, text, where) if composite else cls
    # A mapping of Llama4TextConfig fields is ours: every unknown key is refused. A
    # transformers config.json may carry keys its class no longer declares (GPT-2's n_ctx,
    # Llama 4's for_llm_compressor), which AutoConfig keeps: only misspellings are refused.
    # Other sections (a vision model) go to transformers unchecked: no student is made of them.
    ours = model_type is None
    note = " (A transformers config.json names its model_type.)" if ours else ""
    _refuse_unknown(cls, {k: v for k, v in data.items() if k != TEXT_KEY or not composite},
                    f"{where}: ", strict=ours, note=note)
    if composite:
        _refuse_unknown(text_cls, text, f"{where}: ", f"{TEXT_KEY}.", strict=False)
    _refuse_unknown(text_cls, overrides, "", "overrides.")

    def build(extra: Mapping[str, Any]):
        merged = {**text, **extra, **fixed}
        if not composite:
            return cls(**merged)
        return getattr(cls(**{**data, TEXT_KEY: merged}), TEXT_KEY)

    # ArithmeticError: a class deriving a size divides by another (num_attention_heads: 0).
    errors = (TypeError, ValueError, KeyError, ArithmeticError, StrictDataclassError)
    try:
        return build(overrides)
    except errors as exc:
        message = " ".join(str(exc).split())
    if overrides:
        try:  # a value the file alone builds with: the overrides are to blame
            build({})
        except errors:
            pass
        else:
            raise ValueError(f"invalid model config with overrides {dict(overrides)} ({where} "
                             f"alone is valid): {message}") from None
    raise ValueError(f"{where}: invalid model config: {message}") from None


def load_config(name_or_path: str) -> tuple[Any, str]:
    """(transformers config, source) of a preset name, a YAML/JSON config file or a directory
    holding config.json, with its own vocabulary; source is "preset", "config file" or
    "checkpoint". A composite config gives its text model. Raises ValueError naming the
    file or key on any problem."""
    data, where, source = _source(name_or_path)
    return _build(data, where, {}, {}), source


def model_config(preset: str, overrides: Mapping[str, Any], vocab_size: int,
                 eos_token_id: int | None = None, pad_token_id: int | None = None,
                 config_file: str | None = None):
    """The transformers config of ``preset`` (or of ``config_file``, a file or a directory
    holding config.json) with ``overrides``, its vocabulary and special tokens set to the
    tokenizer's; the file's dtype is dropped. Raises ValueError naming the file or key on
    any problem."""
    fixed = {"vocab_size": vocab_size, "eos_token_id": eos_token_id,
             "pad_token_id": pad_token_id, "bos_token_id": None}
    if config_file is not None:
        data, where, _ = _read_path(Path(config_file))
    elif preset in PRESETS:
        data, where = PRESETS[preset], f"preset {preset!r}"
    else:
        raise ValueError(f"unknown preset {preset!r}.{_hint(preset, set(PRESETS))} "
                         f"Presets: {', '.join(PRESETS)}.")
    config = _build(data, where, overrides, fixed)
    # from_config would make the weights in a published file's torch_dtype (bfloat16): the
    # run decides the weights' dtype (float32, train.mixed_precision), not the file.
    config.dtype = None
    return config
