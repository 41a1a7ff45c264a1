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
from tests.conftest import (QUICKSTART, SCOUT_CONFIG, SCOUT_TEXT_CONFIG, TINY_MODEL,
                            tiny_overrides, write_config)


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


def _autoconfig_text(path: Path, **tokenizer) -> dict:
    """What transformers itself makes of ``path``: AutoConfig's text model, as a dict, with
    the fields a run takes from the tokenizer and the dtype it decides replaced."""
    from transformers import AutoConfig

    text = AutoConfig.from_pretrained(path).get_text_config().to_dict()
    return {**text, **tokenizer, "bos_token_id": None, "dtype": None, "_name_or_path": ""}


@pytest.mark.parametrize("config", [SCOUT_TEXT_CONFIG, SCOUT_CONFIG], ids=["text", "multimodal"])
def test_published_llama4_config_files_read_as_transformers_reads_them(tmp_path: Path, config):
    path = write_config(tmp_path / "scout", config)
    for source in (path, path.parent):                    # the file or its directory
        built = students.model_config("scout-tiny", {}, 512, eos_token_id=3, pad_token_id=0,
                                      config_file=str(source))
        assert type(built).__name__ == "Llama4TextConfig"
        assert built.to_dict() == _autoconfig_text(path, vocab_size=512, eos_token_id=3,
                                                   pad_token_id=0)
    # by hand, from the file: the legacy rope_theta and rope_scaling became rope_parameters
    assert built.rope_parameters == {**SCOUT_TEXT_CONFIG["rope_scaling"], "rope_theta": 500000.0}
    assert (built.num_hidden_layers, built.num_local_experts) == (4, 4)
    assert built.moe_layers == [0, 1, 2, 3] and built.no_rope_layers == [1, 1, 1, 0]
    assert built.layer_types == ["chunked_attention"] * 3 + ["full_attention"]
    assert built.vocab_size == 512 and built.dtype is None  # tokenizer's; the run's float32


def test_multimodal_llama4_config_file_trains(tmp_path: Path, cache_dir: Path):
    path = write_config(tmp_path / "scout", SCOUT_CONFIG)
    out = tmp_path / "run"
    result = run(_recipe(out, cache_dir, **{"student.config_file": str(path)}))
    assert result.final_val_loss < result.first_val_loss
    saved = json.loads((out / "student" / "config.json").read_text())
    assert saved["model_type"] == "llama4_text" and saved["vocab_size"] == 512
    assert saved["rope_parameters"] == {**SCOUT_TEXT_CONFIG["rope_scaling"], "rope_theta": 500000.0}
    # the recipe's tiny overrides on top of the file's text model: 32 wide, 4 layers, 4 experts
    assert (saved["hidden_size"], saved["num_hidden_layers"]) == (32, 4)
    assert saved["num_local_experts"] == 4
    from safetensors import safe_open

    with safe_open(str(out / "student" / "model.safetensors"), "pt") as weights:
        assert {weights.get_slice(n).get_dtype() for n in weights.keys()} == {"F32"}


def test_unknown_keys_name_the_file_or_the_override(tmp_path: Path, cache_dir: Path):
    text = write_config(tmp_path / "text", {**SCOUT_TEXT_CONFIG, "num_hidden_layer": 2})
    both = write_config(tmp_path / "both", {
        **SCOUT_CONFIG, "text_config": {**SCOUT_TEXT_CONFIG, "num_hidden_layer": 2}})
    for path, key in ((text, "num_hidden_layer"), (both, "text_config.num_hidden_layer")):
        with pytest.raises(ValueError) as error:
            students.model_config("scout-tiny", {}, 512, config_file=str(path))
        assert str(error.value).startswith(f"{path}: unknown key '{key}'")
        assert "Did you mean 'num_hidden_layers'?" in str(error.value)
        assert "overrides" not in str(error.value)
        with pytest.raises(UserError, match=f"student: {path}: unknown key '{key}'"):
            _recipe(tmp_path / "run", cache_dir, **{"student.config_file": str(path)})
    good = write_config(tmp_path / "good", SCOUT_CONFIG)
    with pytest.raises(ValueError, match=r"^unknown key 'overrides.num_hidden_layer'.*Did you "
                                         r"mean 'num_hidden_layers'\?"):
        students.model_config("scout-tiny", {"num_hidden_layer": 2}, 512, config_file=str(good))
    with pytest.raises(UserError, match="student: unknown key 'overrides.num_hidden_layer'"):
        _recipe(tmp_path / "run", cache_dir, **{"student.config_file": str(good),
                                                "student.overrides.num_hidden_layer": 2})


