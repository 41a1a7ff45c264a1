"""evaluate modules shipped with the toolkit, loaded offline by their local path:

    import evaluate
    from distill.metric_modules import module_path
    kl = evaluate.load(module_path("kl_divergence"))
"""

from __future__ import annotations

from pathlib import Path

NAMES = ("token_perplexity", "kl_divergence", "top1_agreement", "expected_calibration_error")


def module_path(name: str) -> str:
    """The directory of a shipped metric, for ``evaluate.load``."""
    if name not in NAMES:
        raise ValueError(f"unknown metric {name!r}; shipped: {', '.join(NAMES)}")
    return str(Path(__file__).resolve().parent / name)


def load(name: str):
    """``evaluate.load`` of a shipped metric, in memory (no cache files, no network)."""
    import evaluate

    return evaluate.load(module_path(name), keep_in_memory=True)
