"""rrsr_lib.files: atomic writes, and one clear message for every way a tensor file can be bad."""
import os

import pytest
import torch

from rrsr_lib.errors import InputError
from rrsr_lib.files import atomic_output, atomic_torch_save, atomic_write_text, load_tensors, sha256_file


class _RunsCode:
    """Unpickling this would call os.getcwd(): a stand-in for a pickle that runs code."""

    def __reduce__(self):
        return (os.getcwd, ())


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_a_file_of_tensors_loads(tmp_path):
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "ok.pt")
    assert torch.equal(load_tensors(tmp_path / "ok.pt", "weights", "fix it")["w"], torch.arange(3))
    assert not list(tmp_path.glob(".*.tmp"))


def test_two_writers_of_one_file_at_once_both_finish_and_the_last_one_wins(tmp_path):
    # two processes (two notebooks, two test workers) may write the same results file at the same time: each
    # writes its own temporary copy, so neither renames or removes the other's
    path = tmp_path / "result.json"
    with atomic_output(path) as first:
        first.write_text("first")
        with atomic_output(path) as second:
            assert second != first
            second.write_text("second")
        assert path.read_text() == "second" and first.read_text() == "first"
    assert path.read_text() == "first"
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("case, message", [
    ("missing", r"weights .*nothing\.pt not found; restore it"),
    ("empty", r"weights .*empty\.pt is empty \(0 bytes\); restore it"),
    ("truncated", r"weights .*truncated\.pt cannot be read: it is truncated or not a torch file .*; restore it"),
    ("text", r"weights .*text\.pt cannot be read: it is truncated or not a torch file"),
    ("code", r"weights .*code\.pt holds objects other than tensors .*could run code\); it was not loaded; restore it"),
])
def test_every_bad_file_gives_one_message_naming_it_and_the_fix(tmp_path, case, message):
    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.zeros(1000)}, whole)
    path = {"missing": lambda: tmp_path / "nothing.pt",
            "empty": lambda: _write(tmp_path / "empty.pt", b""),
            "truncated": lambda: _write(tmp_path / "truncated.pt", whole.read_bytes()[:300]),
            "text": lambda: _write(tmp_path / "text.pt", b"model: not a torch file\n"),
            "code": lambda: (torch.save({"x": _RunsCode()}, tmp_path / "code.pt"), tmp_path / "code.pt")[1]}[case]()
    with pytest.raises(InputError, match=message) as info:
        load_tensors(path, "weights", "restore it")
    assert "weights_only=False" not in str(info.value)


def test_atomic_text_and_sha256(tmp_path):
    p = atomic_write_text(tmp_path / "a.txt", "abc")
    assert p.read_text() == "abc"
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
