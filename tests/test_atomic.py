"""Atomic writes: complete files with the usual permissions, nothing half-written left behind."""

import os

from branchlora.atomic import write_json


def test_atomic_writes_have_normal_permissions(tmp_path):
    write_json(tmp_path / "r.json", {"a": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind
