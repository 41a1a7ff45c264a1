"""A frozen teacher: any causal LM that transformers can load with ``from_pretrained``."""

from __future__ import annotations

import torch

from students import decoder_of, fused_head

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFTeacher:
    trains = False
    optimizer = None
    scheduler = None

    def __init__(self, name_or_path: str, dtype: str = "float32") -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=DTYPES[dtype])
        self.model.eval()
        self.model.requires_grad_(False)
        self.vocab_size = self.model.config.vocab_size

    def prepare(self, accelerator) -> None:
        # evaluation_mode: placed on the device but never wrapped for gradient sync.
        self.model = accelerator.prepare_model(self.model, evaluation_mode=True)

    def outputs(self, input_ids: torch.Tensor, hidden: bool):
        with torch.inference_mode():
            if hidden and fused_head(self.model) is not None:
                states = decoder_of(self.model)(input_ids=input_ids).last_hidden_state
                return states, fused_head(self.model)
            logits = self.model(input_ids=input_ids).logits
        # Inference tensors cannot be saved for the student's backward; a plain copy can.
        return logits.clone()
