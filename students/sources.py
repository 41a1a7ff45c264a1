"""Where a pretrained model, config or tokenizer comes from, and whether loading it may run
Python that came with it.

transformers imports a checkpoint's own modules when its ``config.json`` or
``tokenizer_config.json`` has an ``auto_map`` naming a class transformers does not have, and
when nobody said whether that is allowed it *asks on the terminal* (answering yes runs the
code; without a terminal the question fails with a traceback). So every load in this
toolkit passes ``trust_remote_code`` explicitly: True only for a path the user named as
trusted, else False, which transformers never overrides. A directory that would need its
code is refused before loading, by :func:`refuse_custom_code`, with the path and how to
allow it; for a hub name transformers itself refuses (a ValueError) under False.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

# How a refused path is allowed, in the words of the recipe and of `distill eval`.
HOW_TO_ALLOW = ("If you have read that code and trust it, list the path in the recipe's "
                "top-level `trust_remote_code` (distill eval: --trust-remote-code PATH).")


class CustomCodeRefused(ValueError):
    """A model, config or tokenizer that needs its own Python code, not trusted."""


def _auto_map(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # unreadable: the load itself reports it
    auto_map = data.get("auto_map") if isinstance(data, dict) else None
    return {"data": data, "auto_map": auto_map} if isinstance(auto_map, dict) else {}


def _modules(auto_map: dict, classes: Sequence[str]) -> list[str]:
    """The files ``auto_map`` names for ``classes``: 'module.Class' (or 'repo--module.Class',
    code from another repository) -> 'module.py'; a tokenizer maps to [slow, fast]."""
    found = []
    for name in classes:
        refs = auto_map.get(name)
        for ref in refs if isinstance(refs, list) else [refs]:
            if isinstance(ref, str) and "." in ref:
                found.append(ref.rsplit(".", 1)[0] + ".py")
    return sorted(set(found))


def custom_code(name_or_path: str) -> str | None:
    """What in local directory ``name_or_path`` would make transformers run its code (e.g.
    "config.json auto_map: evil.py"), or None: not a directory, no auto_map, or an auto_map
    that transformers ignores because it has the class itself (a checkpoint of a model that
    transformers gained later keeps its old auto_map)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    directory = Path(name_or_path).expanduser()
    if not directory.is_dir():
        return None
    reasons = []
    config = _auto_map(directory / "config.json")
    if config and config["data"].get("model_type") not in CONFIG_MAPPING:
        if files := _modules(config["auto_map"], list(config["auto_map"])):
            reasons.append(f"config.json auto_map: {', '.join(files)}")
    tokenizer = _auto_map(directory / "tokenizer_config.json")
    if tokenizer:
        named = str(tokenizer["data"].get("tokenizer_class") or "")
        known = named and (tokenizer_class_from_name(named) is not None
                           or tokenizer_class_from_name(named.removesuffix("Fast")) is not None)
        if not known and (files := _modules(tokenizer["auto_map"], ["AutoTokenizer"])):
            reasons.append(f"tokenizer_config.json auto_map: {', '.join(files)}")
    return "; ".join(reasons) or None


def _identity(name_or_path: str) -> str:
    """A local path by its resolved location (so ./x and x match), a hub name as written."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else name_or_path.rstrip("/")


def same(a: str, b: str) -> bool:
    """Whether two paths or hub names name the same source."""
    return _identity(a) == _identity(b)


def is_trusted(name_or_path: str | None, trusted: Sequence[str]) -> bool:
    """Whether ``name_or_path`` is one of the ``trusted`` paths or names."""
    return bool(name_or_path) and any(same(name_or_path, t) for t in trusted)


def _refusal(name_or_path: str, key: str, reason: str | None) -> CustomCodeRefused:
    head = f"{key}: " if key else ""
    what = f" ({reason})" if reason else ""
    return CustomCodeRefused(f"{head}{name_or_path} needs its own Python code to load{what}, "
                             f"and distill runs no code from a model unless asked. "
                             f"{HOW_TO_ALLOW}")


def refuse_custom_code(name_or_path: str, trusted: bool, key: str = "") -> None:
    """CustomCodeRefused when ``name_or_path`` needs code of its own and is not trusted."""
    reason = None if trusted else custom_code(name_or_path)
    if reason is not None:
        raise _refusal(name_or_path, key, reason)


def check_exists(name_or_path: str, key: str = "") -> None:
    """FileNotFoundError when ``name_or_path`` is neither an existing file or directory nor
    a possible hub name ('org/name'): transformers would only say that the string is not a
    valid repo id."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if Path(name_or_path).expanduser().exists():
        return
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        head = f"{key}: " if key else ""
        raise FileNotFoundError(f"{head}could not load {name_or_path!r}: it does not exist "
                                "(no such file or directory, and not a hub model name).") \
            from None


def pretrained(loader, name_or_path: str, trusted: bool = False, key: str = "", **kwargs):
    """``loader.from_pretrained(name_or_path, trust_remote_code=trusted, **kwargs)`` (an
    AutoModel*, AutoConfig or AutoTokenizer class) for every load of this toolkit: a path
    that does not exist and code that may not run are refused with their key first."""
    check_exists(name_or_path, key)
    refuse_custom_code(name_or_path, trusted, key)
    try:
        return loader.from_pretrained(name_or_path, trust_remote_code=trusted, **kwargs)
    except ValueError as exc:
        # A hub model's code (its files are not local, so not checked above): transformers
        # refuses it under trust_remote_code=False, in words that name its own argument.
        if not trusted and "trust_remote_code" in str(exc):
            raise _refusal(name_or_path, key, None) from None
        raise
