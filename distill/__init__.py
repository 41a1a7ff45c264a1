"""distill: orchestration (recipes, data, the training loop, checkpoints, evaluation, CLI).

Python entry points: ``load_recipe`` and ``run``.
"""

from distill.recipe import load_recipe, recipe_from_dict

__all__ = ["load_recipe", "recipe_from_dict", "run"]


def run(recipe, resume: bool = False):
    """Train as ``distill run`` does; imported lazily so the CLI's errors come fast."""
    from distill.train import run as _run

    return _run(recipe, resume=resume)
