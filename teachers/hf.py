"""A frozen teacher: any causal LM that transformers can load with ``from_pretrained``."""

from __future__ import annotations

import torch

import students
from losses.outputs import TeacherOutput
from teachers.base import MicroBatch, Placement, Teacher, TeacherSetup
from teachers.forward import lm_outputs

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFTeacher(Teacher):
    """Loaded at construction (OSError when the checkpoint cannot be read), frozen, run
    without gradients; placed on the training device, spread over devices by
    ``device_map``, or sharded over the launch's processes (``shard``)."""

    def __init__(self, name_or_path: str, vocab_rows: int, dtype: str = "float32",
                 device_map: str | None = None, shard: bool = False,
                 efficient_moe: bool = True, trust_remote_code: bool = False) -> None:
        kwargs = {"dtype": DTYPES[dtype]}
        if device_map is not None:  # spread over devices by accelerate's big-model loading
            kwargs["device_map"] = device_map
        self.name_or_path = name_or_path
        self.vocab_rows = vocab_rows
        self.device_map = device_map
        self.shard = shard
        self.model = students.load_pretrained(name_or_path, efficient_moe, trust_remote_code,
                                              key="teacher.hf.name_or_path", **kwargs)
        self.model.eval()
        self.model.requires_grad_(False)
        if shard:
            _decoder_layers(self.model)  # refuse a model that cannot be sharded, now
        self.config = self.model.config
        self.vocab_size = self.model.get_output_embeddings().weight.shape[0]
        self.runs_ahead = True  # until prepare shards it: a sharded forward gathers layers
        self.hidden = False
        self.output_device: torch.device | None = None

    def describe(self) -> str:
        return f"`{self.name_or_path}` (frozen, online logits)"

    def prepare(self, placement: Placement) -> None:
        accelerator = placement.accelerator
        self.output_device = accelerator.device
        self.hidden = placement.hidden
        if self.shard and accelerator.num_processes > 1:
            report = shard_frozen(self.model, accelerator.device, accelerator.num_processes)
            self.runs_ahead = False
            if accelerator.is_main_process:
                print(f"distill: {report}")
        elif self.device_map is None:
            # evaluation_mode: placed on the device but never wrapped for gradient sync.
            self.model = accelerator.prepare_model(self.model, evaluation_mode=True)

    def outputs(self, batch: MicroBatch) -> TeacherOutput:
        return self.answer(batch.input_ids, self.hidden)

    def answer(self, input_ids: torch.Tensor, hidden: bool) -> TeacherOutput:
        """Its outputs for ``input_ids`` (batch, seq), on the training device."""
        # no_grad rather than inference_mode: inference tensors could not be saved for the
        # student's backward, and copying full logits out of them would cost a pass.
        with torch.no_grad():
            own, _ = lm_outputs(self.model, input_ids.to(self.model.device), hidden,
                                self.vocab_rows)
        return own.to(self.output_device) if self.output_device is not None else own

    def load_weights(self) -> torch.nn.Module:
        return self.model


def build(cfg, setup: TeacherSetup) -> HFTeacher:
    hf = cfg.hf
    return HFTeacher(hf.name_or_path, setup.vocab_rows, hf.dtype, hf.device_map, hf.shard,
                     setup.efficient_moe,
                     students.sources.is_trusted(hf.name_or_path, setup.trust_remote_code))


def check(cfg) -> None:
    """``kind: hf``: a checkpoint to load; shard and device_map are alternatives."""
    hf = cfg.hf
    if not hf.name_or_path:
        raise ValueError(f"teacher.hf.name_or_path: kind {cfg.kind!r} needs a checkpoint "
                         "directory or hub name.")
    if hf.shard and hf.device_map is not None:
        raise ValueError("teacher.hf.shard: choose one of shard (FSDP2 over the processes) "
                         f"and device_map ({hf.device_map!r}), not both.")
    if hf.shard and cfg.prefetch == "on":
        raise ValueError("teacher.prefetch: 'on' cannot run with teacher.hf.shard (the "
                         "sharded teacher's gathers are collectives, which a second thread "
                         "would interleave); use 'auto' or 'off'.")


def _decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    layers = getattr(students.decoder_of(model), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise ValueError(f"teacher.hf.shard: {type(model).__name__} has no base model with a "
                         "`layers` list to shard; use teacher.hf.device_map or a cached teacher.")
    return layers


def _local_numel(parameter: torch.Tensor) -> int:
    """Elements this process holds: a sharded (DTensor) parameter's local shard."""
    to_local = getattr(parameter, "to_local", None)
    return to_local().numel() if to_local is not None else parameter.numel()


def shard_frozen(model: torch.nn.Module, device: torch.device, num_processes: int) -> str:
    """Shard a frozen causal LM's decoder layers over the launch's processes with FSDP2.

    Each decoder layer is its own unit, gathered for its forward and freed after it, so a
    process holds 1/N of the layers' weights plus one gathered layer at a time. The base
    model (embeddings, final norm) is the root unit, which FSDP keeps gathered between
    forwards, and the output head stays a plain module on every process: the fused loss
    reads the whole head, and calling the base model directly (for hidden states) then
    goes through the root's hooks. Every process must run the teacher's forward the same
    number of times, in step (the loop does: each has the same micro-batches per step).
    Returns a line saying what each process holds.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    decoder = students.decoder_of(model)
    layers = _decoder_layers(model)
    total = sum(p.numel() for p in model.parameters())
    mesh = init_device_mesh(device.type, (num_processes,))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(decoder, mesh=mesh)
    decoder.unshard()  # the root stays gathered from its first forward on anyway: do it now
    for child in model.children():  # the head and anything else outside the base model
        if child is not decoder:
            child.to(device)
    held = sum(_local_numel(p) for p in model.parameters())
    return (f"teacher sharded over {num_processes} processes (FSDP2): {held:,} of {total:,} "
            f"parameters held by each process")
