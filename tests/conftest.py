"""Shared fixtures: tiny models, a small corpus, a per-session tokenizer cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# No test downloads anything: every model, tokenizer and dataset is made locally.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

# Tiny Llama-4-style models: same layer pattern as the presets, a few thousand parameters.
TINY_MODEL = {"hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1,
              "head_dim": 16, "num_local_experts": 4, "intermediate_size": 32,
              "intermediate_size_mlp": 64}


# meta-llama/Llama-4-Scout-17B-16E's config.json as published (written by transformers 4.51),
# its keys kept (_attn_implementation_autoset as the Maverick file has it), the text model
# shrunk from 5120 wide, 48 layers, 16 experts. Some keys are no Llama4TextConfig field
# (rope_theta, rope_scaling, torch_dtype), some nothing reads (for_llm_compressor). One change:
# the file says attn_temperature_tuning 4 (an int in 4.51); transformers 5 refuses it.
SCOUT_TEXT_CONFIG = {
    "_attn_implementation_autoset": True, "attention_bias": False, "attention_chunk_size": 8192,
    "attention_dropout": 0.0, "attn_scale": 0.1, "attn_temperature_tuning": True,
    "bos_token_id": 200000, "eos_token_id": [200001, 200007, 200008], "floor_scale": 8192,
    "for_llm_compressor": False, "head_dim": 16, "hidden_act": "silu", "hidden_size": 64,
    "initializer_range": 0.02, "interleave_moe_layer_step": 1, "intermediate_size": 32,
    "intermediate_size_mlp": 64, "max_position_embeddings": 262144, "model_type": "llama4_text",
    "moe_layers": [0, 1, 2, 3], "no_rope_layers": [1, 1, 1, 0], "num_attention_heads": 4,
    "num_experts_per_tok": 1, "num_hidden_layers": 4, "num_key_value_heads": 2,
    "num_local_experts": 4, "output_router_logits": False, "pad_token_id": 200018,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 8.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0,
    "torch_dtype": "bfloat16", "use_cache": True, "use_qk_norm": True, "vocab_size": 202048,
}
SCOUT_CONFIG = {
    "architectures": ["Llama4ForConditionalGeneration"], "boi_token_index": 200080,
    "eoi_token_index": 200081, "image_token_index": 200092, "model_type": "llama4",
    "text_config": SCOUT_TEXT_CONFIG, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "vision_config": {
        "attention_dropout": 0.0, "hidden_act": "gelu", "hidden_size": 1408, "image_size": 336,
        "initializer_range": 0.02, "intermediate_size": 5632,
        "model_type": "llama4_vision_model", "multi_modal_projector_bias": False,
        "norm_eps": 1e-05, "num_attention_heads": 16, "num_channels": 3,
        "num_hidden_layers": 34, "patch_size": 14, "pixel_shuffle_ratio": 0.5,
        "projector_dropout": 0.0, "projector_input_dim": 4096, "projector_output_dim": 4096,
        "rope_theta": 10000, "vision_feature_layer": -1,
        "vision_feature_select_strategy": "default", "vision_output_dim": 4096},
}


# Metrics that measure the wall clock: they differ between two runs of the same training.
TIMED_KEYS = ("tokens_per_s", "generation_tokens_per_s", "elapsed_s", "startup_s")


def untimed(rows: list[dict]) -> list[dict]:
    """Metrics rows without their wall-clock values, for comparing runs value by value."""
    return [{k: v for k, v in row.items() if k not in TIMED_KEYS} for row in rows]


def write_config(directory: Path, config: dict) -> Path:
    """``directory``/config.json holding ``config``, as a checkpoint directory holds it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory / "config.json"


def tiny_overrides(output_dir: Path, cache_dir: Path, **extra: object) -> list[str]:
    """Dotted overrides that shrink the quickstart recipe to a few seconds of training."""
    values: dict[str, object] = {
        "output_dir": str(output_dir), "data.cache_dir": str(cache_dir),
        "data.max_chars": 150_000, "data.vocab_size": 512, "data.block_size": 32,
        "data.validation_fraction": 0.05,
        "train.max_steps": 12, "train.micro_batch_size": 4, "train.eval_every": 6,
        "train.eval_batches": 2, "train.checkpoint_every": 6, "train.warmup_steps": 2, "train.lr": 0.01,
    }
    for prefix in ("student.overrides", "teacher.codistill.model.overrides"):
        values.update({f"{prefix}.{k}": v for k, v in TINY_MODEL.items()})
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("distill-cache")


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "distill", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env)


QUICKSTART = str(REPO / "recipes" / "quickstart.yaml")

# A local teacher server for the tests (distill.serve's launcher, with this checkout first
# on the path of the server's process).
from distill.serve import free_port, stop_server  # noqa: E402


def start_teacher_server(model_dir: Path, port: int, *extra: str, env: dict | None = None,
                         timeout: float = 120) -> subprocess.Popen:
    from distill.serve import launch

    return launch(model_dir, port, *extra, env={"PYTHONPATH": str(REPO), **(env or {})},
                  timeout=timeout)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, cache_dir) -> Path:
    """One uninterrupted tiny codistillation run through the CLI, shared by many tests:
    its student/ also serves as a small local checkpoint (teacher, pretrained student)."""
    out = tmp_path_factory.mktemp("runs") / "full"
    result = run_cli("run", QUICKSTART, *tiny_overrides(out, cache_dir, **{"train.max_steps": 24}))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def teacher_server(finished_run: Path):
    """The finished run's student served by `distill serve-teacher` on a free loopback
    port, for the session: yields its base URL."""
    port = free_port()
    process = start_teacher_server(finished_run / "student", port, "--model", "tiny-teacher")
    yield f"http://127.0.0.1:{port}"
    stop_server(process)
