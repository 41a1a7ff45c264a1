"""The efficient MoE forward against transformers' own ``Llama4TextMoe``.

Every expected value comes from running transformers' module on a deep copy of the same
weights and inputs; outputs and gradients (input, router, experts, shared expert) must
agree to float32's default ``assert_close`` tolerances (float64 for the loop fallback).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from transformers import Llama4ForCausalLM, Llama4TextConfig
from transformers.models.llama4.modeling_llama4 import Llama4TextMoe

import students.moe as moe_module
from students.moe import (
    EfficientLlama4TextMoe,
    efficient_moe_forward,
    enable_efficient_moe,
)


def _moe(num_experts: int, top_k: int, hidden: int = 32, expert_dim: int = 48,
         dtype: torch.dtype = torch.float32, seed: int = 0) -> Llama4TextMoe:
    torch.manual_seed(seed)
    config = Llama4TextConfig(hidden_size=hidden, intermediate_size=expert_dim,
                              num_local_experts=num_experts, num_experts_per_tok=top_k)
    moe = Llama4TextMoe(config).to(dtype)
    # transformers leaves gate_up_proj at zeros and down_proj uninitialised until
    # post_init; random weights make every term of the gradient non-trivial.
    with torch.no_grad():
        for param in moe.parameters():
            param.normal_(0.0, 0.2)
    return moe


def _run(moe: Llama4TextMoe, forward, x: torch.Tensor, grad_out: torch.Tensor):
    """Output, router logits and gradients of (output * grad_out).sum()."""
    moe = copy.deepcopy(moe)
    x = x.detach().clone().requires_grad_()
    out, router_logits = forward(moe, x)
    (out * grad_out).sum().backward()
    grads = {name: p.grad for name, p in moe.named_parameters()}
    return out, router_logits, x.grad, grads


def _assert_same_as_transformers(moe: Llama4TextMoe, x: torch.Tensor) -> dict:
    """Compare the efficient forward with transformers' on copies; returns its grads."""
    torch.manual_seed(1)
    grad_out = torch.randn(x.numel() // x.shape[-1], x.shape[-1], dtype=x.dtype)  # (tokens, hidden)
    ref_out, ref_logits, ref_dx, ref_grads = _run(moe, Llama4TextMoe.forward, x, grad_out)
    out, logits, dx, grads = _run(moe, efficient_moe_forward, x, grad_out)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(dx, ref_dx)
    assert set(grads) == set(ref_grads) == {
        "experts.gate_up_proj", "experts.down_proj", "router.weight",
        "shared_expert.gate_proj.weight", "shared_expert.up_proj.weight",
        "shared_expert.down_proj.weight"}
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name)
    return grads


@pytest.fixture(params=["grouped", "loop"])
def path(request, monkeypatch):
    """Run each case through torch's grouped_mm (where it exists) and the loop fallback."""
    if request.param == "loop":
        monkeypatch.setattr(moe_module, "_grouped_mm_works", lambda *args: False)
    return request.param


@pytest.mark.parametrize("num_experts, top_k", [(16, 1), (8, 2)])
def test_matches_transformers(path, num_experts, top_k):
    moe = _moe(num_experts, top_k)
    x = torch.randn(3, 40, 32)  # (batch, seq, hidden): the forward flattens the tokens
    grads = _assert_same_as_transformers(moe, x)
    assert grads["router.weight"].abs().sum() > 0  # the router really gets a gradient


@pytest.mark.parametrize("top_k", [1, 2])
def test_experts_without_tokens(path, top_k):
    """Only experts 0..3 are routed to; the others must get exactly zero gradient."""
    moe = _moe(8, top_k)
    tokens = torch.arange(60)
    x = 0.1 * torch.randn(60, 32)
    # Router row e reads coordinate e for e < 4, rows 4..7 are zero (logit 0): token t's
    # logits are about 5 for expert t % 4 and 4 for expert (t + 1) % 4, near 0 elsewhere.
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[:4, :4] = torch.eye(4)
    x[tokens, tokens % 4] += 5.0
    x[tokens, (tokens + 1) % 4] += 4.0
    chosen = torch.topk(x @ moe.router.weight.T, top_k, dim=1).indices
    assert set(chosen.unique().tolist()) == set(range(4))

    grads = _assert_same_as_transformers(moe, x)
    assert torch.count_nonzero(grads["experts.gate_up_proj"][4:]) == 0
    assert torch.count_nonzero(grads["experts.down_proj"][4:]) == 0
    assert torch.count_nonzero(grads["experts.down_proj"][:4]) > 0


