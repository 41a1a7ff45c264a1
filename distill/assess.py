"""Evaluation with the shipped evaluate modules: validation loss and perplexity, expected
calibration error, and, given a teacher, KL to it and top-1 agreement."""

from __future__ import annotations

from typing import Any

import torch

from distill.data import split_block
from distill.metric_modules import load as load_metric


@torch.no_grad()
def assess(student, blocks: torch.Tensor, batch_size: int = 16, max_batches: int | None = 16,
           teacher=None, kl_tokens: int = 2048, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Metrics of ``student`` (a causal LM) over validation ``blocks`` (n, block_size + 1).

    KL(teacher || student) is computed on the first ``kl_tokens`` positions (it takes whole
    vocabulary rows, so it is the costly one); the other metrics on every position. Both
    models' logits are compared over the student's vocabulary (padding rows ignored)."""
    perplexity, calibration = load_metric("token_perplexity"), load_metric(
        "expected_calibration_error")
    agreement = load_metric("top1_agreement") if teacher is not None else None
    kl = load_metric("kl_divergence") if teacher is not None else None
    rows = student.get_output_embeddings().weight.shape[0]
    kl_left = kl_tokens
    starts = list(range(0, len(blocks), batch_size))[:max_batches]
    for start in starts:
        batch = split_block(blocks[start:start + batch_size].to(device))
        valid = batch["labels"] != -100
        logits = student(input_ids=batch["input_ids"]).logits[valid][:, :rows].float()
        labels = batch["labels"][valid]
        nll = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
        perplexity.add_batch(predictions=nll.cpu().numpy())
        confidence, predicted = logits.softmax(dim=-1).max(dim=-1)
        calibration.add_batch(predictions=confidence.cpu().numpy(),
                              references=(predicted == labels).long().cpu().numpy())
        if teacher is not None:
            teacher_logits = teacher(input_ids=batch["input_ids"]).logits[valid][:, :rows].float()
            agreement.add_batch(predictions=predicted.cpu().numpy(),
                                references=teacher_logits.argmax(dim=-1).cpu().numpy())
            if kl_left > 0:
                take = slice(0, kl_left)
                kl.add_batch(predictions=logits[take].cpu().numpy(),
                             references=teacher_logits[take].cpu().numpy())
                kl_left -= len(logits[take])
    ppl = perplexity.compute()
    result = {"val_loss": ppl["loss"], "val_ppl": ppl["perplexity"], "tokens": ppl["tokens"],
              "ece": calibration.compute()["expected_calibration_error"]}
    if teacher is not None:
        result["top1_agreement"] = agreement.compute()["top1_agreement"]
        result["kl_to_teacher"] = kl.compute()["kl_divergence"]
        result["kl_tokens"] = kl_tokens - max(kl_left, 0)
    return result


def _data_config(target_is_run: bool, run_recipe, data: str | None, tokenizer_dir: str):
    """The data section to evaluate on: --data (a recipe or text/JSON-lines/parquet files),
    else the run's own recipe, else the default corpus; always with the model's tokenizer."""
    from dataclasses import replace
    from pathlib import Path

    from distill.config import DataConfig
    from distill.recipe import load_recipe

    if data is not None and Path(data).suffix in (".yaml", ".yml"):
        cfg = load_recipe(data).data
    elif data is not None:
        cfg = DataConfig(source="files", files=[data])
    elif target_is_run:
        cfg = run_recipe.data
    else:
        cfg = DataConfig()
    return replace(cfg, tokenizer=tokenizer_dir)


def evaluate_target(target: str, teacher: str | None = None, data: str | None = None,
                    batches: int = 16, kl_tokens: int = 2048) -> dict[str, Any]:
    """``distill eval``: ``target`` is a run directory (its student, data and teacher) or a
    saved model directory."""
    from pathlib import Path

    import students
    from distill.corpus import load_corpus
    from distill.data import load_tokenizer, pack
    from distill.errors import UserError
    from distill.recipe import load_recipe

    path = Path(target)
    is_run = (path / "config.yaml").is_file() and (path / "student").is_dir()
    model_dir = path / "student" if is_run else path
    if not (model_dir / "config.json").is_file() and not (model_dir / "adapter_config.json").is_file():
        raise UserError(f"{target}: neither a run directory (config.yaml and student/) nor a "
                        "saved model directory (config.json).")
    recipe = load_recipe(path / "config.yaml") if is_run else None
    if teacher is None and recipe is not None:
        teacher = recipe.teacher.pretrained()
    cfg = _data_config(is_run, recipe, data, str(model_dir))
    corpus = load_corpus(cfg)
    tokenizer = load_tokenizer(cfg, corpus)
    blocks = pack(corpus.validation, tokenizer, cfg.block_size, "validation")
    try:
        student = students.load_pretrained(str(model_dir)).eval()
        teacher_model = students.load_pretrained(teacher).eval() if teacher else None
    except OSError as exc:
        raise UserError(f"could not load a model: {exc}") from None
    result = assess(student, blocks, batch_size=16, max_batches=batches,
                    teacher=teacher_model, kl_tokens=kl_tokens)
    return {"model": str(model_dir), "teacher": teacher, "data": corpus.description, **result}
