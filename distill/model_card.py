"""A Hugging Face model card (README.md) for every saved student."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from distill.config import Recipe


def _schedule(s) -> str:
    if s is None:
        return "1 - soft weight"
    if s.kind == "constant":
        return f"{s.start:g}"
    end = "the last step" if s.total_steps is None else s.total_steps
    return f"{s.kind} {s.start:g} -> {s.end:g} over steps {s.warmup_steps}-{end}"


def architecture(model) -> str:
    """What the saved model is, read off the model itself (not the recipe)."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    experts = getattr(text, "num_local_experts", 0) or 0
    moe = (f", {experts} experts ({getattr(text, 'num_experts_per_tok', '?')} per token)"
           if experts else "")
    params = sum(p.numel() for p in model.parameters())
    return (f"`{type(model).__name__}` (`{config.model_type}`): {text.num_hidden_layers} layers, "
            f"hidden size {text.hidden_size}{moe}, vocabulary {text.vocab_size}, "
            f"{params:,} parameters")


_TITLES = {"student": "Distilled student", "teacher": "Codistilled teacher"}


def write_model_card(directory: Path, recipe: Recipe, metrics: dict[str, Any], role: str,
                     teacher_line: str, architecture_line: str, adapter: bool,
                     shown_path: str | Path | None = None) -> None:
    """Write ``directory/README.md`` for the run's ``role`` model (``student``, or a
    ``teacher`` the run trained); ``shown_path`` is where the loading example points (the
    final location when ``directory`` is a staging directory)."""
    where = shown_path or directory
    data = recipe.data
    source = {"stdlib": "the Python standard library's source files",
              "python_docs": "the Python Language Reference topics shipped with CPython",
              "files": f"local files {data.files}",
              "hub": f"`{data.hub_name}` ({data.hub_config or 'default'}, {data.hub_split})"}
    front = {"library_name": "peft" if adapter else "transformers",
             "tags": ["distillation", "knowledge-distillation", "mixture-of-experts"],
             "pipeline_tag": "text-generation"}
    if data.source == "hub":
        front["datasets"] = [data.hub_name]
    loss = recipe.loss
    if role == "student":
        if recipe.student.init == "pretrained" and recipe.student.name_or_path:
            front["base_model"] = recipe.student.name_or_path
        intro = ""
        how = (f"- **Teacher:** {teacher_line}\n"
               f"- **Loss:** hard weight x CE + soft weight x T^2 x `{loss.divergence}`; soft "
               f"weight\n  {_schedule(loss.soft_weight)}, hard weight "
               f"{_schedule(loss.hard_weight)}, temperature\n  {_schedule(loss.temperature)}, "
               f"adaptive strategy `{loss.adaptive}`")
    else:
        intro = (" This is the teacher that trained\nalongside the run's student, which is in "
                 "`student/`.")
        mutual = recipe.teacher.codistill.mutual_weight
        how = (f"- **Trained by:** {teacher_line}\n- **Loss:** cross-entropy on the data's next "
               "tokens" + (f", plus {mutual:g} x forward KL towards the student's outputs"
                           if mutual > 0 else ""))
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in metrics.items() if not isinstance(v, list) and v is not None)
    loader = ("from peft import AutoPeftModelForCausalLM\n"
              f"model = AutoPeftModelForCausalLM.from_pretrained(\"{where}\")") if adapter \
        else ("from transformers import AutoModelForCausalLM\n"
              f"model = AutoModelForCausalLM.from_pretrained(\"{where}\")")
    text = f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# {_TITLES[role]}

Trained with the `distill` toolkit (`distill run`); the full resolved recipe is in the run's
`config.yaml`.{intro}

- **Architecture:** {architecture_line}
{how}
- **Data:** {source[data.source]}, blocks of {data.block_size} tokens, tokenizer `{data.tokenizer}`
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
