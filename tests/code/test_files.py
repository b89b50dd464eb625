"""Folders published atomically."""

from __future__ import annotations


def test_atomic_directory_has_normal_permissions_and_leaves_nothing_on_failure(tmp_path):
    import os

    from pneumonia.files import atomic_directory

    with atomic_directory(tmp_path / "out") as staging:
        (staging / "a.txt").write_text("x")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out" / "a.txt").read_text() == "x"
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask
    try:
        with atomic_directory(tmp_path / "out") as staging:
            (staging / "b.txt").write_text("y")
            raise RuntimeError("half-way")
    except RuntimeError:
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt"]
