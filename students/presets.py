"""Named Llama 4 text configurations: published sizes for planning, tiny ones for CPUs.

Each preset is a dict of ``transformers.Llama4TextConfig`` fields. ``scout`` and
``maverick`` follow the public Llama 4 Scout 17B-16E and Maverick 17B-128E text configs;
the ``*-tiny`` presets keep their layer pattern (Scout: MoE in every layer, 16 experts,
QK-norm; Maverick: MoE every other layer, 128 experts, no QK-norm) at a width that trains
on a laptop CPU.

``behemoth`` is unreleased; Meta gives about 2T total and 288B active parameters with 16
experts, and the design card hidden 16384, 128 heads, 8 KV heads. With Llama 4's MoE block
(16 routed experts plus one shared expert, top-1) the card's 160 layers cannot reach those
totals: the shared expert alone would put the active count above 288B. The preset keeps
the card's width, heads and experts and takes 96 layers with experts of intermediate size
24576, which gives about 2.03T total and 293B active (``distill inspect behemoth``).
"""

from __future__ import annotations

from typing import Any

_LLAMA4_COMMON: dict[str, Any] = {
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "num_experts_per_tok": 1,
    "no_rope_layer_interval": 4,  # iRoPE: every 4th layer has no rotary embedding
    "tie_word_embeddings": False,
}

PRESETS: dict[str, dict[str, Any]] = {
    "scout": {
        **_LLAMA4_COMMON,
        "vocab_size": 202048, "hidden_size": 5120, "num_hidden_layers": 48,
        "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
        "intermediate_size": 8192, "intermediate_size_mlp": 16384,
        "num_local_experts": 16, "interleave_moe_layer_step": 1, "use_qk_norm": True,
        "attention_chunk_size": 8192, "max_position_embeddings": 10485760,
    },
    "maverick": {
        **_LLAMA4_COMMON,
        "vocab_size": 202048, "hidden_size": 5120, "num_hidden_layers": 48,
        "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
        "intermediate_size": 8192, "intermediate_size_mlp": 16384,
        "num_local_experts": 128, "interleave_moe_layer_step": 2, "use_qk_norm": False,
        "attention_chunk_size": 8192, "max_position_embeddings": 1048576,
    },
    "behemoth": {
        **_LLAMA4_COMMON,
        "vocab_size": 202048, "hidden_size": 16384, "num_hidden_layers": 96,
        "num_attention_heads": 128, "num_key_value_heads": 8, "head_dim": 128,
        "intermediate_size": 24576, "intermediate_size_mlp": 49152,
        "num_local_experts": 16, "interleave_moe_layer_step": 1, "use_qk_norm": True,
        "attention_chunk_size": 8192, "max_position_embeddings": 1048576,
    },
    "behemoth-tiny": {
        **_LLAMA4_COMMON,
        "vocab_size": 4096, "hidden_size": 128, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "intermediate_size": 256, "intermediate_size_mlp": 512,
        "num_local_experts": 16, "interleave_moe_layer_step": 1, "use_qk_norm": True,
        "attention_chunk_size": 2048, "max_position_embeddings": 2048,
    },
    "scout-tiny": {
        **_LLAMA4_COMMON,
        "vocab_size": 4096, "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "intermediate_size": 128, "intermediate_size_mlp": 256,
        "num_local_experts": 16, "interleave_moe_layer_step": 1, "use_qk_norm": True,
        "attention_chunk_size": 2048, "max_position_embeddings": 2048,
    },
    "maverick-tiny": {
        **_LLAMA4_COMMON,
        "vocab_size": 4096, "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "intermediate_size": 64, "intermediate_size_mlp": 256,
        "num_local_experts": 128, "interleave_moe_layer_step": 2, "use_qk_norm": False,
        "attention_chunk_size": 2048, "max_position_embeddings": 2048,
    },
}
