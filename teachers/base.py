"""The contract every teacher kind implements, and the loop calls without knowing the kind.

A teacher's life in a run:

1. ``build``: the kind's factory makes it from its recipe section and a
   :class:`TeacherSetup` (the run's facts: vocabulary, where caches live, how to make an
   optimizer). Nothing is set on it from outside afterwards.
2. ``prepare(placement)``: once, after the student is prepared: place it on the device,
   shard it, fill its cache, or prepare its own module and optimizer.
3. ``outputs(batch)``: for every micro-batch, what the student learns from (a
   :class:`~losses.outputs.TeacherOutput`, or None without a teacher). A teacher that
   trains runs its own forward and backward here.
4. After the step's backward: ``step_terms()`` (what it logs), then ``optimizer_step`` or,
   when the loop skips the step, ``discard_step``.
5. At the end, ``trained_model()``: a model the run trained besides the student, saved
   beside it; None for a frozen teacher.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from losses.outputs import ModelOutput, TeacherOutput

Tensor = torch.Tensor


@dataclass(frozen=True, eq=False)
class MicroBatch:
    """One forward pass's worth of the training data (compared by identity)."""

    input_ids: Tensor      # (batch, seq)
    labels: Tensor         # (batch, seq); -100 where there is no target
    block_indices: Tensor  # (batch,) rows of the training blocks (a cache reads by them)
    step: int = 0          # the optimizer step it belongs to (0-based)
    step_tokens: int = 1   # valid targets of that whole step: all micro-batches and processes
    # On-policy rows (distill/rollout.py): True where the label is a token the student
    # sampled, not the data's; None when no row of this micro-batch was generated.
    generated: Tensor | None = None  # (batch, seq) bool
    # The step's valid targets that are data, not generated; None: all of step_tokens.
    step_data_tokens: int | None = None

    @property
    def hard_labels(self) -> Tensor:
        """The labels with generated positions ignored (-100): what a model that learns the
        data (a codistilled teacher) trains on. The labels themselves without rollouts."""
        if self.generated is None:
            return self.labels
        return self.labels.masked_fill(self.generated, -100)

    @property
    def hard_step_tokens(self) -> int:
        """The step's valid targets of ``hard_labels``, the normaliser of a data-only loss."""
        return self.step_tokens if self.step_data_tokens is None else self.step_data_tokens


@dataclass(frozen=True)
class TeacherSetup:
    """The run's facts a teacher kind may read when it is built; each reads what it needs."""

    vocab_rows: int                  # the shared vocabulary: output rows the loss compares
    efficient_moe: bool = True       # Llama 4 MoE layers through the routed-tokens forward
    cache_root: Path = Path(".")     # the data cache, default home of cached outputs
    # A recipe model section -> its transformers config, sized to the tokenizer.
    model_config: Callable[[Any], Any] | None = None
    # (model, peak learning rate) -> (optimizer, LR scheduler), as the student gets them.
    make_optimizer: Callable[[torch.nn.Module, float], tuple[Any, Any]] | None = None
    chunk_size: int = 256            # tokens per chunk of the fused loss
    max_grad_norm: float = 1.0       # gradient clipping of a model that trains
    # Paths whose own code may run when they load (the recipe's trust_remote_code).
    trust_remote_code: tuple[str, ...] = ()
    tokenizer: Any = None            # the data's tokenizer (a served teacher checks its own)
    block_size: int | None = None    # tokens per training sequence (a served teacher checks
    #                                  that the server's context holds them)
    output_dir: Path | None = None   # the run's directory (a cache may live under it)


@dataclass
class Placement:
    """What ``prepare`` gets: the accelerator, the training blocks (a cache is filled over
    them), whether the loss takes hidden states (``hidden``: answer with
    :class:`~losses.outputs.HiddenStates` where the model has a plain head), and the
    student's own outputs for a batch of input ids, without gradients (mutual learning),
    and ``blocks_read``: the rows of ``train_blocks`` the run will read, each once, in the
    order it first reads them (all micro-batches of all steps and processes); a callable,
    since only a teacher that precomputes (a cache) needs it. None: every block.
    ``train_digest``: the training blocks' digest, as the data's block cache recorded it
    when it wrote them (what a teacher cache is keyed by: never hashed again here)."""

    accelerator: Any
    train_blocks: Tensor                                   # (blocks, block_size + 1)
    hidden: bool = False
    student_outputs: Callable[[Tensor], ModelOutput] | None = None
    blocks_read: Callable[[], Tensor] | None = None       # () -> (n,) int64 block rows
    train_digest: str | None = None                       # the data's digest of train_blocks


class TeacherRefused(ValueError):
    """``prepare`` cannot go on because of a setting its message names (e.g. a cache the
    disk cannot hold): the run stops before any work, as for a bad recipe."""


class Teacher(abc.ABC):
    """Where the soft targets come from. Subclasses set the attributes below in their
    constructor and implement ``outputs`` and ``describe``; a teacher that trains also
    implements the training hooks, which are no-ops for a frozen one."""

    name_or_path: str | None = None  # a pretrained checkpoint (its tokenizer is checked)
    config: Any = None               # its transformers config; None without a model
    vocab_size: int | None = None    # rows of its output head; None without a model
    runs_ahead: bool = False         # outputs may be computed a micro-batch early, in a
    #                                  worker thread: frozen, and no collectives
    waits_on_io: bool = False        # its outputs mostly wait on I/O (a server): running
    #                                  ahead pays on a CPU too, where compute would compete

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for logs and model cards: what this teacher is."""

    def prepare(self, placement: Placement) -> None:
        """Place the teacher (or fill its cache, or prepare what it trains); called once."""

    @abc.abstractmethod
    def outputs(self, batch: MicroBatch) -> TeacherOutput | None:
        """What the student learns from for ``batch``, cut to the shared vocabulary."""

    def identity(self) -> dict[str, Any]:
        """What makes its outputs what they are, recorded in the run's fingerprint so that a
        resume against another teacher is refused: its model config by default."""
        return {} if self.config is None else {"config": self.config.to_dict()}

    def load_weights(self) -> torch.nn.Module:
        """The teacher's causal LM, loaded if it is not in memory (a student initialised
        ``from_teacher`` copies from it). Raises ValueError for a teacher without one."""
        raise ValueError(f"{self.describe()} has no weights to copy")

    # ---- a teacher that trains (no-ops for a frozen one)

    def step_terms(self) -> dict[str, Tensor]:
        """This process's share of the teacher's logged terms over the step's micro-batches
        so far (e.g. ``teacher_ce``); starts the next step's."""
        return {}

    def optimizer_step(self, step: int) -> None:
        """Step its optimizer and schedule after optimizer step ``step`` (1-based)."""

    def discard_step(self) -> None:
        """Drop the step's gradients (the loop skipped the step)."""

    def trained_model(self) -> torch.nn.Module | None:
        """A model this run trains besides the student (evaluated and saved like it)."""
        return None


class NoTeacher(Teacher):
    """``kind: none``: hard targets only (pretraining a teacher, or a baseline); also what a
    run builds instead of a teacher whose outputs it would weight by 0 throughout
    (``reason`` says so)."""

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason

    def describe(self) -> str:
        if self.reason:
            return f"none: trained on the data's next tokens alone ({self.reason})"
        return "none: trained on the data's next tokens alone"

    def outputs(self, batch: MicroBatch) -> None:
        return None
