"""mmdomain.data.files: the one rule for the files a dataset reads (regular, within its ceiling,
inside the data root), shared by every plugin's readers; each refusal raises the caller's error
type, and no reason carries a path (the medical plugin shows file names only as pseudonyms)."""

from __future__ import annotations

import os

import pytest

from mmdomain import DataError
from mmdomain.data.files import FileRefused, inside_root, regular_file


class SiteError(DataError):
    def __init__(self, path, reason):
        self.reason = reason
        super().__init__(f"<pseudonym>: {reason}")


def test_a_regular_file_inside_the_root_passes_and_is_resolved(tmp_path):
    (tmp_path / "a").mkdir()
    f = tmp_path / "a" / "scan.dcm"
    f.write_bytes(b"x" * 10)
    os.symlink(f, tmp_path / "link.dcm")  # a symlink inside the tree is followed
    real, st = regular_file(tmp_path / "link.dcm", root=tmp_path, max_bytes=10)
    assert real == f.resolve() and st.st_size == 10


@pytest.mark.parametrize("kind", ["fifo", "folder", "device", "missing", "too_big", "outside", "dotdot", "loop"])
def test_each_hostile_file_is_refused_with_the_callers_error_and_no_path_in_the_reason(kind, tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    secret = tmp_path / "PATIENT-DOE-JOHN.txt"
    secret.write_text("outside the root")
    target = {"fifo": root / "pipe.dcm", "folder": root / "dir.dcm", "device": root / "null.dcm",
              "missing": root / "gone.dcm", "too_big": root / "big.dcm", "outside": root / "link.dcm",
              "dotdot": root / ".." / secret.name, "loop": root / "loop.dcm"}[kind]
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
    elif kind == "device":
        os.symlink("/dev/null", target)  # resolves outside the root: refused before it is stat-ed
    elif kind == "too_big":
        target.write_bytes(b"x" * 11)
    elif kind == "outside":
        os.symlink(secret, target)
    elif kind == "loop":
        os.symlink(root / "loop.dcm", target)
    expected = {"fifo": "FIFO", "folder": "a folder", "device": "outside the data root", "missing": "no such file",
                "too_big": "over the ceiling of 10 (test ceiling)", "outside": "outside the data root",
                "dotdot": "outside the data root", "loop": "cannot be"}[kind]
    with pytest.raises(SiteError) as exc:
        regular_file(target, root=root, max_bytes=10, ceiling_name="test ceiling", error=SiteError)
    assert expected in exc.value.reason, exc.value.reason
    assert "DOE" not in str(exc.value) and str(tmp_path) not in str(exc.value)


def test_without_a_root_a_device_is_refused_by_its_kind():
    with pytest.raises(FileRefused, match="character device, not a regular file"):
        regular_file("/dev/null")


def test_inside_root_accepts_the_root_and_what_lies_under_it(tmp_path):
    assert inside_root(tmp_path, tmp_path) == tmp_path.resolve()
    assert inside_root(tmp_path / "x" / ".." / "y", tmp_path) == (tmp_path / "y").resolve()
    with pytest.raises(FileRefused, match="outside the data root"):
        inside_root(tmp_path.parent, tmp_path)
