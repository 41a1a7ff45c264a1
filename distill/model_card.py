"""A Hugging Face model card (README.md) for every saved student (and a teacher the run
trained). What the card says is read off the saved model (architecture, experts, tags) and
the run (how it was trained: distilled, codistilled or on the data alone), not assumed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from distill.config import Recipe
from distill.teacher_use import unused_teacher_reason


def _schedule(s) -> str:
    if s is None:
        return "1 - soft weight"
    if s.kind == "constant":
        return f"{s.start:g}"
    end = "the last step" if s.total_steps is None else s.total_steps
    return f"{s.kind} {s.start:g} -> {s.end:g} over steps {s.warmup_steps}-{end}"


# Config fields that name the routed experts per MoE layer, across transformers' MoE models.
_EXPERT_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def experts_of(config) -> int:
    """Routed experts per MoE layer of a transformers config; 0 for a dense model. A Llama 4
    config keeps ``num_local_experts`` even when no layer is MoE (``moe_layers: []``): its
    layers say which it is."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "moe_layers", None) == []:
        return 0
    return next((n for n in (getattr(text, f, None) for f in _EXPERT_FIELDS)
                 if isinstance(n, int) and n > 0), 0)


def how_trained(recipe: Recipe, codistilled: bool) -> str:
    """``codistilled`` (a teacher trained alongside and taught), ``distilled`` (a frozen
    teacher taught), ``no_teacher`` (``teacher.kind: none``) or ``data_only`` (a teacher
    was configured but the soft weight is 0 throughout: the hard targets alone)."""
    if recipe.teacher.kind == "none":
        return "no_teacher"
    if unused_teacher_reason(recipe) is not None:
        return "data_only"
    return "codistilled" if codistilled else "distilled"


def card_title(role: str, trained: str) -> str:
    if role == "teacher":
        return "Codistilled teacher"
    return {"codistilled": "Codistilled student", "distilled": "Distilled student",
            "no_teacher": "Pretrained model (no teacher)",
            "data_only": "Student trained on the data alone (soft weight 0, no teacher "
                         "signal)"}[trained]


def card_tags(role: str, trained: str, model_config) -> list[str]:
    """Tags that hold for this model: distillation only when a teacher taught it (a teacher
    that trained alongside is tagged codistillation only), MoE only when the saved model
    routes to experts."""
    tags = []
    if role == "student" and trained in ("distilled", "codistilled"):
        tags += ["distillation", "knowledge-distillation"]
    if trained == "codistilled" or role == "teacher":
        tags.append("codistillation")
    if experts_of(model_config):
        tags.append("mixture-of-experts")
    return tags or ["causal-lm"]


def architecture(model) -> str:
    """What the saved model is, read off the model itself (not the recipe)."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    experts = experts_of(config)
    moe = (f", {experts} experts ({getattr(text, 'num_experts_per_tok', '?')} per token)"
           if experts else ", dense (no experts)")
    moe_layers = getattr(text, "moe_layers", None)
    if experts and isinstance(moe_layers, list) and len(moe_layers) < text.num_hidden_layers:
        moe += f" in {len(moe_layers)} of its layers"
    params = sum(p.numel() for p in model.parameters())
    return (f"`{type(model).__name__}` (`{config.model_type}`): {text.num_hidden_layers} layers, "
            f"hidden size {text.hidden_size}{moe}, vocabulary {text.vocab_size}, "
            f"{params:,} parameters")


def _paths_note(where: Path, cwd: Path) -> str:
    """Where this card's paths are relative to, and where the run's recipe lies."""
    return (f"Paths in this card are as the run was given them; relative ones (the loading "
            f"example's, data files, a teacher's checkpoint or tokenizer) are relative to "
            f"`{cwd}`, the directory `distill run` was started in. The run's fully resolved "
            f"recipe is `../config.yaml`, beside this model's directory (`{where.parent / 'config.yaml'}`); it loads as a recipe.")


def write_model_card(directory: Path, recipe: Recipe, metrics: dict[str, Any], role: str,
                     teacher_line: str, model, adapter: bool, codistilled: bool = False,
                     shown_path: str | Path | None = None) -> None:
    """Write ``directory/README.md`` for the run's ``role`` model (``student``, or a
    ``teacher`` the run trained), ``model`` being what was saved there; ``codistilled``:
    the run's teacher trained alongside the student. ``shown_path`` is where the loading
    example points (the final location when ``directory`` is a staging directory)."""
    where = Path(shown_path or directory)
    data = recipe.data
    trained = how_trained(recipe, codistilled)
    source = {"stdlib": "the Python standard library's source files",
              "python_docs": "the Python Language Reference topics shipped with CPython",
              "files": f"local files {data.files}",
              "hub": f"`{data.hub_name}` ({data.hub_config or 'default'}, {data.hub_split})"}
    front = {"library_name": "peft" if adapter else "transformers",
             "tags": card_tags(role, trained, model.config),
             "pipeline_tag": "text-generation"}
    if data.source == "hub":
        front["datasets"] = [data.hub_name]
    loss = recipe.loss
    if role == "student":
        if recipe.student.init == "pretrained" and recipe.student.name_or_path:
            front["base_model"] = recipe.student.name_or_path
        intro = ""
        if trained == "no_teacher":
            how = "- **Teacher:** none: trained on the data's next tokens alone (cross-entropy)"
        elif trained == "data_only":
            how = (f"- **Teacher:** {teacher_line}, unused: the soft weight is 0 at every step, "
                   "so the student learned from the data's next tokens alone")
        else:
            how = (f"- **Teacher:** {teacher_line}\n"
                   f"- **Loss:** hard weight x CE + soft weight x T^2 x `{loss.divergence}`; "
                   f"soft weight\n  {_schedule(loss.soft_weight)}, hard weight "
                   f"{_schedule(loss.hard_weight)}, temperature\n  "
                   f"{_schedule(loss.temperature)}, adaptive strategy `{loss.adaptive}`")
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

# {card_title(role, trained)}

Trained with the `distill` toolkit (`distill run`).{intro}

{_paths_note(where, Path(os.getcwd()))}

- **Architecture:** {architecture(model)}
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
