"""Lengths: never cut, measured without decoding images, one processor call per batch, text-only rows."""

import pytest
from PIL import Image
from transformers import CLIPImageProcessorPil, LlavaProcessor

from branchlora.config import load_config, parse_override
from branchlora.data.benchmark import TestExample, TrainExample
from branchlora.data.collate import IGNORE_INDEX, Collator, LengthError, expand_to_square
from branchlora.models.loading import PACKAGED, make_collator
from branchlora.typed import ConfigError

from family_support import qwen_model_and_processor, tiny_family_model

SIZES = [(500, 375), (375, 500), (1024, 768), (56, 56)]  # photo-shaped, portrait, large, tiny


def llava_336() -> LlavaProcessor:
    """LLaVA-1.5's image geometry (CLIP 336 px, patch 14: 576 image tokens) on the tiny base's tokenizer."""
    tokenizer = LlavaProcessor.from_pretrained(PACKAGED).tokenizer
    images = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    return LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=14,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)  # fmt: skip


def items(folder, sizes) -> tuple[list[TrainExample], list[TestExample]]:
    """One training and one test item per size (None: text-only), each naming where it is."""
    train, test = [], []
    for i, size in enumerate(sizes):
        path = None
        if size is not None:
            path = folder / f"{i}.jpg"
            Image.new("RGB", size, (10 * i, 90, 200)).save(path)
        where = f"t.json: item {i}"
        follow = (("And the colour?", "blue"),) if i == 1 else ()
        train.append(TrainExample(path, f"What is shown in picture {i}?", f"answer {i}", follow, where=where))
        test.append(TestExample(str(i), path, f"What is shown in picture {i}?", "x", where=where))
    return train, test


def test_expand_to_square_centres_the_image_on_the_colour():
    image = Image.new("RGB", (4, 2), (255, 0, 0))
    square = expand_to_square(image, (1, 2, 3))
    assert square.size == (4, 4)
    assert [square.getpixel((x, y)) for y in range(4) for x in (0, 3)] == [(1, 2, 3)] * 2 + [(255, 0, 0)] * 4 + [
        (1, 2, 3)
    ] * 2
    tall = expand_to_square(Image.new("RGB", (1, 3), (9, 9, 9)), (0, 0, 0))
    assert [tall.getpixel((x, 1)) for x in range(3)] == [(0, 0, 0), (9, 9, 9), (0, 0, 0)]
    assert expand_to_square(image.resize((3, 3)), (0, 0, 0)).size == (3, 3)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_lengths_from_headers_match_what_the_processor_emits(tmp_path, family):
    """The dry run's count (tokenizer + the processor's rule on header sizes) equals the real batches',
    text-only items and a follow-up turn included; each image's token count too."""
    processor = llava_336() if family == "llava" else qwen_model_and_processor(family)[1]
    collator = Collator(processor, max_length=4096)
    train, test = items(tmp_path, [*SIZES, None])
    tokens = [0 if e.image is None else collator.image_tokens(Image.open(e.image).size) for e in train]
    batch = collator.train_batch(train)
    assert collator.lengths(train, tokens, train=True) == batch["attention_mask"].sum(1).tolist()
    prompts = collator.prompt_batch(test)
    assert collator.lengths(test, tokens, train=False) == prompts["attention_mask"].sum(1).tolist()
    emitted = (batch["input_ids"] == processor.image_token_id).sum(1).tolist()
    if family == "llava":
        assert tokens == [576] * 4 + [0] == emitted
    else:  # Qwen: (h/28) x (w/28) merged patches of the resized image, within 28^2..56^2 pixels here
        assert tokens == emitted and tokens[-1] == 0 and len(set(tokens[:-1])) > 1


def test_one_processor_call_per_batch_and_text_only_rows(tmp_path, monkeypatch):
    processor = llava_336()
    collator = Collator(processor, max_length=1024)
    train, _ = items(tmp_path, [(500, 375), None])
    calls = []
    call = type(processor).__call__
    monkeypatch.setattr(type(processor), "__call__", lambda self, **kw: calls.append(kw["images"]) or call(self, **kw))
    batch = collator.train_batch(train)
    assert len(calls) == 1 and len(calls[0]) == 1  # one call, one image: the text-only row gives none
    assert batch["pixel_values"].shape[0] == 1
    assert (batch["input_ids"] == processor.image_token_id).sum(1).tolist() == [576, 0]
    tok = processor.tokenizer
    for row, labels, example in zip(batch["input_ids"], batch["labels"], train, strict=True):
        first = labels[labels != IGNORE_INDEX].tolist()
        first = first[: first.index(tok.eos_token_id)]
        assert tok.decode(first).strip() == example.answer
        assert row[0] == tok.bos_token_id
    assert tok.decode(batch["input_ids"][1], skip_special_tokens=True).startswith("USER: What is shown")
    text_only = collator.train_batch(train[1:])
    assert "pixel_values" not in text_only and calls[-1] is None


def test_an_item_over_max_length_is_refused_never_cut(tmp_path):
    collator = Collator(llava_336(), max_length=600)
    train, test = items(tmp_path, [(500, 375)])
    length = collator.train_batch(train)["attention_mask"].sum().item()
    assert length > 576
    with pytest.raises(LengthError, match=rf"^t.json: item 0: {length} tokens, more than max_length={length - 1}"):
        Collator(llava_336(), max_length=length - 1).train_batch(train)
    with pytest.raises(LengthError, match="raise model.max_length"):
        Collator(llava_336(), max_length=580).prompt_batch(test)


def test_make_collator_reads_the_models_limit_and_aspect():
    llava, qwen = tiny_family_model("llava"), qwen_model_and_processor("qwen2_vl")
    config = load_config(None, None, [parse_override("model.max_length=0")])
    collator = make_collator(llava_336(), llava.config, config.model)
    assert collator.max_length == llava.config.text_config.max_position_embeddings
    assert collator.pad_colour == tuple(int(m * 255) for m in CLIPImageProcessorPil().image_mean)
    assert make_collator(qwen[1], qwen[0].config, config.model).pad_colour is None  # auto: native off llava
    padded = load_config(None, None, [parse_override(s) for s in ("model.image_aspect=pad", "model.max_length=2048")])
    collator = make_collator(qwen[1], qwen[0].config, padded.model)
    assert collator.max_length == 2048 and collator.pad_colour is not None
    assert collator.image_tokens((500, 375)) == collator.image_tokens((500, 500))  # the padded square's count


def test_model_section_is_checked_and_merged():
    with pytest.raises(ConfigError, match=r"model.attn_implementation: flash_attention_2 needs the flash_attn"):
        load_config(None, None, [parse_override("model.attn_implementation=flash_attention_2")])
    with pytest.raises(ConfigError, match="model.image_aspect"):
        load_config(None, None, [parse_override("model.image_aspect=crop")])
    config = load_config(None, None, [parse_override("model.processor={max_pixels: 1003520}")])
    assert (config.model.processor, config.model.max_length, config.model.attn_implementation) == (
        {"max_pixels": 1003520}, 0, "sdpa")  # fmt: skip
