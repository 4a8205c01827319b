"""Prompt building, label masking and batching, through a transformers processor.

The same code serves the tiny base and llava-hf models: the processor expands "<image>" into as many
image tokens as the model expects and prepares pixel values; the prompt comes from the model's chat
template when it has one, else from LLaVA-1.5's "USER: <image>\\n... ASSISTANT:". BOS is always the
first real token (the BranchLoRA selector routes on it), answers end with EOS, and only answer tokens
carry labels.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from branchlora.data.benchmark import TestExample, TrainExample, open_image

IGNORE_INDEX = -100
PROMPT_FORMATS = ("auto", "chat_template", "llava")
LLAVA_PROMPT = "USER: <image>\n{instruction} ASSISTANT:"


class Collator:
    """Turns examples into model inputs: `train_batch` for the loss, `prompt_batch` for `generate`."""

    def __init__(self, processor, max_length: int = 512, prompt_format: str = "auto") -> None:
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"unknown prompt_format {prompt_format!r}; choose one of {', '.join(PROMPT_FORMATS)}")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_length = max_length
        self.image_token = getattr(processor, "image_token", "<image>")
        has_template = bool(getattr(processor, "chat_template", None))
        if prompt_format == "chat_template" and not has_template:
            raise ValueError("prompt_format='chat_template' but the processor has no chat template")
        self.use_chat_template = prompt_format == "chat_template" or (prompt_format == "auto" and has_template)
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id  # llava-hf tokenizers define one; others may not
        self.bos_id, self.eos_id = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id

    def prompt_text(self, instruction: str) -> str:
        """The prompt up to and including the assistant's cue, without BOS."""
        if not self.use_chat_template:
            return LLAVA_PROMPT.format(instruction=instruction)
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
        text = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        bos = self.tokenizer.bos_token
        return text[len(bos) :] if bos and text.startswith(bos) else text

    def encode(self, texts: list[str], images: list[Image.Image]) -> tuple[list[list[int]], torch.Tensor]:
        """Token ids (image marker expanded, no special tokens added) and pixel values."""
        out = self.processor(text=texts, images=images, add_special_tokens=False, return_tensors=None)
        pixel_values = torch.as_tensor(np.stack(out["pixel_values"]))  # (B, 3, H, W)
        return [list(ids) for ids in out["input_ids"]], pixel_values

    def with_bos(self, ids: list[int]) -> list[int]:
        return ids if self.bos_id is None else [self.bos_id, *ids]

    def encode_train(self, images: list[Image.Image], instructions: list[str], answers: list[str]) -> dict:
        """Loss inputs for in-memory images (shared by task training and the base's caption pre-training)."""
        prompts = [self.prompt_text(i) for i in instructions]
        full, pixel_values = self.encode([f"{p} {a}" for p, a in zip(prompts, answers, strict=True)], images)
        heads, _ = self.encode(prompts, images)
        rows, labels = [], []
        for ids, head in zip(full, heads, strict=True):
            ids = self.with_bos(ids) + [self.eos_id]
            start = 1 + common_prefix(head, ids[1:]) if self.bos_id is not None else common_prefix(head, ids)
            ids = ids[: self.max_length]
            rows.append(ids)
            labels.append([IGNORE_INDEX] * min(start, len(ids)) + ids[start:])
        batch = pad(rows, self.pad_id, left=False)
        batch["labels"] = pad(labels, IGNORE_INDEX, left=False)["input_ids"]
        batch["pixel_values"] = pixel_values
        return batch

    def train_batch(self, examples: list[TrainExample]) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask, pixel_values, labels (-100 but on answer + EOS); right padding."""
        images = [open_image(e.image) for e in examples]
        return self.encode_train(images, [e.instruction for e in examples], [e.answer for e in examples])

    def prompt_batch(self, examples: list[TestExample | TrainExample]) -> dict[str, torch.Tensor]:
        """The prompts alone, left-padded so that generation continues every row at the same column."""
        images = [open_image(e.image) for e in examples]
        ids, pixel_values = self.encode([self.prompt_text(e.instruction) for e in examples], images)
        rows = [self.with_bos(row) for row in ids]
        if (longest := max(len(r) for r in rows)) > self.max_length:
            raise ValueError(f"a prompt has {longest} tokens, more than max_length={self.max_length}")
        batch = pad(rows, self.pad_id, left=True)
        batch["pixel_values"] = pixel_values
        return batch

    def decode(self, generated_ids: torch.Tensor) -> list[str]:
        """Text of the newly generated tokens (pass only those), special tokens and whitespace stripped."""
        return [t.strip() for t in self.tokenizer.batch_decode(generated_ids, skip_special_tokens=True)]


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the shared prefix: where the answer starts, robust to merges across the boundary."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def pad(rows: list[list[int]], value: int, *, left: bool) -> dict[str, torch.Tensor]:
    """Pad rows to one length; the mask marks real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return {"input_ids": ids, "attention_mask": mask}
