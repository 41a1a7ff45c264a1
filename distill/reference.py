"""Print the recipe reference (docs/recipe-reference.md) generated from the schema."""

from distill.config import Recipe
from distill.schema import reference_markdown

HEADER = """# Recipe reference

Every key a recipe may hold, generated from the schema in `distill/config.py`
(`python -m distill.reference > docs/recipe-reference.md`). Any key can be set on the
command line as a dotted override: `distill run RECIPE train.max_steps=50 seed=3`.
A schedule (`loss.soft_weight`, `loss.hard_weight`, `loss.temperature`) is a mapping with
the keys `kind`, `start`, `end`, `warmup_steps`, `total_steps`, or a bare number for a
constant; see the README for its formula.

| key | type | default | meaning |
| --- | --- | --- | --- |
"""

if __name__ == "__main__":
    print(HEADER + reference_markdown(Recipe))
