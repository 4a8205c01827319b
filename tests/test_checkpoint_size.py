"""Checkpoint sizes from the meta-device setup (memory.checkpoint_file_bytes) against the files the project writes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from branchlora.continual import StreamData, run_method
from branchlora.evaluation.evaluate import EvalConfig
from branchlora.memory import checkpoint_file_bytes, safetensors_bytes, torch_save_bytes
from branchlora.methods import get_method
from branchlora.train import TrainConfig

from engine_support import ADAPTER, LORA, fresh

FILES = ("adapters.safetensors", "projector.safetensors", "method.pt")


def test_safetensors_bytes_is_the_written_size(tmp_path) -> None:
    tensors = {"b.mask": torch.zeros(3, dtype=torch.bool), "a.w": torch.zeros(2, 3), "c.ids": torch.zeros(5).long(),
               "d.half": torch.zeros(2, 7, dtype=torch.bfloat16), "e": torch.zeros(11, 13)}  # fmt: skip
    save_file(tensors, str(tmp_path / "x.safetensors"))
    shapes = {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}
    assert safetensors_bytes(shapes) == (tmp_path / "x.safetensors").stat().st_size


def test_torch_save_bytes_within_a_few_bytes_a_tensor(tmp_path) -> None:
    """EWC's shape of state: per term an anchor and a Fisher dict over the same (freshly made) parameter names."""
    terms, sizes, keys = [], [], []
    for _ in range(3):
        names = [f"model.layers.{i}.q_proj.lora_A" for i in range(40)]
        terms.append(({n: torch.zeros(i + 1) for i, n in enumerate(names)}, {n: torch.zeros(50) for n in names}))
        sizes += [4 * (i + 1) for i in range(40)] + [200] * 40
        keys += names
    written = len(_saved({"terms": terms}, tmp_path))
    assert abs(torch_save_bytes(sizes, keys) - written) < 8 * len(sizes)
    assert torch_save_bytes([]) == len(_saved({}, tmp_path))


def _saved(obj: object, tmp_path) -> bytes:
    torch.save(obj, tmp_path / "method.pt")  # the archive's folder is named after the file: as checkpoints name it
    return (tmp_path / "method.pt").read_bytes()


@pytest.mark.parametrize(
    ("name", "adapter"),
    [("ewc", LORA), ("sefe", LORA), ("branchlora", ADAPTER), ("clmoe", ADAPTER), ("proglora", LORA), ("lilora", LORA)],
)
def test_checkpoint_file_bytes_match_the_files_run_method_writes(small_toy, tmp_path, name: str, adapter: dict) -> None:
    base, toy = small_toy
    data = StreamData(toy.names[:2], toy.metrics[:2], [t[:2] for t in toy.train[:2]], toy.test[:2], toy.collator)
    base.config.to_json_file(tmp_path / "config.json")
    out = tmp_path / name
    train, evaluation = TrainConfig(max_steps=1, batch_size=2), EvalConfig(batch_size=2, max_new_tokens=1, limit=1)
    run_method(get_method(name)(adapter), fresh(base), data, train, evaluation, out)
    for tasks in (1, 2):
        computed = checkpoint_file_bytes(str(tmp_path / "config.json"), name, tasks, "no", adapter)
        written = {f: (out / f"task-{tasks - 1:02d}" / f).stat().st_size for f in FILES}
        assert computed["adapters.safetensors"] == written["adapters.safetensors"]
        assert computed["projector.safetensors"] == written["projector.safetensors"]
        assert written["method.pt"] <= computed["method.pt"] + 4096, (tasks, computed, written)
        if name != "sefe" or tasks == 1:  # SEFE: the second task's top p may overlap the first's (an upper bound)
            assert computed["method.pt"] - written["method.pt"] < 4096, (tasks, computed, written)
