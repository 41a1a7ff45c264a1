"""``distill inspect``: parameter counts, layer pattern and a memory plan of one model.

A model is whatever ``students.load_config`` reads (the loader of ``distill run`` too): a
preset name, a YAML/JSON file of ``Llama4TextConfig`` fields or any transformers
``config.json`` (a multimodal one gives its text model), or a directory holding one. Llama 4
text models are counted analytically from the config (tests check the counts against a
model built on the meta device); any other causal LM is counted by building it on the meta
device, which allocates nothing. Every assumption behind the figures is in docs/inspect.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distill.errors import UserError

# Mixed-precision AdamW: bf16 weights + bf16 gradients + fp32 master weights + fp32 m and v.
TRAIN_BYTES = {"bf16_weights": 2, "bf16_gradients": 2, "fp32_master_weights": 4,
               "fp32_adam_moments": 8}
WEIGHT_BYTES = {"bf16": 2.0, "fp8": 1.0, "int4": 0.5}  # quantisation scales not counted
ACTIVATION_BYTES = 2  # activations are kept in bf16
# float32 (tokens, vocab) tensors live at the peak of a plain KD step: student and teacher
# logits upcast, both log-softmaxes, teacher probabilities, the pointwise divergence and two
# gradients in backward. benchmarks/fused_loss.py measured 7.3 copies; docs/losses.md says 8.
LOGIT_COPIES = 8
HEADROOM = 0.10  # CUDA context, NCCL buffers, allocator fragmentation
GIB = 2 ** 30


@dataclass
class Layer:
    index: int
    ffn: str                    # "dense" | "moe"
    experts: int                # routed experts (0 for dense)
    experts_per_token: int      # routed experts each token uses (0 for dense)
    width: int                  # dense MLP or per-expert intermediate size
    shared_width: int           # shared expert's intermediate size (0: none)
    rope: bool | None           # None: the config does not say
    attention: str              # "full" | "chunked" | "sliding" | another layer type
    attention_window: int | None
    params: int | None
    active_params: int | None


@dataclass
class Model:
    name: str
    source: str                 # "preset" | "config file" | "checkpoint"
    model_type: str
    counting: str               # "analytic" | "meta device"
    vocab: int
    hidden: int
    q_dim: int
    kv_dim: int
    params: dict[str, int]      # breakdown by component
    total: int
    active: int
    layers: list[Layer]


# ---------------------------------------------------------------- loading a config

def run_student(name_or_path: str) -> Path | None:
    """A run directory's saved student (``student/`` beside ``config.yaml``), which is what
    ``distill inspect RUN_DIR`` reads, as ``distill eval RUN_DIR`` does; else None."""
    path = Path(name_or_path).expanduser()
    if (path / "config.yaml").is_file() and (path / "student").is_dir():
        return path / "student"
    return None


def load_config(name_or_path: str) -> tuple[Any, str]:
    """(transformers config, source) for a preset name, a config file or a checkpoint dir,
    read by the loader ``distill run`` uses (``students.load_config``)."""
    import students

    try:
        return students.load_config(name_or_path)
    except ValueError as exc:
        adapter = Path(name_or_path).expanduser() / "adapter_config.json"
        if adapter.is_file():  # a PEFT student: adapters only, the model is its base's
            raise UserError(f"{name_or_path} holds PEFT adapters (adapter_config.json), not a "
                            f"model config; inspect its base model, "
                            f"{_adapter_base(adapter)!r}.") from None
        raise UserError(str(exc)) from None


def _adapter_base(adapter_config: Path) -> str:
    import json

    try:
        return str(json.loads(adapter_config.read_text())["base_model_name_or_path"])
    except (OSError, ValueError, KeyError, TypeError):
        return "named by base_model_name_or_path in adapter_config.json"


# ---------------------------------------------------------------- counting

def _attention(kind: str, config: Any) -> tuple[str, int | None]:
    if kind == "chunked_attention":
        return "chunked", getattr(config, "attention_chunk_size", None)
    if kind == "sliding_attention":
        return "sliding", getattr(config, "sliding_window", None)
    return kind.removesuffix("_attention"), None


def llama4_model(config: Any, name: str, source: str) -> Model:
    """Analytic counts of a ``Llama4TextConfig`` (modeling_llama4.py's module shapes)."""
    h, v = config.hidden_size, config.vocab_size
    q_dim = config.num_attention_heads * config.head_dim
    kv_dim = config.num_key_value_heads * config.head_dim
    bias = (q_dim + 2 * kv_dim + h) if config.attention_bias else 0
    attention = 2 * h * q_dim + 2 * h * kv_dim + bias   # q, o; k, v
    norms = 2 * h                                        # input and post-attention RMSNorm
    expert = 3 * h * config.intermediate_size            # gate, up, down
    e, k = config.num_local_experts, config.num_experts_per_tok
    parts = dict.fromkeys(("attention", "dense_mlp", "shared_experts", "routed_experts",
                           "routed_experts_active", "routers", "norms"), 0)
    layers = []
    for i in range(config.num_hidden_layers):
        moe = i in config.moe_layers
        kind, window = _attention(config.layer_types[i], config)
        if moe:
            ffn, ffn_active = e * expert + expert + h * e, k * expert + expert + h * e
            parts["routed_experts"] += e * expert
            parts["routed_experts_active"] += k * expert
            parts["shared_experts"] += expert
            parts["routers"] += h * e
        else:
            ffn = ffn_active = 3 * h * config.intermediate_size_mlp
            parts["dense_mlp"] += ffn
        parts["attention"] += attention
        parts["norms"] += norms
        layers.append(Layer(
            i, "moe" if moe else "dense", e if moe else 0, k if moe else 0,
            config.intermediate_size if moe else config.intermediate_size_mlp,
            config.intermediate_size if moe else 0, bool(config.no_rope_layers[i]), kind,
            window, attention + norms + ffn, attention + norms + ffn_active))
    parts["norms"] += h                                  # the final norm
    parts["embedding"] = v * h
    parts["lm_head"] = 0 if config.tie_word_embeddings else v * h
    total = sum(n for key, n in parts.items() if key != "routed_experts_active")
    active = total - parts["routed_experts"] + parts["routed_experts_active"]
    return Model(name, source, config.model_type, "analytic", v, h, q_dim, kv_dim, parts,
                 total, active, layers)


_LAYER_INDEX = re.compile(r"\.(?:layers|layer|h|blocks)\.(\d+)\.")
_EXPERT_COUNT = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def meta_model(config: Any, name: str, source: str) -> Model:
    """Counts of any causal LM by building it on the meta device; routed experts are the
    parameters under a module named ``experts``, of which a token uses top_k / experts."""
    import students

    try:
        lm = students.build_on_meta(config)
    except ValueError as exc:  # an architecture transformers cannot build as a causal LM
        raise UserError(f"{name}: {exc}") from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    e = next((getattr(text, a) for a in _EXPERT_COUNT if getattr(text, a, None)), 0)
    k = getattr(text, "num_experts_per_tok", None) or 0
    share = k / e if e and k else 1.0                    # unknown routing: all active
    embed = lm.get_input_embeddings().weight
    head = lm.get_output_embeddings()
    parts = {"embedding": embed.numel(), "lm_head": 0, "routed_experts": 0,
             "routed_experts_active": 0, "other": 0}
    per_layer: dict[int, list[float]] = {}
    for pname, p in lm.named_parameters():              # shared (tied) parameters come once
        n, routed = p.numel(), "experts" in pname.split(".")
        if p is embed:
            continue
        if head is not None and p is head.weight:
            parts["lm_head"] += n
            continue
        parts["routed_experts" if routed else "other"] += n
        parts["routed_experts_active"] += round(n * share) if routed else 0
        if match := _LAYER_INDEX.search(f".{pname}"):
            counts = per_layer.setdefault(int(match.group(1)), [0, 0, False])
            counts[0] += n
            counts[1] += n * share if routed else n
            counts[2] = counts[2] or routed
    total = sum(n for key, n in parts.items() if key != "routed_experts_active")
    active = total - parts["routed_experts"] + parts["routed_experts_active"]
    missing = [a for a in ("hidden_size", "num_attention_heads", "num_hidden_layers",
                           "vocab_size") if not isinstance(getattr(text, a, None), int)]
    if missing:
        raise UserError(f"{name}: the config has no integer {', '.join(missing)}, which the "
                        "memory plan needs.")
    h, heads = text.hidden_size, text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or h // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    dense = getattr(text, "intermediate_size", None) or getattr(text, "n_inner", None) or 4 * h
    width = getattr(text, "moe_intermediate_size", None) or dense
    shared = getattr(text, "shared_expert_intermediate_size", None) or 0
    types = getattr(text, "layer_types", None) or []
    rope = getattr(text, "no_rope_layers", None) or []
    layers = []
    for i in range(text.num_hidden_layers):
        n, n_active, moe = per_layer.get(i, (None, None, False))
        kind, window = _attention(types[i], text) if i < len(types) else ("full", None)
        layers.append(Layer(i, "moe" if moe else "dense", e if moe else 0, k if moe else 0,
                            width if moe else dense, shared if moe else 0,
                            bool(rope[i]) if i < len(rope) else None, kind, window,
                            n, None if n_active is None else round(n_active)))
    return Model(name, source, str(getattr(config, "model_type", "?")), "meta device",
                 text.vocab_size, h, heads * head_dim, kv_heads * head_dim, parts,
                 total, active, layers)


def build_model(name_or_path: str) -> Model:
    """The counted ``Model`` of a preset name, config file or checkpoint directory."""
    from transformers import Llama4TextConfig

    import students

    student = None if name_or_path in students.PRESETS else run_student(name_or_path)
    config, source = load_config(str(student or name_or_path))  # multimodal: its text model
    if student is not None:
        source = "run directory"
    if isinstance(config, Llama4TextConfig):
        return llama4_model(config, name_or_path, source)
    return meta_model(config, name_or_path, source)


# ---------------------------------------------------------------- memory

def layer_activation_elements(layer: Layer, hidden: int, q_dim: int, kv_dim: int) -> int:
    """Elements one token keeps for backward in one layer (docs/inspect.md): both RMSNorms'
    inputs and outputs; q, k, v, rotated q and k, attention output (a fused attention
    kernel, so no context x context scores); a SwiGLU MLP's gate, up, act(gate), product;
    per routed expert also its input copy and output; router logits and scores."""
    attention = 4 * hidden + 3 * q_dim + 3 * kv_dim
    if layer.ffn == "moe":
        routed = layer.experts_per_token * (2 * hidden + 4 * layer.width)
        return attention + 2 * layer.experts + 4 * layer.shared_width + routed
    return attention + 4 * layer.width


def memory_plan(model: Model, gpu_memory_gib: float = 80.0, context: int = 8192,
                batch: int = 1, chunk_size: int = 256) -> dict[str, Any]:
    for flag, value in (("--gpu-memory-gib", gpu_memory_gib), ("--context", context),
                        ("--batch", batch), ("--chunk-size", chunk_size)):
        if not value > 0:
            raise UserError(f"{flag} must be positive; got {value}.")
    usable = gpu_memory_gib * GIB * (1 - HEADROOM)
    tokens = context * batch
    per_layer = [layer_activation_elements(x, model.hidden, model.q_dim, model.kv_dim)
                 for x in model.layers]
    final_norm = 2 * model.hidden
    per_token = {
        "no_checkpointing": ACTIVATION_BYTES * (sum(per_layer) + final_norm),
        # checkpointing keeps each layer's input and recomputes one layer at a time
        "checkpointing": ACTIVATION_BYTES * (len(per_layer) * model.hidden
                                             + max(per_layer, default=0) + final_norm)}
    activations = {key: value * tokens for key, value in per_token.items()}
    chunk = min(chunk_size, tokens)
    logits = {"naive": tokens * model.vocab * 4 * LOGIT_COPIES,
              "fused": chunk * model.vocab * 4 * LOGIT_COPIES}
    # the fused path keeps float32 gradients of the hidden states and of the output head
    fused_buffers = 4 * (tokens * model.hidden + model.vocab * model.hidden)
    state = model.total * sum(TRAIN_BYTES.values())
    gpus: dict[str, dict[str, int | None]] = {}
    for act_key, act in activations.items():
        gpus[act_key] = {}
        for loss_key, fixed in (("naive", act + logits["naive"]),
                                ("fused", act + logits["fused"] + fused_buffers)):
            room = usable - fixed
            gpus[act_key][loss_key] = max(1, math.ceil(state / room)) if room > 0 else None
    weights = {dtype: math.ceil(model.total * b) for dtype, b in WEIGHT_BYTES.items()}
    largest = max((x.params or 0 for x in model.layers), default=0)
    gather = largest * (TRAIN_BYTES["bf16_weights"] + TRAIN_BYTES["bf16_gradients"])
    leanest = activations["checkpointing"] + logits["fused"] + fused_buffers
    return {
        "assumptions": {
            "gpu_memory_gib": gpu_memory_gib, "headroom": HEADROOM, "usable_bytes": int(usable),
            "context": context, "batch": batch, "tokens_per_gpu": tokens, "chunk_size": chunk,
            "training_bytes_per_param": TRAIN_BYTES, "activation_dtype_bytes": ACTIVATION_BYTES,
            "logit_float32_copies": LOGIT_COPIES},
        "weights_bytes": weights,
        "inference_gpus": {d: max(1, math.ceil(b / usable)) for d, b in weights.items()},
        "training_state_bytes": state,
        "activation_bytes_per_token": per_token,
        "activation_bytes": activations,
        "logits_bytes": logits,
        "fused_gradient_buffers_bytes": fused_buffers,
        "training_gpus": gpus,
        "fsdp_gather_bytes": gather,
        # even with checkpointing and the fused loss, does one gathered layer fit beside them?
        "fsdp_gather_fits": gather + leanest <= usable,
    }


def describe(name_or_path: str, *, gpu_memory_gib: float = 80.0, context: int = 8192,
             batch: int = 1, chunk_size: int = 256) -> dict[str, Any]:
    """Everything ``distill inspect`` reports, as plain JSON-ready data."""
    model = build_model(name_or_path)
    plan = memory_plan(model, gpu_memory_gib, context, batch, chunk_size)
    return {
        "name": model.name, "source": model.source, "model_type": model.model_type,
        "counting": model.counting, "total_params": model.total, "active_params": model.active,
        "active_params_without_input_embedding": model.active - model.params["embedding"],
        "params": model.params, "vocab_size": model.vocab, "hidden_size": model.hidden,
        "num_layers": len(model.layers), "layers": [asdict(x) for x in model.layers],
        "memory": plan,
    }


# ---------------------------------------------------------------- text output
