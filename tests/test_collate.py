"""Collation: answer-only labels, left-padded prompts that start with BOS, and a model that runs on them."""

from dataclasses import replace

import pytest
import torch
from transformers import LlavaProcessor

from branchlora.data.benchmark import load_benchmark
from branchlora.data.collate import IGNORE_INDEX, Collator, LengthError
from branchlora.models.loading import load_base
from branchlora.models.tiny import TinyConfig, build_model, build_processor
from branchlora.models.tokenizer import train_tokenizer

MICRO = TinyConfig(image_size=16, vision_hidden=32, vision_layers=1, hidden=32, layers=1, heads=2, intermediate=64)
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'].upper() + ': ' }}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\n' }}{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] + ' ' }}{% endif %}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    return load_benchmark("minicoin", cache_dir=tmp_path_factory.mktemp("c"), train_size=4, test_size=4)


@pytest.fixture(scope="module")
def tiny(bench):
    texts = [f"USER: {e.instruction} ASSISTANT: {e.answer}" for t in bench.task_names for e in bench.train_examples(t)]
    tok = train_tokenizer(texts * 5, vocab_size=400)
    return build_model(MICRO, tok).eval(), build_processor(MICRO, tok)


def check_batches(model, processor, bench, prompt_format="auto"):
    collator = Collator(processor, prompt_format=prompt_format)
    tok = processor.tokenizer
    train = [bench.train_examples("gqa")[0], bench.train_examples("grounding")[0]]
    batch = collator.train_batch(train)
    for row, labels, mask, ex in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], train, strict=True):
        assert row[0] == tok.bos_token_id
        answer = labels[labels != IGNORE_INDEX]
        assert answer[-1] == tok.eos_token_id
        assert tok.decode(answer[:-1]).strip() == ex.answer
        assert mask.tolist() == sorted(mask.tolist(), reverse=True)  # right padding
        assert (labels[mask == 0] == IGNORE_INDEX).all()
    image_tokens = (MICRO.image_size // MICRO.patch_size) ** 2
    assert ((batch["input_ids"] == model.config.image_token_id).sum(1) == image_tokens).all()
    assert torch.isfinite(model(**batch).loss)

    tests = bench.test_examples("vqav2")[:3]
    prompts = collator.prompt_batch(tests)
    mask = prompts["attention_mask"]
    for row, m in zip(prompts["input_ids"], mask, strict=True):
        assert m.tolist() == sorted(m.tolist())  # left padding
        assert row[m.argmax()] == tok.bos_token_id  # BOS is the first real token
        assert tok.decode(row[m.bool()]).rstrip().endswith("ASSISTANT:")
    generated = model.generate(**prompts, max_new_tokens=3, do_sample=False)
    texts = collator.decode(generated[:, prompts["input_ids"].shape[1] :])
    assert len(texts) == 3 and all(isinstance(t, str) and t == t.strip() for t in texts)
    return collator


def test_tiny_base_path(tiny, bench):
    collator = check_batches(*tiny, bench)
    assert not collator.use_chat_template
    assert collator.prompt_text("Hi?") == "USER: <image>\nHi? ASSISTANT:"


def test_hf_directory_path_uses_chat_template(tiny, bench, tmp_path):
    model, processor = tiny
    hf = LlavaProcessor(
        image_processor=processor.image_processor, tokenizer=processor.tokenizer, patch_size=8,
        vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE,
    )  # fmt: skip
    model.save_pretrained(tmp_path)
    hf.save_pretrained(tmp_path)
    loaded, loaded_processor = load_base(str(tmp_path))
    collator = check_batches(loaded, loaded_processor, bench)
    assert collator.use_chat_template
    assert collator.prompt_text("Hi?") == "USER: <image>\nHi? ASSISTANT:"


def test_long_items_are_refused_not_cut_and_bad_format_rejected(tiny, bench):
    _, processor = tiny
    with pytest.raises(ValueError, match="prompt_format"):
        Collator(processor, prompt_format="vicuna")
    with pytest.raises(ValueError, match="no chat template"):
        Collator(processor, prompt_format="chat_template")
    items = bench.train_examples("scienceqa")[:2]
    longest = Collator(processor).train_batch(items)["attention_mask"].sum(1).max().item()
    assert Collator(processor, max_length=longest).train_batch(items)["input_ids"].shape[1] == longest  # uncut
    too_long = rf"train.json: item \d: {longest} tokens, more than max_length={longest - 1}"
    with pytest.raises(LengthError, match=too_long):
        Collator(processor, max_length=longest - 1).train_batch(items)
    with pytest.raises(LengthError, match=r"test.json: item 0: \d+ tokens, more than max_length=20; raise model"):
        Collator(processor, max_length=20).prompt_batch(bench.test_examples("scienceqa")[:1])


def test_build_processor_matches_model(tiny):
    model, processor = tiny
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == model.config.image_token_id
    assert build_processor(MICRO, processor.tokenizer).patch_size == MICRO.patch_size


def labelled_spans(labels: torch.Tensor) -> list[list[int]]:
    """The runs of labelled tokens in one row: one per answer."""
    spans, current = [], []
    for t in labels.tolist() + [IGNORE_INDEX]:
        if t != IGNORE_INDEX:
            current.append(t)
        elif current:
            spans, current = [*spans, current], []
    return spans


@pytest.mark.parametrize("chat_template", [False, True])
def test_multi_turn_trains_every_answer_in_one_sequence(tiny, bench, chat_template):
    model, processor = tiny
    if chat_template:
        processor = LlavaProcessor(
            image_processor=processor.image_processor, tokenizer=processor.tokenizer, patch_size=8,
            vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE,
        )  # fmt: skip
    collator = Collator(processor)
    tok = processor.tokenizer
    single = bench.train_examples("gqa")[0]
    multi = replace(single, follow_ups=(("What colour is it?", "red"), ("How many are there?", "2")))
    batch = collator.train_batch([multi, single])
    row, labels = batch["input_ids"][0], batch["labels"][0]
    spans = labelled_spans(labels)
    assert [tok.decode(s[:-1]).strip() for s in spans] == [single.answer, "red", "2"]
    assert all(s[-1] == tok.eos_token_id for s in spans)
    text = tok.decode(row[batch["attention_mask"][0].bool()], skip_special_tokens=True)
    assert "USER: What colour is it? ASSISTANT: red" in text.replace("  ", " ")
    assert (row == model.config.image_token_id).sum() == (MICRO.image_size // MICRO.patch_size) ** 2  # one image
    alone = collator.train_batch([single])
    width = alone["input_ids"].shape[1]
    for key in ("input_ids", "labels", "attention_mask"):  # the single-turn row is as it was without a neighbour
        assert torch.equal(batch[key][1, :width], alone[key][0])
    assert torch.isfinite(model(**batch).loss)


def test_multi_turn_needs_a_chat_template_that_appends(tiny, bench):
    _, processor = tiny
    rewriting = (  # newest message first: each turn changes the start of the text
        "{% for m in messages|reverse %}{% for c in m['content'] %}{% if c['type'] == 'image' %}{{ '<image>' }}"
        "{% else %}{{ c['text'] + ' ' }}{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %}A:{% endif %}"
    )
    hf = LlavaProcessor(image_processor=processor.image_processor, tokenizer=processor.tokenizer, patch_size=8,
                        vision_feature_select_strategy="default", num_additional_image_tokens=1,
                        chat_template=rewriting)  # fmt: skip
    multi = replace(bench.train_examples("gqa")[0], follow_ups=(("Why?", "because"),))
    with pytest.raises(ValueError, match="rewrites earlier turns"):
        Collator(hf).train_batch([multi])
