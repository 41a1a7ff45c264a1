"""`distill inspect`: analytic counts against models built on the meta device, the published
sizes, the layer pattern, the memory plan worked by hand, and the CLI's good and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import Llama4ForCausalLM, MixtralConfig, MixtralForCausalLM

from distill import cli
from distill.errors import UserError
from distill.plan import describe, llama4_model, load_config
from distill.plan_report import format_report
from students import PRESETS, model_config
from tests.conftest import SCOUT_CONFIG, SCOUT_TEXT_CONFIG, run_cli, write_config


def _meta_counts(config) -> tuple[int, int]:
    """(total, active) of a real Llama4ForCausalLM on the meta device: every parameter once;
    a token uses top_k of the E routed experts' parameters in each MoE layer."""
    with torch.device("meta"):
        lm = Llama4ForCausalLM(config)
    total = sum(p.numel() for p in lm.parameters())
    e, k = config.num_local_experts, config.num_experts_per_tok
    routed = sum(p.numel() for n, p in lm.named_parameters() if ".feed_forward.experts." in n)
    assert routed % e == 0
    return total, total - routed // e * (e - k)


VARIANTS = [(name, {}) for name in PRESETS] + [
    ("scout-tiny", {"tie_word_embeddings": True, "attention_bias": True}),
    ("maverick-tiny", {"num_hidden_layers": 5, "moe_layers": [0, 3], "num_experts_per_tok": 2}),
    ("behemoth-tiny", {"num_key_value_heads": 4, "head_dim": 8, "intermediate_size": 48}),
]


@pytest.mark.parametrize("preset, overrides", VARIANTS,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(VARIANTS)])
def test_analytic_counts_equal_a_model_on_the_meta_device(preset, overrides):
    config = model_config(preset, overrides, PRESETS[preset]["vocab_size"])
    model = llama4_model(config, preset, "preset")
    assert (model.total, model.active) == _meta_counts(config)
    assert sum(x.params for x in model.layers) + model.params["embedding"] \
        + model.params["lm_head"] + config.hidden_size == model.total


@pytest.mark.parametrize("preset, total, active", [
    ("scout", 108e9, 17e9), ("maverick", 400e9, 17e9), ("behemoth", 2e12, 288e9)])
def test_published_sizes(preset, total, active):
    report = describe(preset)
    assert report["total_params"] == pytest.approx(total, rel=0.03)
    assert report["active_params"] == pytest.approx(active, rel=0.03)


def test_layer_pattern_follows_the_model_transformers_builds():
    config = model_config("maverick", {}, PRESETS["maverick"]["vocab_size"])
    with torch.device("meta"):
        lm = Llama4ForCausalLM(config)
    layers = describe("maverick")["layers"]
    assert len(layers) == 48
    for layer, module in zip(layers, lm.model.layers):
        assert (layer["ffn"] == "moe") == module.is_moe_layer == (layer["index"] % 2 == 1)
        # modeling_llama4: rotary embeddings only where no_rope_layers is 1
        assert layer["rope"] == bool(module.self_attn.use_rope) == (layer["index"] % 4 != 3)
        assert layer["attention"] == ("chunked" if layer["rope"] else "full")
        assert layer["experts"] == (128 if layer["ffn"] == "moe" else 0)
    text = format_report(describe("maverick"))
    assert "every 4 layers (layer % 4)" in text and "MoE 128 experts top-1" in text


def test_memory_plan_by_hand():
    m = describe("scout-tiny", context=1024, batch=2, chunk_size=4096)["memory"]
    # scout-tiny: H 64, q 4x16, kv 2x16, 16 experts of 128, top-1, a shared expert, 2 layers.
    # norms 4*64 + q,k,v,rotated,out 3*64+3*32 + router 2*16 + shared 4*128 + routed 2*64+4*128
    layer = 4 * 64 + 3 * 64 + 3 * 32 + 2 * 16 + 4 * 128 + (2 * 64 + 4 * 128)
    assert layer == 1728
    assert m["activation_bytes_per_token"] == {"no_checkpointing": 2 * (2 * layer + 128),
                                               "checkpointing": 2 * (2 * 64 + layer + 128)}
    tokens = 2048
    assert m["activation_bytes"]["checkpointing"] == tokens * 2 * (128 + layer + 128)
    assert m["logits_bytes"] == {"naive": tokens * 4096 * 4 * 8,
                                 "fused": tokens * 4096 * 4 * 8}  # chunk clamped to tokens
    total = describe("scout-tiny")["total_params"]
    assert m["training_state_bytes"] == 16 * total
    assert m["weights_bytes"] == {"bf16": 2 * total, "fp8": total, "int4": math.ceil(total / 2)}


