"""The one evaluator, used by the training loop, `distill compare` and `distill eval`:
validation loss and perplexity, calibration, MoE expert load and, given a reference model
(a teacher), top-1 agreement and KL to it. Token-weighted over all processes."""

from __future__ import annotations

import contextlib
import math

import torch

from distill.data import split_block

BINS = 15  # equal-width confidence bins of the expected calibration error (Guo et al. 2017)
# Positions x vocabulary entries scored at once: bounds the float32 copies of the logits
# (64 Mi entries = 256 MiB each), which at a 202048-token vocabulary would otherwise reach
# tens of GiB per batch.
_CHUNK_ENTRIES = 1 << 26


@torch.no_grad()
def evaluate_lm(lm, blocks: torch.Tensor, accelerator=None, batch_size: int = 16,
                max_batches: int | None = None, *, expert_load: bool = False,
                reference=None) -> dict:
    """Metrics of the causal LM ``lm`` over ``blocks`` (num_blocks, block_size + 1).

    Returns ``val_loss`` (mean next-token cross-entropy per valid target token),
    ``val_ppl``, ``tokens`` (valid target tokens scored) and ``ece`` (expected calibration
    error of the top-1 prediction, 15 equal-width bins). With ``expert_load``, an MoE model
    also reports per MoE layer the fraction of routed slots each expert received. With a
    ``reference`` causal LM, ``top1_agreement`` and ``kl_to_teacher`` (mean KL(reference ||
    lm) per token) over the same positions, both over ``lm``'s vocabulary rows (a reference
    head padded beyond them is cut).

    With an ``accelerator``, each process takes every ``num_processes``-th batch and the
    sums are reduced across processes (the result equals one process's over all batches);
    without one, one process runs on the model's device."""
    if accelerator is None:
        device, rank, world, autocast = _device_of(lm), 0, 1, contextlib.nullcontext
    else:
        device, autocast = accelerator.device, accelerator.autocast
        rank, world = accelerator.process_index, accelerator.num_processes
    routed = expert_load and getattr(lm.config, "num_local_experts", 0) > 0
    sums = _zero_sums(lm.config if routed else None, reference is not None, device)
    starts = list(range(0, len(blocks), batch_size))
    if max_batches is not None:
        starts = starts[:max_batches]
    for start in starts[rank::world]:
        batch = split_block(blocks[start:start + batch_size].to(device))
        with autocast():
            out = lm(input_ids=batch["input_ids"],
                     **({"output_router_logits": True} if routed else {}))
            ref_logits = None if reference is None else \
                reference(input_ids=batch["input_ids"]).logits
        _add_scores(sums, out.logits, batch["labels"], ref_logits)
        if routed and getattr(out, "router_logits", None):  # absent in some transformers 5.x
            k = lm.config.num_experts_per_tok
            sums["expert_counts"] += torch.stack([
                torch.bincount(r.topk(k, dim=-1).indices.reshape(-1),
                               minlength=r.shape[-1]).double() for r in out.router_logits])
    if accelerator is not None:
        sums = accelerator.reduce(sums, "sum")
    return _metrics(sums)


def _device_of(module) -> torch.device:
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _zero_sums(routed_config, with_reference: bool, device) -> dict[str, torch.Tensor]:
    """The additive statistics every metric derives from; float64 so that summing many
    batches and processes loses nothing. Every process builds the same keys and shapes,
    as the reduction requires, even one that gets no batch."""
    def zeros(*shape):
        return torch.zeros(shape, dtype=torch.float64, device=device)

    sums = {"nll": zeros(), "tokens": zeros(), "bin_tokens": zeros(BINS),
            "bin_confidence": zeros(BINS), "bin_correct": zeros(BINS)}
    if with_reference:
        sums["agree"], sums["kl"] = zeros(), zeros()
    if routed_config is not None:
        layers = getattr(routed_config, "moe_layers", None) or range(
            routed_config.num_hidden_layers)
        sums["expert_counts"] = zeros(len(layers), routed_config.num_local_experts)
    return sums


def _add_scores(sums: dict[str, torch.Tensor], logits: torch.Tensor, labels: torch.Tensor,
                ref_logits: torch.Tensor | None) -> None:
    """Adds one batch's per-token sums. ``logits`` (batch, seq, vocab) of the lm,
    ``labels`` (batch, seq) with -100 where ignored, ``ref_logits`` (batch, seq, >= vocab)."""
    vocab = logits.shape[-1]
    logits, labels = logits.flatten(0, -2), labels.reshape(-1)  # (positions, vocab), (positions,)
    if ref_logits is not None:
        ref_logits = ref_logits.flatten(0, -2)
    step = max(1, _CHUNK_ENTRIES // vocab)
    for start in range(0, len(labels), step):
        keep = labels[start:start + step] != -100
        label = labels[start:start + step][keep]
        log_q = logits[start:start + step][keep].float().log_softmax(dim=-1)  # (n, vocab)
        sums["nll"] -= log_q.gather(-1, label[:, None]).double().sum()
        sums["tokens"] += len(label)
        # calibration needs only the top-1 probability and whether it was the label
        top, predicted = log_q.max(dim=-1)
        confidence = top.double().exp()
        bins = (confidence * BINS).long().clamp(max=BINS - 1)  # a confidence of 1: last bin
        sums["bin_tokens"] += torch.bincount(bins, minlength=BINS)
        sums["bin_confidence"].index_add_(0, bins, confidence)
        sums["bin_correct"].index_add_(0, bins, (predicted == label).double())
        if ref_logits is not None:
            log_p = ref_logits[start:start + step, :vocab][keep].float().log_softmax(dim=-1)
            sums["agree"] += (log_p.argmax(dim=-1) == predicted).sum()
            p = log_p.exp()
            # p log(p / q), taken as 0 where p is 0 (0 * -inf would be nan)
            sums["kl"] += (p * (log_p - log_q)).where(p > 0, 0.0).sum(dim=-1).double().sum()


def _metrics(sums: dict[str, torch.Tensor]) -> dict:
    tokens = sums["tokens"].item()
    per_token = max(tokens, 1.0)  # an empty split scores 0, not nan
    loss = sums["nll"].item() / per_token
    # ECE = sum_b (n_b / N) |acc_b - conf_b| = sum_b |correct_b - confidence_b| / N
    ece = (sums["bin_correct"] - sums["bin_confidence"]).abs().sum().item() / per_token
    row = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "tokens": int(tokens),
           "ece": ece}
    if "expert_counts" in sums:
        counts = sums["expert_counts"]
        row["expert_load"] = (counts / counts.sum(dim=-1, keepdim=True)).tolist()
    if "kl" in sums:
        row["top1_agreement"] = sums["agree"].item() / per_token
        row["kl_to_teacher"] = sums["kl"].item() / per_token
    return row
