"""The text form of ``distill inspect``'s report (``distill.plan.describe``)."""

from __future__ import annotations

from typing import Any

from distill.plan import GIB


def _count(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def _bytes(n: float) -> str:
    for unit, size in (("TiB", 2 ** 40), ("GiB", GIB), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _signature(layer: dict[str, Any]) -> tuple[str, str]:
    if layer["ffn"] == "moe":
        ffn = f"MoE {layer['experts']} experts top-{layer['experts_per_token']}"
        ffn += " +shared" if layer["shared_width"] else ""
    else:
        ffn = f"dense MLP {layer['width']}"
    rope = {True: "RoPE ", False: "NoPE ", None: ""}[layer["rope"]]
    window = layer["attention_window"]
    return ffn, f"{rope}{layer['attention']}{f' {window}' if window else ''} attention"


def _runs(items: list[str]) -> list[tuple[int, int, str]]:
    runs: list[tuple[int, int, str]] = []
    for i, item in enumerate(items):
        if runs and runs[-1][2] == item:
            runs[-1] = (runs[-1][0], i, item)
        else:
            runs.append((i, i, item))
    return runs


def layer_summary(layers: list[dict[str, Any]]) -> list[str]:
    """Runs of identical layers, or the repeating unit when there are many runs."""
    pairs = [_signature(x) for x in layers]
    width = max((len(ffn) for ffn, _ in pairs), default=0)
    sigs = [f"{ffn:<{width}}  {attention}" for ffn, attention in pairs]
    runs = _runs(sigs)
    period = next((p for p in range(1, 9) if len(runs) > 6 and len(sigs) >= 2 * p
                   and all(s == sigs[i % p] for i, s in enumerate(sigs))), None)
    lines, indent = [], "  "
    if period is not None:
        lines, indent, runs = [f"  every {period} layers (layer % {period}):"], "    ", \
            _runs(sigs[:period])
    return lines + [f"{indent}{f'{a}-{b}' if a != b else str(a):<7} {sig}"
                    for a, b, sig in runs]


_BREAKDOWN = (("embedding", "embedding"), ("lm_head", "lm_head"), ("attention", "attention"),
              ("dense_mlp", "dense MLPs"), ("shared_experts", "shared experts"),
              ("routed_experts", "routed experts"), ("routers", "routers"),
              ("norms", "norms"), ("other", "other"))


def format_report(report: dict[str, Any]) -> str:
    m, p, layers = report["memory"], report["params"], report["layers"]
    a = m["assumptions"]
    moe = sum(x["ffn"] == "moe" for x in layers)
    rope = sum(x["rope"] is True for x in layers)
    parts = [f"{label} {_count(p[key])}" + (f" ({_count(p['routed_experts_active'])} active)"
                                            if key == "routed_experts" else "")
             for key, label in _BREAKDOWN if p.get(key)]
    per_token, act = m["activation_bytes_per_token"], m["activation_bytes"]
    out = [f"{report['name']} ({report['source']}, {report['model_type']}, "
           f"{report['counting']} count)",
           f"  parameters  {_count(report['total_params'])} total, "
           f"{_count(report['active_params'])} active per token (input embedding included; "
           f"{_count(report['active_params_without_input_embedding'])} without)",
           "  breakdown   " + ", ".join(parts),
           f"layers  {len(layers)}: {moe} MoE, {len(layers) - moe} dense"
           + (f"; {rope} RoPE, {len(layers) - rope} NoPE"
              if layers and layers[0]["rope"] is not None else ""),
           *layer_summary(layers),
           f"memory  (GPU {a['gpu_memory_gib']:g} GiB, {a['headroom']:.0%} headroom: "
           f"{_bytes(a['usable_bytes'])} usable; {a['tokens_per_gpu']} tokens per GPU = "
           f"context {a['context']} x batch {a['batch']})",
           f"  {'weights':<23}" + "   ".join(
               f"{d} {_bytes(b)}" for d, b in m["weights_bytes"].items()),
           f"  {'inference GPUs':<23}" + "   ".join(
               f"{d} {n}" for d, n in m["inference_gpus"].items())
           + "   (weights only: a frozen teacher)",
           f"  {'training state':<23}{_bytes(m['training_state_bytes'])} = "
           f"{sum(a['training_bytes_per_param'].values())} B/param (bf16 weights 2 + grads 2, "
           "fp32 master 4 + Adam m, v 8), sharded",
           f"  {'activations':<23}{_bytes(act['no_checkpointing'])} "
           f"({_bytes(per_token['no_checkpointing'])}/token) "
           f"no checkpointing; {_bytes(act['checkpointing'])} "
           f"({_bytes(per_token['checkpointing'])}/token) checkpointing",
           f"  {'logits, %d fp32 copies' % a['logit_float32_copies']:<23}naive "
           f"{_bytes(m['logits_bytes']['naive'])}; fused (chunk {a['chunk_size']}) "
           f"{_bytes(m['logits_bytes']['fused'])} + "
           f"{_bytes(m['fused_gradient_buffers_bytes'])} fp32 grad buffers",
           f"  {'FSDP layer gather':<23}{_bytes(m['fsdp_gather_bytes'])} (largest layer, bf16 "
           "weights + grads; not in the counts below"
           + ("" if m["fsdp_gather_fits"] else "; too big for one GPU beside activations "
              "and loss: shard the experts") + ")",
           "  training GPUs, FSDP full shard    naive loss   fused loss"]
    for key in ("no_checkpointing", "checkpointing"):
        row = m["training_gpus"][key]
        cells = [str(row[k]) if row[k] else "won't fit" for k in ("naive", "fused")]
        out.append(f"    {key.replace('_', ' '):<30} {cells[0]:>10}   {cells[1]:>10}")
    return "\n".join(out)