def test_gpu_count_is_the_smallest_that_fits():
    m = describe("scout")["memory"]
    usable, state = 80 * 2 ** 30 * 0.9, m["training_state_bytes"]
    fixed = (m["activation_bytes"]["checkpointing"] + m["logits_bytes"]["fused"]
             + m["fused_gradient_buffers_bytes"])
    n = m["training_gpus"]["checkpointing"]["fused"]
    assert state / n + fixed <= usable < state / (n - 1) + fixed
    # 8192 tokens of activations without checkpointing exceed one 80 GiB GPU by themselves
    assert m["activation_bytes"]["no_checkpointing"] > usable
    assert m["training_gpus"]["no_checkpointing"] == {"naive": None, "fused": None}
    assert m["inference_gpus"]["bf16"] == math.ceil(2 * describe("scout")["total_params"] / usable)


def test_cli_json_for_a_preset():
    result = run_cli("inspect", "scout", "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert isinstance(report["total_params"], int) and isinstance(report["active_params"], int)
    assert report["total_params"] == _meta_counts(
        model_config("scout", {}, PRESETS["scout"]["vocab_size"]))[0]


def test_cli_config_file_and_checkpoint_directory(tmp_path: Path, capsys):
    fields = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
              "num_key_value_heads": 1, "head_dim": 16, "intermediate_size": 32,
              "intermediate_size_mlp": 64, "num_local_experts": 4, "vocab_size": 300,
              "interleave_moe_layer_step": 2}
    (tmp_path / "student.yaml").write_text("".join(f"{k}: {v}\n" for k, v in fields.items()))
    assert cli.main(["inspect", str(tmp_path / "student.yaml"), "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert [x["ffn"] for x in from_file["layers"]] == ["dense", "moe", "dense"]

    torch.manual_seed(0)
    lm = Llama4ForCausalLM(load_config(str(tmp_path / "student.yaml"))[0])
    lm.save_pretrained(tmp_path / "ckpt")
    assert cli.main(["inspect", str(tmp_path / "ckpt")]) == 0
    assert "checkpoint, llama4_text" in capsys.readouterr().out
    report = describe(str(tmp_path / "ckpt"))
    real = sum(p.numel() for p in lm.parameters())
    assert report["total_params"] == from_file["total_params"] == real
    # one of 4 experts per token in the one MoE layer
    assert report["active_params"] == real - 3 * 3 * 32 * 32


def test_any_causal_lm_is_counted_on_the_meta_device(tmp_path: Path):
    config = MixtralConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=1, intermediate_size=48, num_local_experts=4,
                           num_experts_per_tok=2, vocab_size=100)
    lm = MixtralForCausalLM(config)
    lm.save_pretrained(tmp_path)
    report = describe(str(tmp_path))
    real = sum(p.numel() for p in lm.parameters())
    # each layer: 4 experts of gate, up, down (3 x 32 x 48); a token uses 2 of them
    assert report["counting"] == "meta device" and report["total_params"] == real
    assert report["active_params"] == real - 2 * 2 * 3 * 32 * 48
    assert [x["ffn"] for x in report["layers"]] == ["moe", "moe"]


@pytest.mark.parametrize("config", [SCOUT_TEXT_CONFIG, SCOUT_CONFIG], ids=["text", "multimodal"])
def test_published_llama4_config_files_count_the_text_model(tmp_path: Path, config):
    from transformers import AutoConfig

    path = write_config(tmp_path / "scout", config)
    expected = AutoConfig.from_pretrained(path).get_text_config()   # transformers' own reading
    for source, kind in ((path, "config file"), (path.parent, "checkpoint")):
        loaded, found = load_config(str(source))
        assert found == kind
        assert loaded.to_dict() == {**expected.to_dict(), "_name_or_path": ""}
        report = describe(str(source))
        assert (report["model_type"], report["num_layers"]) == ("llama4_text", 4)
        assert (report["total_params"], report["active_params"]) == _meta_counts(expected)
    # the same text config as `distill run` builds, but for what the tokenizer and run decide
    run = model_config("scout-tiny", {}, 100, config_file=str(path)).to_dict()
    theirs = {"vocab_size", "eos_token_id", "pad_token_id", "bos_token_id", "dtype"}
    assert {k: v for k, v in run.items() if k not in theirs} \
        == {k: v for k, v in loaded.to_dict().items() if k not in theirs}


def test_misspelt_key_in_a_file_names_the_file(tmp_path: Path):
    path = write_config(tmp_path / "scout", {**SCOUT_CONFIG, "text_config": {
        **SCOUT_TEXT_CONFIG, "num_hidden_layer": 2}})
    with pytest.raises(UserError) as error:
        describe(str(tmp_path / "scout"))
    assert str(error.value).startswith(f"{path}: unknown key 'text_config.num_hidden_layer'")
    assert "Did you mean 'num_hidden_layers'?" in str(error.value)
    assert "overrides" not in str(error.value)


@pytest.mark.parametrize("args, message", [
    (["scoot"], "Did you mean 'scout'?"),
    (["no/such/dir"], "no such file or directory"),
    (["BAD_YAML"], "is not valid YAML"),
])
def test_cli_bad_input_exits_2_without_traceback(tmp_path: Path, args, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text("hidden_size: [64,\n")
    result = run_cli("inspect", *[str(bad) if a == "BAD_YAML" else a for a in args], timeout=120)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "must hold a mapping"),
    ("hiden_size: 64\n", "Did you mean 'hidden_size'?"),
    ("hidden_size: abc\n", "hidden_size"),
    ('{"model_type": "mixtrall"}', "Did you mean 'mixtral'?"),
    ('{"hidden_size": 64,', "is not valid JSON"),
])
def test_malformed_config_files(tmp_path: Path, content, message):
    path = tmp_path / ("c.json" if content.startswith("{") else "c.yaml")
    path.write_text(content)
    with pytest.raises(UserError, match=message.replace("?", r"\?").replace("[", r"\[")):
        describe(str(path))


