"""Prompt building, label masking and batching, through a transformers processor.

The same code serves the tiny base and llava-hf models: the processor expands "<image>" into as many
image tokens as the model expects and prepares pixel values; the prompt comes from the model's chat
template when it has one, else from LLaVA-1.5's "USER: <image>\\n... ASSISTANT:". BOS is always the
first real token (the BranchLoRA selector routes on it), answers end with EOS, and only answer tokens
carry labels. A multi-turn conversation is one sequence, as LLaVA trains it: every answer labelled, each
follow-up question in the prompt format without the image, after the previous answer's EOS.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from transformers import InternVLProcessor

from branchlora.data.benchmark import TestExample, TrainExample, open_image

IGNORE_INDEX = -100
PROMPT_FORMATS = ("auto", "chat_template", "llava")
LLAVA_PROMPT = "USER: <image>\n{instruction} ASSISTANT:"
LLAVA_FOLLOW_UP = "USER: {instruction} ASSISTANT:"
Turns = tuple[tuple[str, str], ...]  # (instruction, answer) pairs


class LengthError(ValueError):
    """An item longer than max_length: cutting it would drop image tokens or its answer."""


class Collator:
    """Turns examples into model inputs: `train_batch` for the loss, `prompt_batch` for `generate`.

    Sequences are never cut: an item longer than `max_length` tokens (image tokens included) is refused,
    naming it. `pad_square` pads each image to a centred square of the processor's mean colour first.
    """

    def __init__(self, processor, max_length: int = 512, prompt_format: str = "auto", pad_square: bool = False) -> None:
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"unknown prompt_format {prompt_format!r}; choose one of {', '.join(PROMPT_FORMATS)}")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_length = max_length
        self.image_token = getattr(processor, "image_token", "<image>")
        self.pad_colour = mean_colour(processor) if pad_square else None
        has_template = bool(getattr(processor, "chat_template", None))
        if prompt_format == "chat_template" and not has_template:
            raise ValueError("prompt_format='chat_template' but the processor has no chat template")
        self.use_chat_template = prompt_format == "chat_template" or (prompt_format == "auto" and has_template)
        if self.tokenizer.pad_token is None:  # llava-hf and Qwen tokenizers define one; others may not
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pad_id = self.tokenizer.pad_token_id
        self.bos_id, self.eos_id = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id

    def prompt_text(self, instruction: str, image: bool = True) -> str:
        """The prompt up to and including the assistant's cue, without BOS; `image`: with the image marker."""
        if not self.use_chat_template:
            return (LLAVA_PROMPT if image else LLAVA_FOLLOW_UP).format(instruction=instruction)
        text = self.render(chat_messages((), instruction, image=image), add_generation_prompt=True)
        bos = self.tokenizer.bos_token
        return text[len(bos) :] if bos and text.startswith(bos) else text

    def follow_up_text(self, history: Turns, instruction: str) -> str:
        """What comes between the previous answer and the next one: the follow-up question and the cue."""
        if not self.use_chat_template:
            return LLAVA_FOLLOW_UP.format(instruction=instruction)
        before = self.render(chat_messages(history, None), add_generation_prompt=False)
        after = self.render(chat_messages(history, instruction), add_generation_prompt=True)
        if not after.startswith(before):
            raise ValueError("this chat template rewrites earlier turns, so a multi-turn conversation cannot be "
                             "one sequence; use prompt_format='llava' or single-turn data")  # fmt: skip
        return after[len(before) :]

    def render(self, messages: list[dict], *, add_generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)

    def encode(
        self, texts: list[str], images: Sequence[Image.Image | None]
    ) -> tuple[list[list[int]], dict[str, torch.Tensor]]:
        """Token ids (image marker expanded, no special tokens added) and the processor's image inputs:
        pixel_values (B, 3, H, W) for LLaVA; for Qwen-VL every image's patches in one (N, D) tensor and
        image_grid_thw (B, 3); for LLaVA-NeXT the crops and image_sizes. Only the rows with an image (not
        None) give one to the processor; a batch without any passes none."""
        present = [self.square(image) for image in images if image is not None]
        out = self.processor(text=texts, images=present or None, add_special_tokens=False, padding=True,
                             return_tensors="pt")  # fmt: skip
        ids, mask = out["input_ids"], out["attention_mask"].bool()
        rows = [row[keep].tolist() for row, keep in zip(ids, mask, strict=True)]
        # Per-token extras (Qwen-VL's mm_token_type_ids) follow the processor's padding, not ours: `finish`
        # rebuilds them for our rows.
        return rows, {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask") and v.shape != ids.shape}

    def square(self, image: Image.Image) -> Image.Image:
        return image if self.pad_colour is None else expand_to_square(image, self.pad_colour)

    def finish(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add what a model needs per token beside the ids: Qwen-VL's mm_token_type_ids (1 at image tokens),
        which its forward requires whenever image patch grids (image_grid_thw) come with the batch.  For
        InternVL, whose processor tiles each image and drops the count, add num_patches (B,): each image's
        tiles, read back from its image tokens (image_seq_length per tile); per-sample code splits by it."""
        if "image_grid_thw" in batch:
            batch["mm_token_type_ids"] = (batch["input_ids"] == self.processor.image_token_id).long()
        if isinstance(self.processor, InternVLProcessor):
            tokens = (batch["input_ids"] == self.processor.image_token_id).sum(dim=-1)
            batch["num_patches"] = tokens // self.processor.image_seq_length
        return batch

    def with_bos(self, ids: list[int]) -> list[int]:
        return ids if self.bos_id is None else [self.bos_id, *ids]

    def check_length(self, length: int, where: str) -> None:
        """Refuse a sequence longer than max_length, naming the item and the key that raises the limit."""
        if length > self.max_length:
            raise LengthError(f"{where or 'an item'}: {length} tokens, more than max_length={self.max_length}; raise "
                              "model.max_length (up to the model's own limit) or shorten the item")  # fmt: skip

    def train_texts(self, has_image: Sequence[bool], instructions: Sequence[str], answers: Sequence[str]):
        """(prompts, prompt + answer texts) of the first turns, the image marker where there is an image."""
        prompts = [self.prompt_text(i, image=h) for i, h in zip(instructions, has_image, strict=True)]
        return prompts, [f"{p} {a}" for p, a in zip(prompts, answers, strict=True)]

    def train_rows(
        self, full: list[list[int]], prompts: list[str], texts: list[str], firsts: Turns, follow_ups: Sequence[Turns]
    ) -> tuple[list[list[int]], list[list[int]]]:
        """(ids, labels) of each training row from its first turn's ids `full` (image marker expanded or
        not: the answer is counted from the end, where the image cannot be), its follow-ups, BOS and EOSes."""
        answers = [len(t) - common_prefix(p, t) for p, t in zip(self.token_rows(prompts), self.token_rows(texts),
                                                                   strict=True)]  # fmt: skip
        rows, labels = [], []
        for ids, n, first, more in zip(full, answers, firsts, follow_ups or [()] * len(full), strict=True):
            turns = [answer_labels(ids + [self.eos_id], len(ids) - n), *self.follow_up_turns((first,), more)]
            sequence, sequence_labels = (sum(part, []) for part in zip(*turns, strict=True))
            rows.append(self.with_bos(sequence))
            labels.append([IGNORE_INDEX] * (len(rows[-1]) - len(sequence)) + sequence_labels)
        return rows, labels

    def encode_train(
        self,
        images: Sequence[Image.Image | None],
        instructions: list[str],
        answers: list[str],
        follow_ups: Sequence[Turns] = (),
        where: Sequence[str] = (),
    ) -> dict:
        """Loss inputs for in-memory images (shared by task training and the base's caption pre-training),
        with one call of the processor: the answer's start is found from the unexpanded texts' tokens."""
        prompts, texts = self.train_texts([i is not None for i in images], instructions, answers)
        full, visual = self.encode(texts, images)
        rows, labels = self.train_rows(full, prompts, texts, tuple(zip(instructions, answers, strict=True)),
                                       follow_ups)  # fmt: skip
        for row, at in zip(rows, where or [""] * len(rows), strict=True):
            self.check_length(len(row), at)
        batch = pad(rows, self.pad_id, left=False)
        batch["labels"] = pad(labels, IGNORE_INDEX, left=False)["input_ids"]
        return self.finish({**batch, **visual})

    def follow_up_turns(self, history: Turns, follow_ups: Turns) -> list[tuple[list[int], list[int]]]:
        """Ids and labels of each later turn of a conversation, each answer ending with EOS."""
        turns = []
        for instruction, answer in follow_ups:
            prompt = self.follow_up_text(history, instruction)
            ids = self.tokens(f"{prompt} {answer}")
            turns.append(answer_labels(ids + [self.eos_id], common_prefix(self.tokens(prompt), ids)))
            history += ((instruction, answer),)
        return turns

    def tokens(self, text: str) -> list[int]:
        """Token ids of text, image marker unexpanded, no special tokens added."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_rows(self, texts: list[str]) -> list[list[int]]:
        """`tokens` of many texts in one call of the tokenizer."""
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def train_batch(self, examples: list[TrainExample]) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask, pixel_values, labels (-100 but on answers + EOS); right padding."""
        images = [None if e.image is None else open_image(e.image) for e in examples]
        instructions, answers = [e.instruction for e in examples], [e.answer for e in examples]
        return self.encode_train(images, instructions, answers, [e.follow_ups for e in examples],
                                 [e.where for e in examples])  # fmt: skip

    def prompt_batch(self, examples: list[TestExample | TrainExample]) -> dict[str, torch.Tensor]:
        """The prompts alone, left-padded so that generation continues every row at the same column."""
        images = [None if e.image is None else open_image(e.image) for e in examples]
        texts = [self.prompt_text(e.instruction, image=e.image is not None) for e in examples]
        ids, visual = self.encode(texts, images)
        rows = [self.with_bos(row) for row in ids]
        for row, example in zip(rows, examples, strict=True):
            self.check_length(len(row), example.where)
        return self.finish({**pad(rows, self.pad_id, left=True), **visual})

    def lengths(self, examples: Sequence[TrainExample | TestExample], image_tokens: Sequence[int], *, train: bool):
        """Each item's sequence length as `train_batch` (train) or `prompt_batch` would build it, without
        images: `image_tokens` is what each item's image marker expands to (0 for a text-only item)."""
        has_image = [e.image is not None for e in examples]
        if train:
            prompts, texts = self.train_texts(has_image, [e.instruction for e in examples],
                                              [e.answer for e in examples])  # fmt: skip
            firsts = tuple((e.instruction, e.answer) for e in examples)
            rows, _ = self.train_rows(self.token_rows(texts), prompts, texts, firsts, [e.follow_ups for e in examples])
        else:
            prompts = [self.prompt_text(e.instruction, image=h) for e, h in zip(examples, has_image, strict=True)]
            rows = [self.with_bos(row) for row in self.token_rows(prompts)]
        marker = len(self.tokens(self.image_token))
        return [len(r) + (n - marker if h else 0) for r, n, h in zip(rows, image_tokens, has_image, strict=True)]

    def image_tokens(self, size: tuple[int, int]) -> int:
        """Tokens the image marker of an image of `size` (width, height) expands to, from the processor's rule
        (transformers' `_get_num_multimodal_tokens`) on the size it sees after any padding to a square."""
        width, height = size
        if self.pad_colour is not None:
            width = height = max(width, height)
        data = self.processor._get_num_multimodal_tokens(image_sizes=[(height, width)])
        return int(data["num_image_tokens"][0])

    def decode(self, generated_ids: torch.Tensor) -> list[str]:
        """Text of the newly generated tokens (pass only those), special tokens and whitespace stripped."""
        return [t.strip() for t in self.tokenizer.batch_decode(generated_ids, skip_special_tokens=True)]


def mean_colour(processor) -> tuple[int, ...]:
    """The image processor's mean as an RGB colour, LLaVA's padding colour (a zero-valued input)."""
    return tuple(int(m * 255) for m in processor.image_processor.image_mean)


def expand_to_square(image: Image.Image, colour: tuple[int, ...]) -> Image.Image:
    """The image centred on a max(w, h) square of `colour`, as LLaVA-1.5's expand2square (CoIN's boxes refer
    to this frame)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), colour)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def chat_messages(history: Turns, instruction: str | None, image: bool = True) -> list[dict]:
    """A chat-template conversation: the image (if any) with the first question, then the history and
    `instruction`."""
    questions = [q for q, _ in history] + ([instruction] if instruction is not None else [])
    messages = []
    for k, question in enumerate(questions):
        image_part = [{"type": "image"}] if k == 0 and image else []
        messages.append({"role": "user", "content": [*image_part, {"type": "text", "text": question}]})
        if k < len(history):
            messages.append({"role": "assistant", "content": [{"type": "text", "text": history[k][1]}]})
    return messages


def answer_labels(ids: list[int], start: int) -> tuple[list[int], list[int]]:
    """A turn's ids and its labels: the prompt's part (before `start`) masked, the answer (and EOS) kept."""
    return ids, [IGNORE_INDEX] * start + ids[start:]


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
