"""Atomic writes: complete files with the usual permissions, nothing half-written left behind."""

import os

from branchlora.atomic import write_json


def test_atomic_writes_have_normal_permissions(tmp_path):
    write_json(tmp_path / "r.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_atomic_dir_is_renamed_into_place_with_normal_permissions(tmp_path):
    from branchlora.atomic import atomic_dir

    with atomic_dir(tmp_path / "built", "done.txt") as tmp:
        (tmp / "done.txt").write_text("ok")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "built" / "done.txt").read_text() == "ok"
    assert (tmp_path / "built").stat().st_mode & 0o777 == 0o777 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["built"]
