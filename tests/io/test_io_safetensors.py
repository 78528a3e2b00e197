"""safetensors writer and reader: round trips, byte-identical interop with the `safetensors` package."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors import TensorSpec, serialize

from entrenar.io import FormatError, TensorInfo, load_safetensors, read_safetensors_header, save_safetensors

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
    "BOOL": np.bool_,
}  # fmt: skip
HAVE_ML_DTYPES = importlib.util.find_spec("ml_dtypes") is not None


def _sample(dtype: type[np.generic], shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if dtype is np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return rng.standard_normal(shape).astype(dtype)


def _assert_same_file(ours: bytes, theirs: bytes) -> None:
    """Equal bytes, except that `__metadata__` may list its keys in another order: the safetensors package
    keeps metadata in a Rust HashMap, so with two or more keys its own output varies from call to call."""
    n = int.from_bytes(ours[:8], "little")
    assert ours[:8] == theirs[:8] and ours[8 + n :] == theirs[8 + n :]
    assert json.loads(ours[8 : 8 + n]) == json.loads(theirs[8 : 8 + n])
    if len(json.loads(ours[8 : 8 + n]).get("__metadata__", {})) <= 1:
        assert ours == theirs


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    for key, array in want.items():
        assert got[key].dtype == array.dtype.newbyteorder("="), key
        assert got[key].shape == array.shape, key
        np.testing.assert_array_equal(got[key], array, err_msg=key)


@pytest.mark.parametrize("code", list(DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (5,), (2, 3, 4)], ids=str)
def test_round_trip_every_dtype_and_shape(tmp_path: Path, code: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(len(shape) * 100 + len(code))
    array = _sample(DTYPES[code], shape, rng)
    path = tmp_path / "t.safetensors"
    save_safetensors(path, {"x": array})
    loaded = load_safetensors(path)
    _assert_same(loaded, {"x": array})
    out = loaded["x"]
    assert out.flags.owndata and out.flags.writeable and out.flags.c_contiguous
    out[...] = 0  # owned: writing must not touch anything else
    header, metadata = read_safetensors_header(path)
    itemsize = array.dtype.itemsize
    assert header == {"x": TensorInfo(code, shape, (0, int(np.prod(shape)) * itemsize))}
    assert metadata == {}


def test_many_tensors_and_metadata_match_the_reference_byte_for_byte(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        f"base_model.model.layer.{i}.{code.lower()}": _sample(dtype, (i % 3, 4) if i % 2 else (i + 1,), rng)
        for i, (code, dtype) in enumerate(DTYPES.items())
    }
    tensors["scalar"] = np.array(2.5, dtype=np.float32)
    metadata = {"format": "pt", "note": "ünïcode ✓", "": "empty key is fine in metadata"}
    ours = tmp_path / "ours.safetensors"
    save_safetensors(ours, tensors, metadata)
    _assert_same_file(ours.read_bytes(), safetensors.numpy.save(tensors, metadata=metadata))
    single = tmp_path / "single.safetensors"
    save_safetensors(single, tensors, {"format": "pt"})
    assert single.read_bytes() == safetensors.numpy.save(tensors, metadata={"format": "pt"})
    _assert_same(safetensors.numpy.load_file(str(ours)), tensors)
    _assert_same(load_safetensors(ours), tensors)
    assert read_safetensors_header(ours)[1] == metadata


def test_files_written_by_the_package_load_here(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    tensors = {code: _sample(dtype, (3, 2), rng) for code, dtype in DTYPES.items()}
    theirs = tmp_path / "theirs.safetensors"
    safetensors.numpy.save_file(tensors, str(theirs), metadata={"format": "np"})
    _assert_same(load_safetensors(theirs), tensors)
    header, metadata = read_safetensors_header(theirs)
    assert metadata == {"format": "np"}
    assert {key: info.dtype for key, info in header.items()} == {code: code for code in DTYPES}


def test_header_order_and_offsets_follow_the_file(tmp_path: Path) -> None:
    tensors = {"b": np.zeros(3, np.int8), "a": np.ones((2, 2), np.float64), "c": np.zeros((0,), np.float32)}
    path = tmp_path / "o.safetensors"
    save_safetensors(path, tensors)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    on_disk = json.loads(raw[8 : 8 + n])
    header, _ = read_safetensors_header(path)
    assert list(header) == list(on_disk) == list(load_safetensors(path))
    for key, info in header.items():
        assert list(info.data_offsets) == on_disk[key]["data_offsets"]
        begin, end = info.data_offsets
        assert raw[8 + n + begin : 8 + n + end] == np.ascontiguousarray(tensors[key]).tobytes()


def test_non_contiguous_fortran_and_big_endian_inputs(tmp_path: Path) -> None:
    base = np.arange(60, dtype=np.float32).reshape(6, 10)
    tensors = {
        "transposed": base.T,
        "strided": base[::2, 1::3],
        "fortran": np.asfortranarray(base),
        "big_endian": base.astype(">f4"),
        "big_int": np.arange(5, dtype=">i8"),
        "readonly": np.frombuffer(base.tobytes(), dtype=np.float32),
    }
    path = tmp_path / "layout.safetensors"
    save_safetensors(path, tensors)
    loaded = load_safetensors(path)
    _assert_same(loaded, tensors)
    assert all(a.dtype.isnative for a in loaded.values())
    assert path.read_bytes() == safetensors.numpy.save(
        {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    )


@pytest.mark.parametrize("metadata", [None, {}, {"format": "pt"}])
def test_empty_mapping_round_trips(tmp_path: Path, metadata: dict[str, str] | None) -> None:
    # safetensors 0.8.0 itself writes ({}, metadata={}) as a header its own reader refuses; ours must not.
    path = tmp_path / "empty.safetensors"
    save_safetensors(path, {}, metadata)
    assert load_safetensors(path) == {}
    assert read_safetensors_header(path) == ({}, metadata or {})
    assert safetensors.numpy.load_file(str(path)) == {}


@settings(max_examples=40, deadline=None)
@given(
    arrays=st.dictionaries(
        st.text(min_size=1, max_size=12).filter(lambda s: s != "__metadata__"),
        hnp.arrays(
            st.sampled_from([np.dtype(d) for d in DTYPES.values()]),
            hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
        ),
        max_size=4,
    ),
    metadata=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
)
def test_round_trip_property(
    tmp_path_factory: pytest.TempPathFactory, arrays: dict[str, np.ndarray], metadata: dict[str, str]
) -> None:
    path = tmp_path_factory.mktemp("prop") / "p.safetensors"
    save_safetensors(path, arrays, metadata)
    loaded = load_safetensors(path)
    assert sorted(loaded) == sorted(arrays)
    for key, array in arrays.items():
        assert loaded[key].dtype == array.dtype and loaded[key].shape == array.shape
        assert loaded[key].tobytes() == array.tobytes()  # bitwise: NaN payloads and -0.0 survive
    assert read_safetensors_header(path)[1] == metadata
    _assert_same_file(path.read_bytes(), safetensors.numpy.save(arrays, metadata=metadata or None))


@pytest.mark.parametrize(
    ("tensors", "metadata", "error", "match"),
    [
        ({"": np.zeros(1)}, None, TypeError, "non-empty strings, got ''"),
        ({3: np.zeros(1)}, None, TypeError, "non-empty strings, got 3"),
        ({"__metadata__": np.zeros(1)}, None, ValueError, "reserved"),
        ({"w": [1.0, 2.0]}, None, TypeError, "tensor 'w' is a builtins.list, expected a numpy.ndarray"),
        ({"w": np.float32(1.0)}, None, TypeError, "tensor 'w' is a numpy.float32"),
        (
            {"w": np.zeros(2, np.complex64)},
            None,
            ValueError,
            "tensor 'w' has dtype complex64; supported: float64",
        ),
        ({"w": np.zeros(2, np.longdouble)}, None, ValueError, "has dtype float128"),
        ({"w": np.array(["a"])}, None, ValueError, "has dtype <U1"),
        ({"w": np.zeros(2, object)}, None, ValueError, "has dtype object"),
        ({"w": np.zeros(1)}, {"format": 1}, TypeError, "metadata must map str to str, got 'format': 1"),
        ({"w": np.zeros(1)}, {2: "x"}, TypeError, "metadata must map str to str"),
        ({"w": np.zeros(1)}, ["format"], TypeError, "metadata must be a mapping of str to str, got list"),
        ([("w", np.zeros(1))], None, TypeError, "tensors must be a mapping"),
    ],
)
def test_save_refuses_bad_input_and_writes_nothing(
    tmp_path: Path, tensors: object, metadata: object, error: type[Exception], match: str
) -> None:
    path = tmp_path / "bad.safetensors"
    with pytest.raises(error, match=match) as info:
        save_safetensors(path, tensors, metadata)  # type: ignore[arg-type]
    assert str(path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def _bf16_file(path: Path, bits: np.ndarray) -> None:
    """A file of an F32 tensor 'h' and a BF16 tensor 'w' made of raw bit patterns, written by the
    safetensors package itself (its TensorSpec takes a pointer, so no ml_dtypes is needed)."""
    h = np.ones(1, dtype=np.float32)
    bits = np.ascontiguousarray(bits, dtype="<u2")
    specs = {
        "h": TensorSpec(dtype="float32", shape=h.shape, data_ptr=h.ctypes.data, data_len=h.nbytes),
        "w": TensorSpec(dtype="bfloat16", shape=bits.shape, data_ptr=bits.ctypes.data, data_len=bits.nbytes),
    }
    path.write_bytes(bytes(serialize(specs, metadata=None)))


def test_bf16_header_reads_without_ml_dtypes_and_load_says_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bf16.safetensors"
    _bf16_file(path, np.array([[0x3F80, 0xC000]], dtype=np.uint16))
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # makes `import ml_dtypes` fail even if installed
    header, _ = read_safetensors_header(path)
    assert header["w"] == TensorInfo("BF16", (1, 2), (4, 8))
    with pytest.raises(ImportError, match=r"bf16.safetensors: tensor 'w' is bfloat16.*pip install ml_dtypes"):
        load_safetensors(path)


@pytest.mark.skipif(not HAVE_ML_DTYPES, reason="ml_dtypes is not installed")
def test_bf16_round_trip_with_ml_dtypes(tmp_path: Path) -> None:
    import ml_dtypes

    path = tmp_path / "bf16.safetensors"
    bits = np.array([[0x3F80, 0xC000, 0x7F80]], dtype=np.uint16)  # 1.0, -2.0, +inf
    _bf16_file(path, bits)
    loaded = load_safetensors(path)["w"]
    assert loaded.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(loaded.astype(np.float32), [[1.0, -2.0, np.inf]])
    again = tmp_path / "again.safetensors"
    save_safetensors(again, {"h": np.ones(1, np.float32), "w": loaded})
    assert again.read_bytes() == path.read_bytes()


def test_torch_written_file_loads_here(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import safetensors.torch

    g = torch.Generator().manual_seed(0)
    tensors = {
        "lin.weight": torch.randn(4, 3, generator=g),
        "lin.bias": torch.randn(4, generator=g, dtype=torch.float64),
        "ids": torch.arange(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "half": torch.randn(2, 2, generator=g).half(),
        "step": torch.tensor(3, dtype=torch.int32),
    }
    path = tmp_path / "torch.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt"})
    _assert_same(load_safetensors(path), {k: v.numpy() for k, v in tensors.items()})
    assert read_safetensors_header(path)[1] == {"format": "pt"}


def test_reader_errors_are_format_errors_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"missing\.safetensors: no such file") as info:
        load_safetensors(tmp_path / "missing.safetensors")
    assert info.value.path == str(tmp_path / "missing.safetensors")
    with pytest.raises(FormatError, match="found a directory"):
        read_safetensors_header(tmp_path)
    with pytest.raises(ValueError, match="max_header_bytes must be a positive int"):
        load_safetensors(tmp_path / "x", max_header_bytes=0)


def test_io_package_imports_nothing_else_from_entrenar() -> None:
    """entrenar.io sits low in the import order: NumPy, the standard library and safetensors only."""
    import ast

    import entrenar.io

    allowed_roots = {"numpy", "safetensors", "__future__"} | set(sys.stdlib_module_names)
    package = Path(entrenar.io.__file__).parent
    for source in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for imported in names:
                ok = imported.split(".")[0] in allowed_roots or imported.startswith("entrenar.io")
                assert ok, f"{source.name} imports {imported}"
