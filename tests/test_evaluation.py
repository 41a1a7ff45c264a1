"""distill.evaluation.evaluate_lm, on stub models whose next-token distributions are fixed
tables, so every expected value is written out by hand."""

from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from distill.evaluation import evaluate_lm


class Bigram(torch.nn.Module):
    """A causal LM whose logits at a position depend on the input token there only:
    ``logits = table[input_ids]``; with ``router``, also MoE router logits
    ``router[input_ids]`` for one layer, as transformers returns them (tokens, experts)."""

    def __init__(self, table: torch.Tensor, router: torch.Tensor | None = None) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())
        self.router = router
        experts = {} if router is None else {"num_local_experts": router.shape[-1],
                                            "num_experts_per_tok": 1, "num_hidden_layers": 1}
        self.config = SimpleNamespace(**experts)

    def forward(self, input_ids, output_router_logits=False):
        out = SimpleNamespace(logits=self.table[input_ids])  # (batch, seq, vocab)
        if output_router_logits:
            out.router_logits = (self.router[input_ids].reshape(-1, self.router.shape[-1]),)
        return out


def _log(probs: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is exactly ``probs`` (each row sums to 1)."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


# next-token distributions of the student after tokens 0, 1, 2
STUDENT = [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5]]
# inputs (0 1 2) and (2 2 1); targets (1 2 0) and (2 1 ignored)
BLOCKS = torch.tensor([[0, 1, 2, 0], [2, 2, 1, -100]])


def test_loss_and_calibration_by_hand():
    result = evaluate_lm(Bigram(_log(STUDENT)), BLOCKS, batch_size=1)
    # probability of each target: after 0 -> 1: 0.2, 1 -> 2: 0.3, 2 -> 0: 0.25, 2 -> 2: 0.5,
    # 2 -> 1: 0.25; the ignored target is not counted
    loss = -(math.log(0.2) + math.log(0.3) + math.log(0.25) + math.log(0.5) + math.log(0.25)) / 5
    assert result["tokens"] == 5
    assert result["val_loss"] == pytest.approx(loss, rel=1e-6)
    assert result["val_ppl"] == pytest.approx(math.exp(loss), rel=1e-6)
    # top-1 confidences 0.7 (wrong), 0.6 (wrong), 0.5 three times (once right): the three
    # share a bin, whose accuracy 1/3 is compared with its mean confidence 0.5
    ece = (abs(0 - 0.7) + abs(0 - 0.6) + 3 * abs(1 / 3 - 0.5)) / 5
    assert result["ece"] == pytest.approx(ece, rel=1e-6)
    assert "kl_to_teacher" not in result and "expert_load" not in result


def test_certain_and_right_is_calibrated():
    # confidence 1 (the last bin's closed end) and always right: loss 0, ECE 0
    blocks = torch.tensor([[1, 1, 1, 1], [2, 2, 2, 2]])
    result = evaluate_lm(Bigram(100.0 * torch.eye(3)), blocks)
    assert result["val_loss"] == pytest.approx(0.0, abs=1e-6)
    assert result["ece"] == pytest.approx(0.0, abs=1e-6) and result["tokens"] == 6


def test_agreement_and_kl_to_a_padded_reference_by_hand():
    teacher = [[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]
    # one more head row than the student has: padding, which must be cut, not normalised over
    padded = torch.cat([_log(teacher), torch.full((3, 1), 5.0)], dim=1)
    result = evaluate_lm(Bigram(_log(STUDENT)), BLOCKS, batch_size=2,
                         reference=Bigram(padded))

    def kl(p, q):
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))

    # the scored positions follow tokens 0, 1, 2, 2, 2 (the one after the last 1 is ignored)
    expected = (kl(teacher[0], STUDENT[0]) + kl(teacher[1], STUDENT[1])
                + 3 * kl(teacher[2], STUDENT[2])) / 5
    assert result["kl_to_teacher"] == pytest.approx(expected, rel=1e-5)
    # argmaxes agree after 0 (0 = 0) and 2 (2 = 2), not after 1 (teacher 0, student 1)
    assert result["top1_agreement"] == pytest.approx(4 / 5)
    same = evaluate_lm(Bigram(_log(STUDENT)), BLOCKS, reference=Bigram(_log(STUDENT)))
    assert same["kl_to_teacher"] == pytest.approx(0.0, abs=1e-7)
    assert same["top1_agreement"] == 1.0


