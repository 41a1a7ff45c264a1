"""A frozen teacher: any causal LM that transformers can load with ``from_pretrained``."""

from __future__ import annotations

import torch

import students

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFTeacher:
    trains = False
    optimizer = None
    scheduler = None

    def __init__(self, name_or_path: str, dtype: str = "float32", device_map: str | None = None,
                 efficient_moe: bool = True, shard: bool = False) -> None:
        kwargs = {"dtype": DTYPES[dtype]}
        if device_map is not None:  # spread over devices by accelerate's big-model loading
            kwargs["device_map"] = device_map
        self.name_or_path = name_or_path
        self.device_map = device_map
        self.shard = shard
        self.sharded = False
        self.model = students.load_pretrained(name_or_path, efficient_moe, **kwargs)
        self.model.eval()
        self.model.requires_grad_(False)
        self.vocab_size = self.model.get_output_embeddings().weight.shape[0]
        self.output_device: torch.device | None = None

    @property
    def runs_ahead(self) -> bool:
        return not self.sharded  # a sharded forward gathers layers: collectives

    def prepare(self, accelerator, train_blocks: torch.Tensor) -> None:
        self.output_device = accelerator.device
        if self.shard and accelerator.num_processes > 1:
            report = shard_frozen(self.model, accelerator.device, accelerator.num_processes)
            self.sharded = True
            if accelerator.is_main_process:
                print(f"distill: {report}")
        elif self.device_map is None:
            # evaluation_mode: placed on the device but never wrapped for gradient sync.
            self.model = accelerator.prepare_model(self.model, evaluation_mode=True)

    def outputs(self, batch: dict[str, torch.Tensor], hidden: bool):
        input_ids = batch["input_ids"].to(self.model.device)
        with torch.inference_mode():
            if hidden and students.fused_head(self.model) is not None:
                decoder = students.decoder_of(self.model)
                states = decoder(input_ids=input_ids).last_hidden_state
                head = students.fused_head(self.model)
                return states.to(self.output_device), head.to(self.output_device)
            logits = self.model(input_ids=input_ids).logits
        # Inference tensors cannot be saved for the student's backward; a plain copy can.
        return logits.to(self.output_device).clone()


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

    from distill.errors import UserError

    decoder = students.decoder_of(model)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise UserError(f"teacher.shard: {type(model).__name__} has no base model with a "
                        "`layers` list to shard; use teacher.device_map or a cached teacher.")
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
