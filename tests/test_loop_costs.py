"""The loop's per-step costs cut without changing results: the logged terms reduced in one
collective, torch's fused AdamW, no KV cache built by the training and teacher forwards."""

from __future__ import annotations

import types

import pytest
import torch

from distill.train import _optimizer_and_schedule, _reduce_terms
from teachers.forward import lm_outputs


class _SumOverTwoProcesses:
    """An accelerator stand-in whose reduce sums as two processes holding the same values
    would, and which counts its collectives."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.calls = 0

    def reduce(self, tensor: torch.Tensor, reduction: str) -> torch.Tensor:
        assert reduction == "sum"
        self.calls += 1
        return tensor * 2


def test_reduce_terms_one_collective_exact_values():
    accelerator = _SumOverTwoProcesses()
    shares = {"loss": torch.tensor(1.25), "ce": torch.tensor(0.5, dtype=torch.float32),
              "tokens": torch.tensor(16_777_217, dtype=torch.int64),  # 2**24 + 1: not a float32
              "kd": torch.tensor([0.75])}
    reduced = _reduce_terms(accelerator, shares)
    assert accelerator.calls == 1
    assert reduced == {"loss": 2.5, "ce": 1.0, "tokens": 33_554_434.0, "kd": 1.5}
    assert all(type(v) is float for v in reduced.values())
    assert _reduce_terms(accelerator, {}) == {}


def _train_settings(**extra):
    return types.SimpleNamespace(weight_decay=0.01, lr_schedule="constant", warmup_steps=0,
                                 max_steps=10, **extra)


def test_optimizer_is_fused_adamw_and_steps_as_torch_reference():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    reference = torch.nn.Linear(8, 4)
    reference.load_state_dict(model.state_dict())
    optimizer, _ = _optimizer_and_schedule(model, 1e-2, _train_settings())
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    # the plain for-loop AdamW (neither fused nor foreach) is the reference
    plain = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.01,
                              foreach=False, fused=False)
    for step in range(3):
        x = torch.randn(5, 8, generator=torch.Generator().manual_seed(step))
        for m, opt in ((model, optimizer), (reference, plain)):
            opt.zero_grad()
            m(x).square().sum().backward()
            opt.step()
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


def test_optimizer_only_trainable_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)  # as under peft: frozen base weights
    optimizer, _ = _optimizer_and_schedule(model, 1e-3, _train_settings())
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model[1].parameters()}


@pytest.mark.parametrize("hidden", [False, True])
def test_lm_outputs_builds_no_kv_cache_and_keeps_outputs(hidden: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=1, tie_word_embeddings=False)).eval()
    assert lm.config.use_cache  # transformers' default: a cache whenever not told otherwise
    ids = torch.randint(0, 32, (2, 6))
    with torch.no_grad():
        own, out = lm_outputs(lm, ids, hidden)
        expected = lm(input_ids=ids, use_cache=True).logits
    assert out.past_key_values is None
    logits = own.hidden @ own.head.T if hidden else own.logits
    torch.testing.assert_close(logits, expected)
