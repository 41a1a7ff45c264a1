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
                 efficient_moe: bool = True) -> None:
        kwargs = {"dtype": DTYPES[dtype]}
        if device_map is not None:  # spread over devices by accelerate's big-model loading
            kwargs["device_map"] = device_map
        self.name_or_path = name_or_path
        self.device_map = device_map
        self.model = students.load_pretrained(name_or_path, efficient_moe, **kwargs)
        self.model.eval()
        self.model.requires_grad_(False)
        self.vocab_size = self.model.get_output_embeddings().weight.shape[0]
        self.output_device: torch.device | None = None

    def prepare(self, accelerator, train_blocks: torch.Tensor) -> None:
        self.output_device = accelerator.device
        if self.device_map is None:
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
