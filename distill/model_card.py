"""A Hugging Face model card (README.md) for every saved student."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from distill.config import Recipe


def _teacher_line(recipe: Recipe) -> str:
    teacher = recipe.teacher
    if teacher.kind == "none":
        return "none: trained on the data's next tokens alone"
    if teacher.kind == "codistill":
        model = teacher.model.config_file or f"preset `{teacher.model.preset}`"
        return (f"codistillation with a teacher built from {model} and trained alongside "
                f"(mutual weight {teacher.mutual_weight}, snapshot every "
                f"{teacher.snapshot_every or 'step (live)'})")
    how = "its cached top-{} outputs".format(teacher.top_k) if teacher.kind == "cached" else \
        "online logits"
    return f"`{teacher.name_or_path}` (frozen, {how})"


def _schedule(s) -> str:
    if s is None:
        return "1 - soft weight"
    if s.kind == "constant":
        return f"{s.start:g}"
    return f"{s.kind} {s.start:g} -> {s.end:g} over steps {s.warmup_steps}-{s.total_steps}"


def write_model_card(directory: Path, recipe: Recipe, metrics: dict[str, Any],
                     adapter: bool, shown_path: str | Path | None = None) -> None:
    """Write ``directory/README.md``; ``shown_path`` is where the loading example points
    (the final location when ``directory`` is a staging directory)."""
    where = shown_path or directory
    data = recipe.data
    source = {"stdlib": "the Python standard library's source files",
              "files": f"local files {data.files}",
              "hub": f"`{data.hub_name}` ({data.hub_config or 'default'}, {data.hub_split})"}
    front = {"library_name": "peft" if adapter else "transformers",
             "tags": ["distillation", "knowledge-distillation", "mixture-of-experts"],
             "pipeline_tag": "text-generation"}
    if data.source == "hub":
        front["datasets"] = [data.hub_name]
    if recipe.student.init == "pretrained" and recipe.student.name_or_path:
        front["base_model"] = recipe.student.name_or_path
    loss = recipe.loss
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in metrics.items() if not isinstance(v, list))
    loader = ("from peft import AutoPeftModelForCausalLM\n"
              f"model = AutoPeftModelForCausalLM.from_pretrained(\"{where}\")") if adapter \
        else ("from transformers import AutoModelForCausalLM\n"
              f"model = AutoModelForCausalLM.from_pretrained(\"{where}\")")
    text = f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# Distilled student

Trained with the `distill` toolkit (`distill run`); the full resolved recipe is in the run's
`config.yaml`.

- **Teacher:** {_teacher_line(recipe)}
- **Data:** {source[data.source]}, blocks of {data.block_size} tokens, tokenizer `{data.tokenizer}`
- **Loss:** hard weight x CE + soft weight x T^2 x `{loss.divergence}`; soft weight
  {_schedule(loss.soft_weight)}, hard weight {_schedule(loss.hard_weight)}, temperature
  {_schedule(loss.temperature)}, adaptive strategy `{loss.adaptive}`
- **Training:** {recipe.train.max_steps} steps, {recipe.train.micro_batch_size} x
  {recipe.train.grad_accum_steps} sequences per step per process, peak learning rate
  {recipe.train.lr:g}, seed {recipe.seed}

## Final metrics (validation split)

| metric | value |
| --- | --- |
{rows}

## How to load

```python
{loader}
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("{where}")
```
"""
    (Path(directory) / "README.md").write_text(text)
