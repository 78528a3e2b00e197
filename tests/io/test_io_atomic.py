"""Atomic writes: the target holds the old contents or the complete new ones, and no temporary file stays."""

from __future__ import annotations

import copy
import errno
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import entrenar.io.safetensors as st_module
from entrenar.io import (
    FormatError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    load_safetensors,
    save_safetensors,
)


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_write_bytes_creates_then_replaces(tmp_path: Path) -> None:
    target = tmp_path / "blob.bin"
    atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first"
    atomic_write_bytes(str(target), bytearray(b"second, longer"))
    assert target.read_bytes() == b"second, longer"
    atomic_write_bytes(target, memoryview(b"3"))
    assert target.read_bytes() == b"3"
    assert _names(tmp_path) == ["blob.bin"]


def test_write_text_encodes_and_keeps_newlines(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    atomic_write_text(target, "línea 1\r\nline 2\n")
    assert target.read_bytes() == "línea 1\r\nline 2\n".encode()
    atomic_write_text(target, "é", encoding="latin-1")
    assert target.read_bytes() == b"\xe9"


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=2048), text=st.text(max_size=200))
def test_round_trip_any_contents(tmp_path_factory: pytest.TempPathFactory, data: bytes, text: str) -> None:
    directory = tmp_path_factory.mktemp("any")
    atomic_write_bytes(directory / "b", data)
    atomic_write_text(directory / "t", text)
    assert (directory / "b").read_bytes() == data
    assert (directory / "t").read_bytes() == text.encode("utf-8")
    assert _names(directory) == ["b", "t"]


def test_new_file_mode_follows_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640  # 0o666 less the umask, like open(..., "w")


def test_atomic_path_yields_an_empty_sibling_and_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.dat"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        assert tmp.read_bytes() == b""
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # not visible before the block ends
    assert target.read_bytes() == b"new"
    assert _names(tmp_path) == ["out.dat"]


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
def test_writer_raising_leaves_old_file_and_no_temp(tmp_path: Path, exc_type: type[BaseException]) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"previous contents")
    with pytest.raises(exc_type), atomic_path(target) as tmp:
        tmp.write_bytes(b"half of the new")
        raise exc_type("writer failed")
    assert target.read_bytes() == b"previous contents"
    assert _names(tmp_path) == ["model.safetensors"]


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_failing_replace_or_fsync_leaves_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old")

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, f"simulated {failing} failure")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match=f"simulated {failing} failure"):
        atomic_write_bytes(target, b"new contents")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["state.json"]


def test_save_safetensors_failing_midway_keeps_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "adapter_model.safetensors"
    save_safetensors(target, {"a": np.arange(4, dtype=np.float32)})
    before = target.read_bytes()

    def half_writer(tensors: object, filename: Path, metadata: object = None) -> None:
        Path(filename).write_bytes(before[:10])
        raise MemoryError("simulated failure while writing")

    monkeypatch.setattr(st_module, "save_file", half_writer)
    with pytest.raises(MemoryError):
        save_safetensors(target, {"a": np.zeros(1000, dtype=np.float64)})
    assert target.read_bytes() == before
    assert _names(tmp_path) == ["adapter_model.safetensors"]
    np.testing.assert_array_equal(load_safetensors(target)["a"], np.arange(4, dtype=np.float32))


def test_unwritable_directory_names_the_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests run as root here, where chmod cannot make a directory read-only: simulate what the kernel says.
    real_open = os.open

    def read_only_open(path: str | os.PathLike[str], flags: int, *args: int, **kwargs: object) -> int:
        if flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only_open)
    target = tmp_path / "weights.safetensors"
    with pytest.raises(PermissionError) as info:
        atomic_write_text(target, "x")
    assert str(target) in str(info.value) and "Permission denied" in str(info.value)
    assert info.value.errno == errno.EACCES
    monkeypatch.undo()
    assert _names(tmp_path) == []


def test_really_unwritable_directory(tmp_path: Path) -> None:
    # Root ignores permission bits, so as root the unwritable directory is sysfs, which refuses new
    # files even to root; otherwise a directory without write permission.
    if os.geteuid() == 0:
        locked = Path("/sys")
        assert locked.is_dir()
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match=str(locked / "f.bin")):
            atomic_write_bytes(locked / "f.bin", b"x")
    finally:
        if locked != Path("/sys"):
            locked.chmod(0o755)
    assert not (locked / "f.bin").exists()


def test_missing_directory_and_directory_target_are_named(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "dir" / "f.txt"
    with pytest.raises(FileNotFoundError, match=r"cannot write .*f\.txt: cannot create a temporary file"):
        atomic_write_text(target, "x")
    with pytest.raises(IsADirectoryError, match=f"cannot write {tmp_path}: it is a directory"):
        atomic_write_bytes(tmp_path, b"x")


def test_wrong_data_types_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="data must be bytes, got str"):
        atomic_write_bytes(tmp_path / "f", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text must be str, got bytes"):
        atomic_write_text(tmp_path / "f", b"bytes")  # type: ignore[arg-type]
    assert _names(tmp_path) == []


def test_concurrent_writers_never_show_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "shared.bin"
    payloads = [bytes([i]) * 200_000 for i in range(4)]
    atomic_write_bytes(target, payloads[0])
    reads: list[bool] = []  # one entry per read: was it one complete payload?
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            reads.append(target.read_bytes() in payloads)

    def writer(payload: bytes) -> None:
        for _ in range(5):
            atomic_write_bytes(target, payload)

    threads = [threading.Thread(target=writer, args=(p,)) for p in payloads]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert target.read_bytes() in payloads
    assert _names(tmp_path) == ["shared.bin"]
    assert reads and all(reads)


def test_format_error_carries_path_and_survives_copying() -> None:
    exc = FormatError(Path("dir/adapter_model.safetensors"), "tensor 'x' is wrong")
    assert exc.path == os.fspath(Path("dir/adapter_model.safetensors"))
    assert str(exc) == f"{exc.path}: tensor 'x' is wrong"
    assert isinstance(exc, ValueError)
    back = copy.deepcopy(exc)  # goes through __reduce__, as pickling to another process does
    assert (type(back), back.path, back.message, str(back)) == (FormatError, exc.path, exc.message, str(exc))
