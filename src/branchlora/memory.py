"""Estimated peak GPU memory of one training process: a method on a model at a batch, length and precision.

The parameters come from the same meta-device setup as `branchlora params` (the method set up and replayed to
its last task, so grown blocks, branches and routers are counted); everything else is a small formula below,
each saying which tensors it stands for.  Assumptions, shared by every term:

- weights: the frozen base in the run precision (bf16 under `mixed_precision=bf16`, else fp32), sharded over
  the processes only with `train.shard_frozen`; every adapter parameter (trained now or frozen from an earlier
  task) and the projector in fp32, as PEFT and LLaVA's DeepSpeed recipe keep them;
- optimizer: AdamW (two fp32 states) and fp32 gradients for what trains at the last task; several processes
  without sharding add DDP's gradient buckets (one more fp32 copy of the gradients);
- activations: what autograd saves for a LLaMA-style decoder (RMSNorm, rotary, SDPA attention, SwiGLU MLP) at
  batch x seq_len tokens (every sequence padded to seq_len; its image tokens count in seq_len), the adapters'
  saved inputs, dropout masks and rank-wide projections, the fp32 logits and their gradients at the loss, and
  the frozen vision tower's forward (nothing of it is saved: no gradient reaches it);
- no allocator fragmentation, CUDA context (~0.5 GiB) or cuBLAS workspace: add a margin of 10-20 %.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch
from torch import nn

from branchlora.adapters import AdapterLayer, adapter_layers
from branchlora.adapters.io import _adapter_state
from branchlora.methods.base import Method, Task
from branchlora.models.family import require_family
from branchlora.models.parts import projector
from branchlora.params import meta_method
from branchlora.train import PRECISIONS

FP32, BF16, INDEX = 4, 2, 8  # bytes per element: float32, bfloat16, int64 index
GIB = 2**30
ANSWER_SHARE = 0.25  # LwF: share of a sequence's positions that are answer tokens (distilled); CoIN's are fewer
# Inputs shared by several wrapped Linears of a decoder layer (the adapter saves each input once: the same tensor).
SHARED_INPUTS = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "gate_proj": "mlp_in",
                 "up_proj": "mlp_in"}  # fmt: skip


class EstimateError(ValueError):
    """A setting the estimate cannot use (one line, printed by the CLI)."""


@dataclass(frozen=True)
class Widths:
    """The language model's and vision tower's sizes that activations scale with (from the model's config)."""

    hidden: int
    intermediate: int
    layers: int
    kv_hidden: int  # num_key_value_heads * head_dim
    vocab: int
    vision_hidden: int = 0
    vision_intermediate: int = 0
    vision_layers: int = 0
    vision_tokens: int = 0  # patches (+ class token) the tower sees per image
    image_tokens: int = 0  # tokens an image takes in the language model's sequence


@dataclass(frozen=True)
class Setting:
    """What the run does: tokens per step, precision, checkpointing, processes, and how far into the stream."""

    batch: int = 4
    seq_len: int = 2048
    precision: str = "bf16"  # train.mixed_precision: "no" (fp32) or "bf16"
    checkpointing: bool = False
    processes: int = 1
    shard_frozen: bool = False
    tasks: int = 8  # the estimate is for the last task of a stream this long (grown blocks, EWC terms, masks)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EstimateError(f"precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        for name in ("batch", "seq_len", "processes", "tasks"):
            if getattr(self, name) < 1:
                raise EstimateError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def act(self) -> int:
        """Bytes of an activation element: autocast computes matmuls in bf16; fp32 otherwise."""
        return BF16 if self.precision == "bf16" else FP32

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len


# ---- weights and optimizer ---------------------------------------------------------------------------------


def frozen_bytes(n_frozen: int, precision: str, processes: int, shard: bool) -> float:
    """The frozen base in the run precision; `train.shard_frozen` splits it over the processes (FSDP2)."""
    per = BF16 if precision == "bf16" else FP32
    return n_frozen * per / (processes if shard and processes > 1 else 1)


def gathered_unit_bytes(largest_layer: int, precision: str, processes: int, shard: bool) -> float:
    """FSDP2 all-gathers one layer for its forward / backward and prefetches the next: two layers whole."""
    if not (shard and processes > 1):
        return 0.0
    return 2 * largest_layer * (BF16 if precision == "bf16" else FP32)


def optimizer_bytes(n_trainable: int, processes: int, shard: bool) -> dict[str, float]:
    """fp32 gradients, AdamW's exp_avg and exp_avg_sq, and DDP's gradient buckets (several processes, no
    sharding: DDP reduces through buckets that are a second copy of the gradients)."""
    ddp = processes > 1 and not shard
    return {"gradients": n_trainable * FP32, "adamw": 2 * n_trainable * FP32,
            "ddp_buckets": n_trainable * FP32 if ddp else 0.0}  # fmt: skip


# ---- activations ---------------------------------------------------------------------------------------------


def decoder_layer_bytes(tokens: int, w: Widths, act: int) -> float:
    """What autograd saves in one frozen LLaMA-style decoder layer through which gradients flow to adapters.

    RMSNorm saves its input upcast to fp32 (pow and the rsqrt product), twice per layer; rotary saves only
    cos / sin; SDPA saves q and k after rotary, v and its output (flash / efficient kernels; the logsumexp is
    negligible); SwiGLU saves the gate output (SiLU's input), SiLU's output and the up output (the product's
    two factors).  The frozen Linears save nothing (their weight is the parameter itself); what the adapters
    save is `adapter_inputs_bytes`.
    """
    norms = 2 * w.hidden * FP32
    attention = (2 * w.hidden + 2 * w.kv_hidden) * act
    mlp = 3 * w.intermediate * act
    return tokens * (norms + attention + mlp)


def adapter_inputs_bytes(tokens: int, input_widths: list[int], act: int) -> float:
    """Each distinct input of a wrapped Linear, saved by its adapter for dA (q/k/v share the attention norm's
    output, gate/up the MLP norm's; o_proj's input is the attention output, down_proj's the SwiGLU product)."""
    return tokens * sum(input_widths) * act


def adapter_projection_bytes(tokens: int, d_in: int, z_width: int, dropout: bool, act: int) -> float:
    """Per wrapped Linear: the dropout mask (bool, x-sized, kept instead of the dropped input) and the
    rank-wide projections z = dropout(x) A^T saved for dB (width r; more for gated or per-task layers)."""
    return tokens * ((d_in if dropout else 0) + z_width * act)


def z_width(layer: AdapterLayer) -> int:
    """Elements per token an adapter layer saves besides its input: the projections its update multiplies."""
    r = layer.config.r
    kind = layer.kind
    if kind in ("moelora", "hydralora", "clmoe"):
        return 2 * r + layer.config.n_branches  # z, the gate-scaled z, the gates
    if kind == "branchlora":
        return layer.branch_rank + layer.branch_rank * layer.n_branches  # z and the gate-expanded copy (token)
    if kind in ("tasklora", "hide", "proglora"):
        blocks = layer.n_blocks * r  # every block's z at once
        return blocks if kind == "tasklora" else 2 * blocks  # weighted blocks: z and the weighted copy
    if kind == "lilora":
        return r + 2 * layer.config.sub_rank
    return r


def saved_adapter_weights(layer: AdapterLayer, batch: int) -> int:
    """Elements of weight-sized tensors an adapter layer builds per forward and autograd keeps: the per-task
    layer's concatenated A and B (every block, tasklora.py), BranchLoRA's per-sample mixed B."""
    if layer.kind in ("tasklora", "hide", "proglora"):
        return layer.n_blocks * layer.config.r * (layer.in_features + layer.out_features)
    if layer.kind == "branchlora":
        return batch * layer.branch_rank * layer.out_features
    return 0


def logits_bytes(tokens: int, vocab: int, act: int) -> float:
    """The loss's peak: the logits (run precision), their fp32 log-softmax (saved by cross-entropy), and in the
    backward the fp32 gradients of the NLL and of the log-softmax, all (tokens, vocab)."""
    return tokens * vocab * (act + 3 * FP32)


def checkpoint_bytes(tokens: int, w: Widths, act: int) -> float:
    """Gradient checkpointing keeps each decoder layer's input hidden state (one per layer)."""
    return w.layers * tokens * w.hidden * act


def layer_backward_bytes(tokens: int, w: Widths, act: int) -> float:
    """Gradients alive while one layer back-propagates: of its input and output (hidden) and of the MLP
    intermediate (two at a time)."""
    return tokens * (2 * w.hidden + 2 * w.intermediate) * act


def vision_bytes(images: int, w: Widths, act: int) -> float:
    """The frozen tower's forward (nothing saved: no gradient reaches it): LLaVA asks for every layer's hidden
    states (layers + 1 of them), plus one layer's q, k, v, attention output and MLP intermediate at work."""
    states = (w.vision_layers + 1) * w.vision_hidden
    working = 4 * w.vision_hidden + 2 * w.vision_intermediate
    return images * w.vision_tokens * (states + working) * act


def projector_bytes(images: int, w: Widths, act: int, trains: bool) -> float:
    """A trained projector (mlp2x_gelu) saves its input, the GELU's input and the second Linear's input."""
    return images * w.image_tokens * (w.vision_hidden + 2 * w.hidden) * act if trains else 0.0


# ---- model and method ---------------------------------------------------------------------------------------


def model_widths(model: nn.Module) -> Widths:
    """The sizes from a transformers config (a vision-language model's text and vision configs, or a causal LM's)."""
    config = getattr(model, "config", None)
    if config is None:
        raise EstimateError("the memory estimate needs a transformers model config (not a 'linears' table)")
    text = getattr(config, "text_config", None) or config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    widths = {"hidden": text.hidden_size, "intermediate": text.intermediate_size,
              "layers": text.num_hidden_layers, "kv_hidden": (text.num_key_value_heads or heads) * head_dim,
              "vocab": text.vocab_size}  # fmt: skip
    vision = getattr(config, "vision_config", None)
    if vision is not None and getattr(vision, "patch_size", None) and getattr(vision, "image_size", None):
        patches = (vision.image_size // vision.patch_size) ** 2
        widths.update(vision_hidden=vision.hidden_size, vision_intermediate=vision.intermediate_size,
                      vision_layers=vision.num_hidden_layers, vision_tokens=patches + 1,
                      image_tokens=patches)  # fmt: skip
    return Widths(**widths)


def at_last_task(model_spec: str, method_name: str, tasks: int, adapter: dict | None, options: dict | None):
    """(model, method) on the meta device as the method leaves them when the last of `tasks` tasks starts."""
    model, method = meta_method(model_spec, method_name, adapter, options)
    start_tasks(model, method, tasks)
    return model, method


def start_tasks(model: nn.Module, method: Method, tasks: int) -> None:
    """Replay the starts of tasks 2..`tasks` on a meta model set up at task 1 (no data: no task-end hook runs)."""
    for t in range(1, tasks):
        method.on_task_start(model, Task(t, f"task-{t + 1}"))


def method_extras(method: Method, model: nn.Module, layers: list[AdapterLayer], n_trainable: int, s: Setting):
    """What a method keeps besides the model, in bytes, at the last task: ({state}, {activations}).

    From methods/*.py: EWC keeps fp32 anchors and a Fisher per earlier task (one pair when online) and its
    penalty saves (theta - anchor) per term; LwF a copy of the trainables as the teacher, whose no-grad logits
    and the KL terms on answer positions sit beside the student's; CL-MoE the task-start copy of its experts;
    LiLoRA the task-start A; SEFE the earlier tasks' key-element masks (moved to the GPU as int64 for the
    penalty, with the gathered values saved); O-LoRA's orthogonality loss saves the earlier blocks' A; keyed
    methods a (vision, text) key per task.
    """
    name, t = method.name, s.tasks
    state: dict[str, float] = {}
    acts: dict[str, float] = {}
    earlier = t - 1
    if name.startswith("ewc") and earlier:
        terms = 1 if method.options.mode == "online" else earlier
        state["ewc_fisher_anchors"] = 2 * terms * n_trainable * FP32
        acts["ewc_penalty"] = terms * n_trainable * FP32
    if name.startswith("lwf") and earlier:
        state["lwf_teacher"] = n_trainable * FP32
        w = model_widths(model)
        acts["lwf_logits"] = s.tokens * w.vocab * (s.act + 3 * FP32 * ANSWER_SHARE)
    a_params = sum(layer.lora_A.numel() for layer in layers if isinstance(getattr(layer, "lora_A", None), nn.Parameter))
    b_params = sum(layer.lora_B.numel() for layer in layers if isinstance(getattr(layer, "lora_B", None), nn.Parameter))
    if name.startswith("clmoe"):
        state["clmoe_task_start"] = (a_params + b_params) * FP32
    if name.startswith("lilora") and earlier:
        state["lilora_anchors"] = a_params * FP32
    if name.startswith("sefe") and earlier:
        weights = [layer.in_features * layer.out_features for layer in layers]
        share = min(1.0, earlier * method.options.top_fraction)  # union of the earlier tasks' top p (no overlap)
        acts["sefe_masks"] = share * sum(weights) * (INDEX + FP32) + max(weights) * FP32
    if name.startswith("olora") and earlier:
        acts["olora_earlier_A"] = (
            sum((layer.n_blocks - 1) * layer.config.r * layer.in_features for layer in layers) * FP32
        )
    keys = getattr(method, "keys", None)
    if keys is not None:
        w = model_widths(model)
        state["task_keys"] = t * (w.vision_hidden + w.hidden) * FP32
    return state, acts


def estimate_memory(
    model_spec: str,
    method_name: str,
    setting: Setting | None = None,
    adapter: dict | None = None,
    options: dict | None = None,
) -> dict:
    """{"method", "model", "setting", "params", "bytes": {term: bytes}, "peak_bytes", "peak_gib"} per process.

    peak = weights + optimizer + method state + max(vision tower forward, language-model activations at the
    loss); with checkpointing the language model holds one hidden state per layer plus the larger of the loss's
    tensors and one layer recomputed with its gradients.
    """
    s = setting or Setting()
    model, method = at_last_task(model_spec, method_name, s.tasks, adapter, options)
    w = model_widths(model)
    layers = [layer for _, layer in adapter_layers(model)]
    adapter_ids = {id(p) for layer in layers for p in layer.adapter_parameters().values()}
    proj = projector(model)
    proj_ids = {id(p) for p in proj.parameters()} if proj is not None else set()
    params = list(model.parameters())
    extra = [p for g in method.param_groups(1.0) for p in g["params"]]  # task keys and the like
    n_trainable = sum(p.numel() for p in params if p.requires_grad) + sum(p.numel() for p in extra)
    n_fp32 = sum(p.numel() for p in params if p.requires_grad or id(p) in adapter_ids or id(p) in proj_ids)
    n_frozen = sum(p.numel() for p in params) - n_fp32
    act, tokens = s.act, s.tokens
    lm_layers = [(name, layer) for name, layer in adapter_layers(model) if not _in_vision(name)]
    first = _first_layer(lm_layers)
    named = [(name, layer) for name, layer in lm_layers if _layer_index(name) == first]
    per_layer = [layer for _, layer in named]
    inputs = {SHARED_INPUTS.get(name.rsplit(".", 1)[-1], name): layer.in_features for name, layer in named}
    dropout = layers[0].config.dropout > 0 if layers else False
    adapters_per_layer = adapter_inputs_bytes(tokens, list(inputs.values()), act) + sum(
        adapter_projection_bytes(tokens, layer.in_features, z_width(layer), dropout, act) for layer in per_layer
    )
    copies = sum(saved_adapter_weights(layer, s.batch) for layer in per_layer) * FP32
    one_layer = decoder_layer_bytes(tokens, w, act) + adapters_per_layer + copies
    state, method_acts = method_extras(method, model, layers, n_trainable, s)
    trains_projector = any(p.requires_grad for p in proj.parameters()) if proj is not None else False
    images = s.batch if w.image_tokens else 0
    loss = logits_bytes(tokens, w.vocab, act)
    if s.checkpointing:
        lm = checkpoint_bytes(tokens, w, act) + max(loss, one_layer + layer_backward_bytes(tokens, w, act))
    else:
        lm = w.layers * one_layer + loss
    lm += projector_bytes(images, w, act, trains_projector) + sum(method_acts.values())
    largest_layer = max((sum(p.numel() for p in m.parameters()) for n, m in model.named_modules()
                         if n.split(".")[-1].isdigit()), default=0)  # fmt: skip
    terms = {
        "frozen_weights": frozen_bytes(n_frozen, s.precision, s.processes, s.shard_frozen),
        "gathered_layers": gathered_unit_bytes(largest_layer, s.precision, s.processes, s.shard_frozen),
        "adapter_and_projector_weights": n_fp32 * FP32,
        **optimizer_bytes(n_trainable, s.processes, s.shard_frozen),
        **state,
        "activations": lm,
        "vision_tower_forward": vision_bytes(images, w, act),
    }
    static = sum(v for k, v in terms.items() if k not in ("activations", "vision_tower_forward"))
    peak = static + max(lm, terms["vision_tower_forward"])
    return {
        "method": method_name,
        "model": model_spec,
        "setting": s.__dict__ | {"method_activations": method_acts},
        "params": {"frozen": n_frozen, "fp32": n_fp32, "trainable": n_trainable},
        "bytes": terms,
        "peak_bytes": peak,
        "peak_gib": peak / GIB,
    }


def _in_vision(name: str) -> bool:
    return "vision" in name or "visual" in name


def _layer_index(name: str) -> int | None:
    """The decoder layer number in a module name (`...layers.3.self_attn.q_proj` -> 3), None outside layers."""
    parts = name.split(".")
    return next((int(b) for a, b in zip(parts, parts[1:], strict=False) if a == "layers" and b.isdigit()), None)


def _first_layer(named: list[tuple[str, AdapterLayer]]) -> int | None:
    indices = [i for i in (_layer_index(n) for n, _ in named) if i is not None]
    return min(indices) if indices else None


# ---- checkpoint files --------------------------------------------------------------------------------------------

# safetensors' dtype names in its writer's order: it lays tensors out by dtype, the last of these first, then by name.
SAFETENSORS_DTYPES = {torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.int16: "I16", torch.float16: "F16",
                      torch.bfloat16: "BF16", torch.int32: "I32", torch.float32: "F32", torch.float64: "F64",
                      torch.int64: "I64"}  # fmt: skip
# torch.save's zip archive (torch 2.x, measured, the file named method.pt): an empty dict's file, each tensor's data
# aligned to 64 bytes plus its two zip records and its pickle, each string key, each list of ints (CL-MoE's top).
TORCH_SAVE_EMPTY, TORCH_SAVE_ALIGN, TORCH_SAVE_PER_TENSOR, TORCH_SAVE_PER_KEY = 1255, 64, 196, 10
PICKLED_LIST, PICKLED_INT = 6, 3
Shapes = dict[str, tuple[torch.dtype, tuple[int, ...]]]


def safetensors_bytes(tensors: Shapes) -> int:
    """The exact size of a safetensors file of these tensors: 8 bytes giving the header's length, the JSON header
    (the tensors in the writer's order, with offsets; padded with spaces to a multiple of 8), then the data."""
    rank = {dtype: i for i, dtype in enumerate(SAFETENSORS_DTYPES)}
    header, offset = {}, 0
    for name in sorted(tensors, key=lambda n: (-rank[tensors[n][0]], n)):
        dtype, shape = tensors[name]
        size = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}  # fmt: skip
        offset += size
    text = len(json.dumps(header, separators=(",", ":")))
    return 8 + math.ceil(text / 8) * 8 + offset


def torch_save_bytes(tensor_bytes: list[int], keys: list[str] = (), int_lists: list[int] = ()) -> int:
    """The size of torch.save of a dict holding tensors of these sizes (bytes each), these string keys (each
    pickled once) and lists of ints (their lengths), to within a few bytes per tensor (the constants above)."""
    data = sum(math.ceil(b / TORCH_SAVE_ALIGN) * TORCH_SAVE_ALIGN + TORCH_SAVE_PER_TENSOR for b in tensor_bytes)
    return (TORCH_SAVE_EMPTY + data + sum(len(k) + TORCH_SAVE_PER_KEY for k in keys)
            + sum(PICKLED_LIST + PICKLED_INT * n for n in int_lists))  # fmt: skip


def method_state_sizes(method: Method, model: nn.Module, tasks: int) -> tuple[list[int], list[str], list[int]]:
    """(tensor bytes, string keys, int-list lengths) of `method.state_dict()` after `tasks` tasks, from
    methods/*.py: EWC an fp32 anchor and Fisher per trainable tensor and task (one pair when online), keyed by
    parameter name; SEFE per wrapped Linear the union of each task's top p flat indices (int32, int64 beyond
    2^31 entries; tasks assumed not to overlap); keyed methods an fp32 image and text key per task; ProgLoRA its
    allocator and an fp32 prototype per task; CL-MoE its top experts per task and layer."""
    sizes: list[int] = []
    keys: list[str] = []
    int_lists: list[int] = []
    name = method.name
    if name.startswith("ewc"):
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        terms = 1 if method.options.mode == "online" else tasks
        sizes += [p.numel() * FP32 for p in params.values()] * 2 * terms
        keys += list(params) * terms  # each term's dicts pickle the names again
    if name.startswith("sefe"):
        for layer_name, layer in adapter_layers(model):
            numel = layer.in_features * layer.out_features
            kept = min(numel, tasks * max(1, int(method.options.top_fraction * numel)))
            sizes.append(kept * (INDEX if numel > torch.iinfo(torch.int32).max else FP32))  # int32: 4 bytes
            keys.append(layer_name)
    if getattr(method, "keys", None) is not None:
        widths = (require_family(model).vision_width(model), model.get_input_embeddings().embedding_dim)
        sizes += [width * FP32 for width in widths for _ in range(tasks)]
    allocator = getattr(method, "allocator", None)
    if allocator is not None:
        state = allocator.state_dict()
        sizes += [v.numel() * v.element_size() for v in state.values()]
        sizes += [model.get_input_embeddings().embedding_dim * FP32] * tasks
        keys += list(state)
    if name.startswith("clmoe"):
        int_lists += [method.options.top_experts] * tasks * sum(1 for _ in adapter_layers(model))
    return sizes, keys, int_lists


def checkpoint_file_bytes(
    model_spec: str,
    method_name: str,
    tasks: int,
    precision: str = "bf16",
    adapter: dict | None = None,
    options: dict | None = None,
) -> dict[str, int]:
    """Bytes of the stage checkpoint continual.save_checkpoint writes after `tasks` tasks: {"adapters.safetensors",
    "projector.safetensors", "method.pt", "total"} (adapters.json and state.json, a few kB, not counted).

    Shapes from the meta-device setup replayed to the last task (grown blocks, branches, routers); dtypes as they
    are saved: every adapter tensor in fp32 (adapters/base.py), projector tensors that train at task 1 in fp32
    (train.float32_groups), the frozen rest of the projector in the run precision."""
    model, method = meta_method(model_spec, method_name, adapter, options)
    trains = {id(p) for p in model.parameters() if p.requires_grad}
    start_tasks(model, method, tasks)
    adapters = {f"{name}.{key}": (v.dtype, tuple(v.shape)) for name, layer in adapter_layers(model)
                for key, v in _adapter_state(layer).items()}  # fmt: skip
    adapter_ids = {id(p) for _, layer in adapter_layers(model) for p in layer.adapter_parameters().values()}
    frozen = torch.bfloat16 if precision == "bf16" else torch.float32
    proj = projector(model)
    kept = {id(p) for p in proj.parameters() if id(p) in trains or id(p) in adapter_ids} if proj is not None else set()
    state = proj.state_dict(keep_vars=True) if proj is not None else {}
    projected = {k: (v.dtype if id(v) in kept or not v.is_floating_point() else frozen, tuple(v.shape))
                 for k, v in state.items()}  # fmt: skip
    sizes = {
        "adapters.safetensors": safetensors_bytes(adapters),
        "projector.safetensors": safetensors_bytes(projected) if proj is not None else 0,
        "method.pt": torch_save_bytes(*method_state_sizes(method, model, tasks)),
    }
    return {**sizes, "total": sum(sizes.values())}
