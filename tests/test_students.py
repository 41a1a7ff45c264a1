"""Students: presets, config files, pretrained and from-teacher initialisation, PEFT,
router load balancing and expert load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import students
from distill.errors import UserError
from distill.metrics import read_metrics
from distill.recipe import load_recipe
from distill.train import run
from tests.conftest import QUICKSTART, TINY_MODEL, tiny_overrides


def _recipe(out: Path, cache_dir: Path, **extra):
    return load_recipe(QUICKSTART, tiny_overrides(out, cache_dir, **{
        "train.max_steps": 4, "train.checkpoint_every": 0, "train.eval_every": 0, **extra}))


@pytest.mark.parametrize("name, layers, experts, moe_every", [
    ("scout-tiny", 2, 16, 1), ("maverick-tiny", 2, 128, 2), ("behemoth-tiny", 4, 16, 1),
    ("scout", 48, 16, 1), ("maverick", 48, 128, 2), ("behemoth", 96, 16, 1)])
def test_presets_keep_the_llama4_layer_patterns(name, layers, experts, moe_every):
    config = students.model_config(name, {}, vocab_size=100)
    assert config.num_hidden_layers == layers and config.num_local_experts == experts
    assert config.moe_layers == list(range(moe_every - 1, layers, moe_every))
    assert config.no_rope_layers[3::4] == [0] * len(config.no_rope_layers[3::4])  # iRoPE
    assert config.vocab_size == 100  # the tokenizer's, whatever the preset says


def test_config_files_yaml_fields_and_transformers_config_json(tmp_path: Path, cache_dir):
    fields = tmp_path / "student.yaml"
    fields.write_text(yaml.safe_dump({**students.PRESETS["scout-tiny"], **TINY_MODEL,
                                      "num_hidden_layers": 3}))
    config = students.model_config("scout-tiny", {"num_local_experts": 2}, 50,
                                   config_file=str(fields))
    assert config.num_hidden_layers == 3 and config.num_local_experts == 2
    from transformers import LlamaConfig

    llama = tmp_path / "llama"
    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1).save_pretrained(llama)
    out = tmp_path / "run"
    result = run(_recipe(out, cache_dir, **{"student.config_file": str(llama / "config.json"),
                                            "student.overrides": "{}"}))
    saved = json.loads((out / "student" / "config.json").read_text())
    assert saved["model_type"] == "llama" and saved["vocab_size"] == 512
    assert result.final_val_loss < result.first_val_loss
    with pytest.raises(UserError, match="Did you mean 'num_hidden_layers'"):
        _recipe(out, cache_dir, **{"student.config_file": str(fields),
                                   "student.overrides.num_hidden_layer": 2})
    with pytest.raises(UserError, match="config file not found"):
        _recipe(out, cache_dir, **{"student.config_file": str(tmp_path / "missing.yaml")})


def test_from_teacher_copies_chosen_layers_and_experts():
    torch.manual_seed(0)
    teacher = students.build_model(students.model_config(
        "scout-tiny", {**TINY_MODEL, "num_hidden_layers": 4}, vocab_size=40))
    student = students.build_model(students.model_config(
        "scout-tiny", {**TINY_MODEL, "num_local_experts": 2}, vocab_size=40))
    report = students.init_from_teacher(student, teacher, layers=None, experts=[3, 1])
    assert report["teacher_layers"] == [0, 3] and report["skipped"] == []
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["model.embed_tokens.weight"], t["model.embed_tokens.weight"])
    assert torch.equal(s["model.layers.1.self_attn.q_proj.weight"],
                       t["model.layers.3.self_attn.q_proj.weight"])
    experts = "feed_forward.experts.gate_up_proj"
    assert torch.equal(s[f"model.layers.1.{experts}"], t[f"model.layers.3.{experts}"][[3, 1]])
    assert torch.equal(s["model.layers.0.feed_forward.router.weight"],
                       t["model.layers.0.feed_forward.router.weight"][[3, 1]])
    narrow = students.build_model(students.model_config(
        "scout-tiny", {**TINY_MODEL, "hidden_size": 16, "head_dim": 8}, vocab_size=40))
    partial = students.init_from_teacher(narrow, teacher, layers=[0, 1], experts=None)
    assert any("shape" in line for line in partial["skipped"])


def test_from_teacher_end_to_end_writes_its_report(tmp_path: Path, cache_dir: Path):
    out = tmp_path / "run"
    run(_recipe(out, cache_dir, **{"student.init": "from_teacher",
                                   "teacher.codistill.model.overrides.num_hidden_layers": 4}))
    report = json.loads((out / "student_init.json").read_text())
    assert report["teacher_layers"] == [0, 3] and report["copied"]


def test_lora_student_saves_a_peft_adapter(finished_run: Path, tmp_path: Path, cache_dir):
    base = finished_run / "student"
    out = tmp_path / "lora"
    run(_recipe(out, cache_dir, **{
        "student.init": "pretrained", "student.name_or_path": str(base),
        "student.peft": "{peft_type: LORA, r: 4, lora_alpha: 8, target_modules: [q_proj, v_proj]}",
        "teacher.kind": "hf", "teacher.hf.name_or_path": str(base), "data.tokenizer": str(base)}))
    assert (out / "student" / "adapter_config.json").is_file()
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out / "student")
    lora = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert lora and any(model.get_parameter(n).abs().sum() > 0 for n in lora if "lora_B" in n)
    # the base weights did not move
    plain = AutoModelForCausalLM.from_pretrained(base)
    assert torch.equal(model.get_base_model().model.embed_tokens.weight,
                       plain.model.embed_tokens.weight)
    with pytest.raises(UserError, match="student.peft"):
        _recipe(out, cache_dir, **{"student.peft": "{r: 4}"})


def test_router_aux_loss_and_expert_load_are_logged(tmp_path: Path, cache_dir: Path):
    out = tmp_path / "aux"
    run(_recipe(out, cache_dir, **{"loss.router_aux_weight": 0.01, "train.eval_every": 2}))
    rows = read_metrics(out / "metrics.jsonl")
    train_rows = [r for r in rows if "loss" in r]
    assert all(r["router_aux"] >= 1.0 - 1e-6 for r in train_rows)  # 1 when balanced
    loads = [r["expert_load"] for r in rows if "val_loss" in r]
    assert len(loads) == 3 and len(loads[0]) == 2 and len(loads[0][0]) == 4
    assert all(sum(layer) == pytest.approx(1.0) for layer in loads[-1])