def test_directory_without_config_and_bad_flags(tmp_path: Path):
    with pytest.raises(UserError, match="has no config.json"):
        describe(str(tmp_path))
    with pytest.raises(UserError, match="--context must be positive"):
        describe("scout-tiny", context=0)


def test_docs_show_the_current_output():
    docs = (Path(__file__).resolve().parent.parent / "docs" / "inspect.md").read_text()
    for name in ("behemoth", "scout"):
        assert f"$ .venv/bin/distill inspect {name}\n{format_report(describe(name))}\n```" \
            in docs


def test_a_run_directory_is_inspected_through_its_student(finished_run: Path, capsys):
    """`distill inspect RUN_DIR` as `distill eval RUN_DIR`: the saved student/, the same
    counts as inspecting student/ itself, the source saying which it was."""
    assert cli.main(["inspect", str(finished_run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    student = describe(str(finished_run / "student"))
    assert report["source"] == "run directory" and student["source"] == "checkpoint"
    assert report["name"] == str(finished_run)
    same = ("total_params", "active_params", "layers", "memory", "params", "vocab_size")
    assert {k: report[k] for k in same} == {k: student[k] for k in same}
    # counted independently: every parameter of the saved model
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(finished_run / "student")
    assert report["total_params"] == sum(p.numel() for p in saved.parameters())
    assert cli.main(["inspect", str(finished_run)]) == 0
    assert f"{finished_run} (run directory, llama4_text" in capsys.readouterr().out


def test_a_peft_student_names_its_base_model(tmp_path: Path):
    adapters = tmp_path / "run" / "student"
    adapters.mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text("seed: 0\n")
    (adapters / "adapter_config.json").write_text('{"base_model_name_or_path": "runs/q/student",'
                                                  ' "peft_type": "LORA"}')
    for target in (tmp_path / "run", adapters):
        with pytest.raises(UserError, match="holds PEFT adapters .adapter_config.json., not a "
                                            "model config; inspect its base model, "
                                            "'runs/q/student'"):
            describe(str(target))
