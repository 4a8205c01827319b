"""The output folder: one writer at a time, --overwrite clears only a run, stale locks are taken over."""

import json
import os
import re
import socket

import pytest

from branchlora.rundir import LOCK, MARKER, check_apart, check_out, claimed


def test_overwrite_clears_the_previous_run_only_and_the_lock_is_released(tmp_path):
    (tmp_path / "lora" / "task-00").mkdir(parents=True)  # a killed run: a checkpoint, no results yet
    (tmp_path / "order1-seed1" / "lora" / "task-00").mkdir(parents=True)
    for name in ("results.json", "report.md", "notes.txt"):
        (tmp_path / name).write_text("")
    (tmp_path / "images").mkdir()  # not written by a run: kept
    (tmp_path / "images" / "a.png").write_text("")
    check_out(tmp_path, resume=False, overwrite=True)
    with claimed(tmp_path, overwrite=True, config={"lr": 1}):
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LOCK, MARKER, "notes.txt", "images"])
        assert (tmp_path / "images" / "a.png").exists()
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK).exists() and json.loads((tmp_path / MARKER).read_text()) == {"lr": 1}


def test_a_live_lock_refuses_a_second_writer_and_a_dead_one_is_taken_over(tmp_path):
    (tmp_path / LOCK).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with (
        pytest.raises(ValueError, match=re.escape(f"locked by {str(tmp_path / LOCK)!r} (held by pid {os.getpid()}")),
        claimed(tmp_path, overwrite=False, config={}),
    ):
        pass
    (tmp_path / LOCK).write_text(json.dumps({"pid": 2**22 + 7, "host": socket.gethostname()}))
    with claimed(tmp_path, overwrite=False, config={}):
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()


def test_resume_keeps_the_previous_run(tmp_path):
    (tmp_path / "lora" / "task-00").mkdir(parents=True)
    check_out(tmp_path, resume=True, overwrite=False)
    with claimed(tmp_path, overwrite=False, config={}):
        pass
    assert (tmp_path / "lora" / "task-00").is_dir()


def test_resume_or_overwrite_of_a_folder_holding_no_run_is_refused(tmp_path):
    (tmp_path / "train.json").write_text("[]")
    for flags in ({"resume": True, "overwrite": False}, {"resume": False, "overwrite": True}):
        with pytest.raises(ValueError, match="is not empty and holds no branchlora run"):
            check_out(tmp_path, **flags)
    assert (tmp_path / "train.json").read_text() == "[]"


def test_an_out_holding_or_inside_nothing_of_the_inputs_passes_and_one_holding_them_is_refused(tmp_path):
    data = tmp_path / "data"
    inputs = {"benchmark file": data / "bench.yaml", "image root": data / "images"}
    check_apart(tmp_path / "runs", inputs)
    check_apart(data / "images-runs", inputs)  # a sibling whose name starts the same is apart
    for out in (tmp_path, data, data / "images", tmp_path / "x" / ".."):
        with pytest.raises(ValueError, match=r"holds the (benchmark file|image root) \("):
            check_apart(out, inputs)
