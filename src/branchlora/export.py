"""Take a trained model out of the tool: the model as it serves one task, as a standard transformers folder
(`hf`: what AutoModelForImageTextToText, vLLM and SGLang load) or a PEFT LoRA adapter (`peft`), with a model
card, optionally pushed to the Hugging Face Hub.

Every method that can be exported adds, in each wrapped Linear and for a given task, an update that does not
depend on the input: a low-rank product B A (the scale folded into B).  `hf` folds it into W0 in float32 and
casts back to the base's dtype (the run's precision); `peft` writes A and B as PEFT's lora_A / lora_B, with the
trained projector in modules_to_save (and the updates of Linears inside the projector folded into it).

| method                                        | the model that serves task t                    | --task   |
|-----------------------------------------------|-------------------------------------------------|----------|
| lora, ewc, lwf, multitask (any with replay)   | W0 + s B A: one model serves every task          | optional |
| olora, sefe                                   | W0 + s sum_i B_i A_i: the blocks summed, one model | optional |
| branchlora, -grow, -frozen_trunk(_grow)       | task t's router's first-token routing folded:    | required |
|                                               | W0 + s (sum_j w_j B_idx_j) A                     |          |
| branchlora-topk, -freeze (one router)         | the one router's routing folded: one model       | optional |
| lilora, lilora-oracle                         | W0 + s B_t A, B_t task t's gated B               | required |
| hide, hide-oracle                             | top layer: task t's block; below: the fused blocks | required |
| moelora, hydralora, branchlora-shared_a       | refused: a router mixes the experts per token    |          |
| clmoe, clmoe-oracle                           | refused: an instance router weighs experts per input |      |
| proglora, -static, -published                 | refused: the allocator weighs the blocks per input |        |

"required": the method serves each task with its own router (`predict --task NAME`) and, without a task, lets
its selector pick one per input, which no plain model can do: such a checkpoint exports one model per task.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from PIL import Image
from torch import nn

from branchlora.adapters import adapter_layers, unwrap
from branchlora.adapters.base import AdapterLayer
from branchlora.adapters.merged import record_routes
from branchlora.atomic import atomic_dir, check_free
from branchlora.batch import model_inputs
from branchlora.continual import WEIGHTS, latest_checkpoint, read_state
from branchlora.data.benchmark import TestExample
from branchlora.inference import Loaded, _task_index, load_trained, resolve_checkpoint
from branchlora.methods import Task
from branchlora.models.loading import run_dtype
from branchlora.models.parts import projector

FORMATS = ("hf", "peft")
ANSWER_TOKENS = 32  # the generation budget of `branchlora predict`, written into the generation config
CARD = "README.md"
RUN_CONFIG = "training_config.yaml"
Factors = tuple[torch.Tensor, torch.Tensor]  # (A (r, d_in), B (d_out, r)): the update B @ A, scale folded in
PER_INPUT = {
    "moelora": "its router mixes the experts per token",
    "hydralora": "its router mixes the heads per token",
    "clmoe": "its instance router weighs the experts per input",
    "proglora": "its task allocator weighs the blocks per input (from the input's embeddings), even given the task",
}


class ExportError(ValueError):
    """The checkpoint, task, method or output folder cannot give an export (one line says which and why)."""


# ---- what each adapter adds for one task, as factors ----------------------------------------------------
def layer_factors(layer: AdapterLayer, task_id: int | None, gates: torch.Tensor | None) -> Factors:
    """(A, B) of the layer's update for task `task_id` (None: the newest), in float32; `gates`: BranchLoRA's
    recorded (N,) routing.  Only called for the kinds `check_exportable` lets through."""
    s, kind = layer.scale, layer.kind
    if kind == "lora":
        a, b = layer.lora_A, s * layer.lora_B
    elif kind == "tasklora":  # every block summed: one LoRA of rank T r
        a, b = layer.stacked()
        b = s * b
    elif kind == "hide":
        t = layer.n_blocks - 1 if task_id is None else task_id
        a, b = (layer.lora_A[t], layer.lora_B[t]) if layer.top else layer.fused()
        b = s * b
    elif kind == "lilora":
        a, b = layer.lora_A, s * layer.task_b(layer.n_tasks - 1 if task_id is None else task_id)
    else:  # branchlora, first-token routing: s (sum_j w_j B_idx_j) A, the mixed B comes out (r/N, d_out)
        a, b = layer.lora_A, layer.effective_b(gates[None], s)[0].t()
    return a.detach().float(), b.detach().float()


def check_exportable(method: str, layers: dict[str, AdapterLayer]) -> None:
    """Refuse, in one line, a method whose update depends on each input (see the module's table)."""
    for name, layer in layers.items():
        why = PER_INPUT.get(layer.kind)
        if layer.kind == "branchlora" and layer.routing != "first":
            why = f"its router reads {layer.routing!r} and mixes the branches per input"
        if why:
            raise ExportError(
                f"method {method!r} cannot be exported ({name}): {why}, so no single weight serves a task; "
                "`branchlora predict` and `evaluate` serve it from the checkpoint"
            )


@torch.no_grad()
def task_updates(loaded: Loaded, task_id: int | None, example: dict[str, torch.Tensor]) -> dict[str, Factors]:
    """The factors of every adapter layer for task `task_id`; BranchLoRA's routing is recorded on `example`."""
    layers = dict(adapter_layers(loaded.model))
    check_exportable(loaded.method.name, layers)
    routes = {}
    if any(layer.kind == "branchlora" for layer in layers.values()):
        try:
            routes = record_routes(loaded.model, 0 if task_id is None else task_id, example)
        except ValueError as err:  # e.g. routed layers in the projector, whose first row is an image patch
            raise ExportError(f"method {loaded.method.name!r} cannot be exported: {err}") from None
    return {name: layer_factors(layer, task_id, routes.get(name)) for name, layer in layers.items()}


@torch.no_grad()
def fold(model: nn.Module, updates: dict[str, Factors]) -> None:
    """W0 += B A for each named adapter layer, summed in float32 and rounded once to W0's dtype."""
    for name, (a, b) in updates.items():
        weight = model.get_submodule(name).base_layer.weight
        weight.copy_((weight.float() + b.to(weight.device) @ a.to(weight.device)).to(weight.dtype))


# ---- the checkpoint, the task and the example inputs ------------------------------------------------------
def weights_folder(path: str | Path) -> Path:
    """The checkpoint to export, refused in one line when train.keep=last left it without weights."""
    folder = resolve_checkpoint(path)
    missing = [name for name in WEIGHTS[:3] if not (folder / name).is_file()]
    if missing:
        last = latest_checkpoint(folder.parent)
        hint = f"; {last} (the last stage) holds them" if last is not None and last != folder else ""
        raise ExportError(f"{folder} holds no weights ({', '.join(missing)} missing: the run kept only the last "
                          f"stage's, train.keep=last){hint}")  # fmt: skip
    return folder


def example_batch(loaded: Loaded, folder: Path) -> dict[str, torch.Tensor]:
    """Two different prompts on two different images, as `predict` builds them: the inputs that record
    first-token routing (which must agree between them)."""
    examples = []
    for i, (colour, prompt) in enumerate((((200, 40, 40), "What is shown?"), ((40, 40, 200), "Name the colour."))):
        path = folder / f"example-{i}.png"
        Image.new("RGB", (64, 64), colour).save(path)
        examples.append(TestExample(f"example-{i}", path, prompt, ""))
    return model_inputs(loaded.collator.prompt_batch(examples))


def served_task(loaded: Loaded, task: str | None, example: dict[str, torch.Tensor]) -> int | None:
    """The task id `predict --task` serves `task` with (the oracle's); without a task, the one id that serves
    every task, refused where the method serves tasks differently."""
    names = loaded.tasks

    def ids(index: int) -> int | torch.Tensor | None:
        return loaded.method.eval_task_ids(loaded.model, example, Task(index, names[index]), oracle=True)

    if task is not None:
        return ids(_task_index(loaded, task))
    if len({repr(ids(i)) for i in range(len(names))}) > 1:
        raise ExportError(
            f"method {loaded.method.name!r} serves each task with its own router and, without --task, lets its "
            "task selector pick one per input, which a plain model cannot do: export one model per task with "
            f"--task NAME (this checkpoint learned: {', '.join(names)})"
        )
    return ids(len(names) - 1)


# ---- the two formats ---------------------------------------------------------------------------------------
def write_hf(loaded: Loaded, updates: dict[str, Factors], out: Path) -> None:
    """The base with the updates folded in and the trained projector, in the run's dtype, with its processor
    (and chat template) and a greedy generation config as `predict` answers."""
    model = loaded.model
    fold(model, updates)
    unwrap(model)
    model.to(run_dtype(loaded.mixed_precision))  # a float32 projector beside a bf16 base is cast with it
    generation = model.generation_config
    generation.do_sample, generation.max_new_tokens = False, ANSWER_TOKENS
    generation.eos_token_id, generation.pad_token_id = loaded.collator.eos_id, loaded.collator.pad_id
    model.save_pretrained(out)
    loaded.collator.processor.save_pretrained(out)


def module_name(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


@torch.no_grad()
def write_peft(loaded: Loaded, updates: dict[str, Factors], out: Path) -> None:
    """A PEFT LoRA adapter (written by PEFT itself, so its key names are PEFT's) with the trained projector in
    modules_to_save; updates of Linears inside the projector (LiLoRA's) are folded into that copy."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ExportError("--format peft needs the peft package (pip install peft)") from None
    model = loaded.model
    proj = projector(model)
    inside = module_name(model, proj) + "." if proj is not None else None
    folded = {n: f for n, f in updates.items() if inside and n.startswith(inside)}
    lora = {n: f for n, f in updates.items() if n not in folded}
    ranks = {a.shape[0] for a, _ in lora.values()}
    if len(ranks) != 1:
        raise ExportError(f"method {loaded.method.name!r}: its layers' updates have ranks {sorted(ranks)}; "
                          "PEFT's adapter takes one rank: use --format hf")  # fmt: skip
    fold(model, folded)
    unwrap(model)
    (rank,) = ranks  # the scale is folded into B: alpha = r makes PEFT's scaling alpha / r one
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=sorted(lora),
                        modules_to_save=[inside[:-1]] if inside else None)  # fmt: skip
    peft_model = get_peft_model(model, config)
    for name, (a, b) in lora.items():
        layer = peft_model.base_model.model.get_submodule(name)
        layer.lora_A["default"].weight.copy_(a)
        layer.lora_B["default"].weight.copy_(b)
    peft_model.save_pretrained(out)
    loaded.collator.processor.save_pretrained(out)  # as the base's: PEFT's folders often carry it


# ---- model card and the Hub --------------------------------------------------------------------------------
def model_card(state: dict, loaded: Loaded, task: str | None, fmt: str) -> str:
    """README.md: base, method, task stream, this stage's accuracy row (the exported task in bold), the command
    that trained it, and how to load the folder."""
    base, method, names = str(state.get("base", "tiny")), state["method"], loaded.tasks
    stream = state.get("tasks") or names
    header = {"library_name": "transformers" if fmt == "hf" else "peft", "pipeline_tag": "image-text-to-text",
              "tags": list(dict.fromkeys(["branchlora", "continual-learning", method]))}  # fmt: skip
    if base != "tiny" and not Path(base).exists():  # a Hub id: the card links its base
        header["base_model"] = base
    served = f"task `{task}`" if task else "every task it learned"
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
             f"# {method} on {len(stream)} tasks: the model that serves {served}", "",
             f"Exported by `branchlora export` from `{loaded.folder.name}` (after {len(names)} of {len(stream)} "
             f"tasks). Base: `{base}`. Method: `{method}`. Task stream: {' -> '.join(stream)}.", ""]  # fmt: skip
    matrix = (state.get("result") or {}).get("matrix") or []
    if matrix:
        row = [f"**{x}**" if n == task else str(x) for n, x in zip(stream, matrix[-1], strict=False)]
        lines += ["Accuracy (%) on each task after this stage (the run's accuracy matrix, its last row):", "",
                  f"| {' | '.join(stream)} |", f"|{'---|' * len(stream)}", f"| {' | '.join(row)} |", ""]  # fmt: skip
    if state.get("config"):
        lines += [f"Trained with `branchlora run --config {RUN_CONFIG}` (the run's configuration, in this folder).", ""]
    load = "AutoModelForImageTextToText.from_pretrained(FOLDER)"
    if fmt == "peft":
        load = f"PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained({base!r}), FOLDER)"
    lines += ["Load it with transformers" + (" and PEFT" if fmt == "peft" else "") + f": `{load}`; answer greedily "
              f"(do_sample=False) as the generation config says.", ""]  # fmt: skip
    return "\n".join(lines)


def push(folder: Path, repo_id: str) -> str:
    """Create the Hub repository (if new) and upload the folder; returns the commit's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    return str(api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="branchlora export"))


# ---- the whole export ----------------------------------------------------------------------------------------
def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    task: str | None = None,
    fmt: str = "hf",
    push_to_hub: str | None = None,
    upload: Callable[[Path, str], str] = push,
) -> Path:
    """Write the model of `checkpoint` as it serves `task` into the new folder `out` (see the module doc);
    with `push_to_hub`, upload it to that Hub repository.  Returns `out`."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    out = Path(out)
    check_free(out, "--out")
    folder = weights_folder(checkpoint)
    state = read_state(folder)
    loaded = load_trained(folder)
    with tempfile.TemporaryDirectory() as scratch:
        example = example_batch(loaded, Path(scratch))
    task_id = served_task(loaded, task, example)
    updates = task_updates(loaded, task_id, example)
    with atomic_dir(out, CARD) as tmp:
        (write_hf if fmt == "hf" else write_peft)(loaded, updates, tmp)
        if state.get("config"):
            (tmp / RUN_CONFIG).write_text(yaml.safe_dump(json.loads(json.dumps(state["config"])), sort_keys=False))
        (tmp / CARD).write_text(model_card(state, loaded, task, fmt))
    if push_to_hub:
        upload(out, push_to_hub)
    return out
