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

import functools
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


def looks_local(name_or_path: str) -> bool:
    """Whether ``name_or_path``, which does not exist, was meant as a local path rather than
    a hub name. A hub name is ``name`` or ``org/name`` (huggingface_hub's rules); a local
    path starts with '/', '.', or '~', holds a backslash, more than one '/' or a trailing
    one, or starts with a directory that exists here (``runs/x`` beside a ``runs/``): a
    string the hub could not hold, or one that points into this file system."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    text = str(name_or_path)
    if text.startswith(("/", ".", "~")) or "\\" in text or text.endswith("/") \
            or text.count("/") > 1:
        return True
    try:
        validate_repo_id(text)
    except HFValidationError:
        return True
    return "/" in text and Path(text.split("/", 1)[0]).is_dir()


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be asked now (offline mode set, or its host does not
    answer within a few seconds), or None when it may be. Asked before a load that would
    otherwise retry the hub for about 25 s and then fail in the hub client's words."""
    import os

    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"offline mode: {variable} is set"
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "offline mode: HF_HUB_OFFLINE is set"
    return _probe(constants.ENDPOINT)


@functools.lru_cache(maxsize=None)
def _probe(endpoint: str) -> str | None:
    """A TCP connection to the hub's host (once per process). Behind a proxy a direct
    connection may fail while the client's requests would pass: then assume reachable."""
    import os
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    host, port = url.hostname or endpoint, url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=3).close()
        return None
    except OSError as exc:
        if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY",
                                           "http_proxy", "ALL_PROXY", "all_proxy")):
            return None
        return f"{host} cannot be reached from here ({exc.strerror or type(exc).__name__})"


def in_hub_cache(repo_id: str, repo_type: str = "model") -> bool:
    """Whether a snapshot of ``repo_id`` is in the local hub cache (HF_HUB_CACHE), where a
    load works without the network."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    snapshots = Path(constants.HF_HUB_CACHE) / repo_folder_name(
        repo_id=repo_id, repo_type=repo_type) / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def check_exists(name_or_path: str, key: str = "") -> None:
    """FileNotFoundError, naming ``key`` and the path, when ``name_or_path`` cannot load: a
    local path (see :func:`looks_local`) that does not exist, or a hub name that is not in
    the local cache while the hub cannot be reached. Checked before any model or data work,
    and instead of the hub client's ~25 s of retries and "Repo id must be in the form"."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return
    head = f"{key}: " if key else ""
    if looks_local(name_or_path):
        raise FileNotFoundError(
            f"{head}could not load {name_or_path!r}: it does not exist (no such file or "
            f"directory: {path.absolute()}). Check the path, or, if it is a checkpoint an "
            "earlier run writes (a run's student/ or teacher/), run that first.")
    if not in_hub_cache(name_or_path) and (why := hub_unreachable()):
        raise FileNotFoundError(
            f"{head}could not load {name_or_path!r}: it is neither a local path (no such "
            f"directory: {path.absolute()}) nor a model in the local Hugging Face cache, and "
            f"the hub cannot be asked ({why}). Give the path of a local checkpoint directory, or "
            f"download it first where the hub can be reached (`huggingface-cli download "
            f"{name_or_path}`).")


def check_hub_dataset(name: str, key: str = "data.hub_name") -> None:
    """FileNotFoundError when hub dataset ``name`` is in neither local cache (the hub's, or
    datasets' own) while the hub cannot be reached: said at once rather than after the
    datasets client's retries."""
    if Path(name).expanduser().exists() or in_hub_cache(name, "dataset"):
        return
    import datasets.config

    # datasets' own cache names a hub dataset's folder 'org___name' (case as it pleases).
    folder, root = name.replace("/", "___").lower(), Path(datasets.config.HF_DATASETS_CACHE)
    if root.is_dir() and any(entry.name.lower().startswith(folder) for entry in root.iterdir()):
        return
    if why := hub_unreachable():
        raise FileNotFoundError(
            f"{key}: dataset {name!r} is not in the local caches (the hub's or datasets'), "
            f"and the hub cannot be asked ({why}). Download it first where the hub can be "
            "reached, or use local files (data.source: files).")


def pretrained(loader, name_or_path: str, trusted: bool = False, key: str = "", **kwargs):
    """``loader.from_pretrained(name_or_path, trust_remote_code=trusted, **kwargs)`` (an
    AutoModel*, AutoConfig or AutoTokenizer class) for every load of this toolkit: a path
    that does not exist and code that may not run are refused with their key first."""
    check_exists(name_or_path, key)
    refuse_custom_code(name_or_path, trusted, key)
    if not Path(name_or_path).expanduser().exists() and hub_unreachable():
        # In the cache (check_exists said so), but the hub cannot be asked: read the cache
        # at once rather than after the hub client's retries.
        kwargs.setdefault("local_files_only", True)
    try:
        return loader.from_pretrained(name_or_path, trust_remote_code=trusted, **kwargs)
    except ValueError as exc:
        # A hub model's code (its files are not local, so not checked above): transformers
        # refuses it under trust_remote_code=False, in words that name its own argument.
        if not trusted and "trust_remote_code" in str(exc):
            raise _refusal(name_or_path, key, None) from None
        raise
