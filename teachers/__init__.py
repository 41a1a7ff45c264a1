"""Teachers: where the soft targets come from. Knows nothing of losses or schedules.

Public interface: ``Teacher`` (the protocol), ``TeacherOutput``, ``TEACHERS`` (name ->
factory), ``build``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from teachers.base import NoTeacher, Teacher, TeacherOutput
from teachers.cached import CachedTeacher
from teachers.codistill import CodistillTeacher
from teachers.hf import HFTeacher
from teachers.prefetch import TeacherPrefetch

__all__ = ["TEACHERS", "CachedTeacher", "CodistillTeacher", "HFTeacher", "NoTeacher", "Teacher",
           "TeacherOutput", "TeacherPrefetch", "build"]


def _codistill(cfg, *, model_config, make_optimizer, efficient_moe, cache_root) -> Teacher:
    import students

    model = students.build_model(model_config, efficient_moe)
    return CodistillTeacher(model, *make_optimizer(model, cfg.lr),
                            snapshot_every=cfg.snapshot_every, mutual=cfg.mutual_weight > 0)


def _hf(cfg, *, model_config, make_optimizer, efficient_moe, cache_root) -> Teacher:
    return HFTeacher(cfg.name_or_path, cfg.dtype, cfg.device_map, efficient_moe, cfg.shard)


def _cached(cfg, *, model_config, make_optimizer, efficient_moe, cache_root) -> Teacher:
    root = Path(cfg.cache_dir) if cfg.cache_dir else Path(cache_root) / "teacher-outputs"
    return CachedTeacher(cfg.name_or_path, cfg.top_k, root, cfg.cache_batch_size, cfg.dtype,
                         cfg.device_map, efficient_moe)


def _none(cfg, **_) -> Teacher:
    return NoTeacher()


TEACHERS: dict[str, Callable[..., Teacher]] = {
    "codistill": _codistill, "hf": _hf, "cached": _cached, "none": _none}


def build(cfg, *, model_config, make_optimizer, efficient_moe: bool = True,
          cache_root: str | Path = ".") -> Teacher:
    """The teacher named by ``cfg.kind``. ``model_config`` is the transformers config a
    teacher built from scratch uses; ``make_optimizer(model, lr)`` returns the
    (optimizer, LR scheduler) pair of a teacher that trains; ``cache_root`` is where a
    cached teacher keeps its outputs unless ``cfg.cache_dir`` says otherwise."""
    return TEACHERS[cfg.kind](cfg, model_config=model_config, make_optimizer=make_optimizer,
                              efficient_moe=efficient_moe, cache_root=cache_root)