def test_float64_and_unaligned_sizes_use_the_fallback():
    """grouped_mm takes no float64 and needs 16-byte aligned rows (hidden 30 in float32
    is 120 bytes): both must fall back to the loop and still match."""
    cpu, f32, f64 = torch.device("cpu"), torch.float32, torch.float64
    assert not moe_module._grouped_mm_works(cpu, f64, f64, 32, 96)
    assert not moe_module._grouped_mm_works(cpu, f32, f32, 30, 42)
    _assert_same_as_transformers(_moe(8, 2, dtype=f64), torch.randn(50, 32, dtype=f64))
    _assert_same_as_transformers(_moe(8, 2, hidden=30, expert_dim=21), torch.randn(50, 30))


def test_does_not_advance_the_global_rng():
    """The grouped_mm trial runs on first use; it must not shift the random stream that
    dropout and data shuffling draw from."""
    moe, x = _moe(8, 2), torch.randn(20, 32)
    moe_module._grouped_mm_works.cache_clear()
    state = torch.get_rng_state()
    efficient_moe_forward(moe, x)
    assert torch.equal(torch.get_rng_state(), state)


def _tiny_lm(seed: int = 0) -> Llama4ForCausalLM:
    torch.manual_seed(seed)
    config = Llama4TextConfig(vocab_size=50, hidden_size=32, intermediate_size=32,
                              intermediate_size_mlp=64, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=1, head_dim=16, num_local_experts=4,
                              interleave_moe_layer_step=1, bos_token_id=None, eos_token_id=0,
                              pad_token_id=None)
    return Llama4ForCausalLM(config).eval()  # eval: no dropout, so runs are comparable


def _lm_step(model: Llama4ForCausalLM, input_ids: torch.Tensor):
    model.zero_grad()
    out = model(input_ids=input_ids, labels=input_ids, output_router_logits=True)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out, grads


def test_whole_model_same_logits_router_logits_and_gradients():
    reference = _tiny_lm()
    model = copy.deepcopy(reference)
    keys = list(reference.state_dict())
    assert enable_efficient_moe(model) == 2
    assert enable_efficient_moe(model) == 2  # idempotent
    assert all(type(layer.feed_forward) is EfficientLlama4TextMoe for layer in model.model.layers)
    assert list(model.state_dict()) == keys
    # A class swap, not a bound method: copies and pickles keep the efficient forward.
    assert type(copy.deepcopy(model).model.layers[1].feed_forward) is EfficientLlama4TextMoe
    unpickled = pickle.loads(pickle.dumps(model))
    assert type(unpickled.model.layers[1].feed_forward) is EfficientLlama4TextMoe

    input_ids = torch.randint(0, 50, (2, 12))
    ref_out, ref_grads = _lm_step(reference, input_ids)
    out, grads = _lm_step(model, input_ids)
    torch.testing.assert_close(out.logits, ref_out.logits)
    torch.testing.assert_close(out.loss, ref_out.loss)
    # The router is still called as a module, so transformers' hooks record its logits.
    assert len(out.router_logits) == len(ref_out.router_logits) == 2
    for got, expected in zip(out.router_logits, ref_out.router_logits):
        assert got.shape == (24, 4)
        torch.testing.assert_close(got, expected)
    assert set(grads) == set(ref_grads)
    assert any("experts.gate_up_proj" in name for name in grads)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], msg=name)


def test_save_pretrained_round_trip(tmp_path):
    reference = _tiny_lm()
    reference.save_pretrained(tmp_path / "plain")
    model = copy.deepcopy(reference)
    enable_efficient_moe(model)
    model.save_pretrained(tmp_path / "efficient")

    # The checkpoint written by a patched model is the plain model's checkpoint.
    plain = Llama4ForCausalLM.from_pretrained(tmp_path / "plain")
    loaded = Llama4ForCausalLM.from_pretrained(tmp_path / "efficient")
    assert type(loaded.model.layers[0].feed_forward) is Llama4TextMoe  # loads unpatched
    assert list(loaded.state_dict()) == list(plain.state_dict())
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0, msg=name)

    input_ids = torch.randint(0, 50, (1, 10))
    with torch.no_grad():
        expected = reference(input_ids=input_ids).logits
        assert enable_efficient_moe(loaded) == 2
        torch.testing.assert_close(loaded.eval()(input_ids=input_ids).logits, expected)