def test_config_json_keeps_and_refuses_what_autoconfig_does(tmp_path: Path):
    # leftovers a published config.json carries and AutoConfig keeps are kept; misspellings not
    from transformers import AutoConfig, GPT2Config

    GPT2Config(n_embd=32, n_layer=2, n_head=2).save_pretrained(tmp_path / "gpt2")
    gpt2 = json.loads((tmp_path / "gpt2" / "config.json").read_text())
    kept = write_config(tmp_path / "kept", {**gpt2, "n_ctx": 1024})   # as GPT-2's own file
    assert students.model_config("scout-tiny", {}, 512, config_file=str(kept)).n_layer == 2
    misspelt = write_config(tmp_path / "misspelt", {**gpt2, "n_layers": 4})
    with pytest.raises(ValueError, match=f"{misspelt}: unknown key 'n_layers'.*'n_layer'"):
        students.model_config("scout-tiny", {}, 512, config_file=str(misspelt))
    # the file as published says attn_temperature_tuning: 4; transformers 5 refuses it too
    published = write_config(tmp_path / "published", {**SCOUT_TEXT_CONFIG,
                                                      "attn_temperature_tuning": 4})
    with pytest.raises(ValueError, match=f"{published}: invalid model config: .*"
                                         "'attn_temperature_tuning' expected bool, got int"):
        students.model_config("scout-tiny", {}, 512, config_file=str(published))
    with pytest.raises(Exception, match="attn_temperature_tuning"):
        AutoConfig.from_pretrained(published)


@pytest.mark.parametrize("key", ["student", "teacher.codistill.model"])
@pytest.mark.parametrize("override, problem", [
    ("num_attention_heads=0", "ZeroDivisionError"),
    ("hidden_size=-64", "negative dimension -64"),
    # shapes that only meet in the forward: scout-tiny has 16 experts and 4 query heads
    ("num_local_experts=0", "cannot run"),
    ("num_experts_per_tok=17", "cannot run"),
    ("num_key_value_heads=3", "cannot run"),
])
def test_impossible_model_shapes_are_refused_before_any_work(key, override, problem):
    name, value = override.split("=")
    with pytest.raises(UserError, match=rf"^{key}.overrides \{{.*'{name}': {value}.*\}} "
                                        rf"\(on preset 'scout-tiny'\): .*{problem}"):
        load_recipe(QUICKSTART, [f"{key}.overrides.{override}"])


def test_config_files_that_are_no_causal_lm_or_no_model_are_refused(tmp_path: Path):
    from transformers import LlamaConfig, T5Config, ViTConfig

    T5Config(d_model=32, d_ff=64, num_layers=1, num_heads=2).save_pretrained(tmp_path / "t5")
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=32).save_pretrained(tmp_path / "vit")
    for key in ("student", "teacher.codistill.model"):
        for name, cls in (("t5", "T5Config"), ("vit", "ViTConfig")):
            path = tmp_path / name
            with pytest.raises(UserError, match=rf"^{key}.config_file \({path}\): a '{name}' "
                                                rf"config is not a causal language model.*{cls}"):
                load_recipe(QUICKSTART, [f"{key}.config_file={path}", f"{key}.overrides={{}}"])
    # a class that derives its head width divides by the heads: 0 heads is refused, not raised
    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2).save_pretrained(tmp_path / "llama")
    with pytest.raises(UserError, match=r"^student: invalid model config with overrides "
                                        r"\{'num_attention_heads': 0\}.*modulo by zero"):
        load_recipe(QUICKSTART, [f"student.config_file={tmp_path / 'llama'}",
                                 "student.overrides={num_attention_heads: 0}"])


@pytest.mark.parametrize("name", ["scout", "maverick", "behemoth"])
def test_published_presets_pass_the_meta_device_check(name):
    # the check that refuses impossible shapes builds and runs these at full size, on meta
    students.check_buildable(students.model_config(name, {}, vocab_size=202048))


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