def test_expert_load_by_hand():
    # one MoE layer, 2 experts, top-1: tokens 0 and 2 go to expert 0, token 1 to expert 1
    router = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    lm = Bigram(_log(STUDENT), router)
    result = evaluate_lm(lm, BLOCKS, expert_load=True)
    # every input token is routed, also the one whose target is ignored: 0 1 2 / 2 2 1
    assert result["expert_load"] == [pytest.approx([4 / 6, 2 / 6])]
    assert "expert_load" not in evaluate_lm(lm, BLOCKS)
    assert "expert_load" not in evaluate_lm(Bigram(_log(STUDENT)), BLOCKS, expert_load=True)


class SimulatedProcess:
    """Stands in for one process's accelerate Accelerator. The processes of a world run
    one after another, the rank 0 last: each reduce records its values in ``log``, and
    rank 0 gets, per call, the sum over all ranks, as an all-reduce would give it."""

    device = torch.device("cpu")

    def __init__(self, rank: int, world: int, log: dict) -> None:
        self.process_index, self.num_processes, self.log = rank, world, log
        self.calls = self.autocasts = 0

    def autocast(self):
        self.autocasts += 1
        return contextlib.nullcontext()

    def reduce(self, value, reduction: str = "sum"):
        assert reduction == "sum"
        self.log.setdefault(self.calls, []).append(value)
        self.calls += 1
        return value if self.process_index else _sum(self.log[self.calls - 1])


def _sum(values: list):
    if isinstance(values[0], dict):
        return {key: _sum([v[key] for v in values]) for key in values[0]}
    return sum(values[1:], values[0].clone())


def _in_world(world: int, *args, **kwargs) -> tuple[dict, list[SimulatedProcess]]:
    log: dict = {}
    processes = [SimulatedProcess(rank, world, log) for rank in reversed(range(world))]
    results = [evaluate_lm(args[0], args[1], process, *args[2:], **kwargs)
               for process in processes]
    return results[-1], processes


@pytest.mark.parametrize("world", [2, 4])
def test_processes_together_give_what_one_gives(world: int):
    generator = torch.Generator().manual_seed(0)
    lm = Bigram(torch.randn(7, 7, generator=generator) * 2,
                router=torch.randn(7, 3, generator=generator))
    teacher = Bigram(torch.randn(7, 9, generator=generator) * 2)
    blocks = torch.randint(0, 7, (5, 9), generator=generator)
    blocks[[1, 3], -1] = -100  # ignored targets (never inputs: they end their blocks)
    alone = evaluate_lm(lm, blocks, None, 2, expert_load=True, reference=teacher)
    # 3 batches of 2, 2 and 1 blocks: with 4 processes, one gets none
    together, processes = _in_world(world, lm, blocks, 2, expert_load=True, reference=teacher)
    assert together.keys() == alone.keys()
    assert together.pop("expert_load") == alone.pop("expert_load")  # ratios of counts: exact
    for key, value in alone.items():
        assert together[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert sum(p.autocasts for p in processes) == 3  # each batch ran under autocast once
    # and the token-weighted loss is the plain mean cross-entropy over the valid targets
    inputs, labels = blocks[:, :-1], blocks[:, 1:]
    nll = F.cross_entropy(lm.table[inputs].reshape(-1, 7).double(), labels.reshape(-1),
                          ignore_index=-100, reduction="sum")
    assert alone["tokens"] == 5 * 8 - 2
    assert alone["val_loss"] == pytest.approx(nll.item() / (5 * 8 - 2), rel=1e-6)


def test_max_batches_caps_before_sharding():
    blocks = torch.randint(0, 3, (6, 5), generator=torch.Generator().manual_seed(1))
    lm = Bigram(_log(STUDENT))
    first_two = evaluate_lm(lm, blocks[:4], batch_size=2)
    assert evaluate_lm(lm, blocks, batch_size=2, max_batches=2) == first_two
    together, _ = _in_world(2, lm, blocks, 2, 2)
    assert together["tokens"] == first_two["tokens"] == 16
    assert together["val_loss"] == pytest.approx(first_two["val_loss"], rel=1e-9)
