"""Checkpoint folders: atomic writes, `latest`, pruning, the JSON state encoding, malformed files, and
resumes that do not fit the trainer."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from train_helpers import make_trainer

import entrenar.train.checkpoint as ckpt
from entrenar.io import FormatError, load_safetensors
from entrenar.train import list_checkpoints, read_checkpoint, resolve_checkpoint
from entrenar.train.state import from_json_tree, to_json_tree


def test_layout_and_contents(tmp_path: Path) -> None:
    t = make_trainer(tmp_path / "run", max_steps=6, save_every=2, keep_last=2)
    t.train()
    root = tmp_path / "run" / "checkpoints"
    assert [s for s, _ in list_checkpoints(root)] == [4, 6]  # keep_last=2
    assert (root / "latest").read_text() == "step-6\n"
    folder = root / "step-6"
    files = ["model.safetensors", "optimizer.safetensors", "optimizer.json", "scheduler.json", "config.json"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*files, "trainer_state.json", "checksums.json"]
    )
    weights = load_safetensors(folder / "model.safetensors")
    assert list(weights) == sorted(n for n, p in t.model.named_parameters() if p.requires_grad)
    for name, value in t.model.state_dict().items():
        np.testing.assert_array_equal(weights[name], value)
    ck = read_checkpoint(tmp_path / "run")
    assert ck.step == 6 and ck.path == folder and ck.config["max_steps"] == 6
    assert ck.trainer_state["loader"]["position"] == 6 and ck.param_names == [
        n for n, _ in t.model.named_parameters()
    ]
    assert json.loads((folder / "config.json").read_text())["output_dir"] == str(tmp_path / "run")
    assert not list(root.glob(".*"))  # no temporary folders left


def test_only_trainable_weights_are_saved(tmp_path: Path) -> None:
    t = make_trainer(tmp_path / "run", max_steps=1)
    t.model.embed.weight.requires_grad_(False)
    t.train()
    assert "embed.weight" not in load_safetensors(
        tmp_path / "run" / "checkpoints" / "step-1" / "model.safetensors"
    )


def test_a_failure_mid_write_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = make_trainer(tmp_path / "run", max_steps=6, save_every=2)
    real = ckpt.save_safetensors

    def failing(path: Any, tensors: Any, metadata: Any = None) -> None:
        if ".step-6." in str(path) and Path(path).name == "optimizer.safetensors":
            real(path, tensors, metadata)  # the file is complete, the checkpoint is not
            raise OSError("disk full")
        real(path, tensors, metadata)

    monkeypatch.setattr(ckpt, "save_safetensors", failing)
    with pytest.raises(OSError, match="disk full"):
        t.train()
    root = tmp_path / "run" / "checkpoints"
    assert (root / "latest").read_text() == "step-4\n"
    assert [s for s, _ in list_checkpoints(root)] == [2, 4] and not list(root.glob(".*"))
    assert read_checkpoint(root).step == 4
    monkeypatch.setattr(ckpt, "save_safetensors", real)
    resumed = make_trainer(tmp_path / "run", max_steps=6, save_every=2, resume=True)
    assert resumed.train().steps == 6 and (root / "latest").read_text() == "step-6\n"


def test_resolve_checkpoint_paths(tmp_path: Path) -> None:
    make_trainer(tmp_path / "run", max_steps=2, save_every=1, keep_last=None).train()
    root = tmp_path / "run" / "checkpoints"
    assert resolve_checkpoint(tmp_path / "run") == resolve_checkpoint(root) == root / "step-2"
    assert resolve_checkpoint(root / "step-1") == root / "step-1"
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*: expected a step-N folder"):
        resolve_checkpoint(tmp_path)
    (root / "latest").write_text("../etc\n")
    with pytest.raises(
        FormatError, match=r"latest: expected a checkpoint name such as 'step-100', got '\.\./etc'"
    ):
        resolve_checkpoint(root)


@pytest.mark.parametrize(
    ("file", "content", "error", "message"),
    [
        ("trainer_state.json", "{not json", FormatError, r"trainer_state\.json: not UTF-8 JSON"),
        ("trainer_state.json", '{"format": "other/9", "step": 1}', FormatError, r"format 'other/9' is not"),
        (
            "trainer_state.json",
            '{"format": "entrenar.train/1"}',
            FormatError,
            r"expected a key 'step' holding a value of type int",
        ),
        (
            "optimizer.json",
            '{"state_dict": {}}',
            FormatError,
            r"optimizer\.json: expected a key 'param_names'",
        ),
        ("config.json", "[1]", FormatError, r"config\.json: expected a JSON object"),
        ("scheduler.json", None, FileNotFoundError, r"scheduler\.json: missing from the checkpoint"),
    ],
)
def test_malformed_checkpoints_name_the_file(
    tmp_path: Path, file: str, content: str | None, error: type, message: str
) -> None:
    make_trainer(tmp_path / "run", max_steps=1).train()
    target = tmp_path / "run" / "checkpoints" / "step-1" / file
    if content is None:
        target.unlink()
    else:
        target.write_text(content)
        reseal(target.parent)  # past the checksums: the structural checks are what this test is about
    with pytest.raises(error, match=message):
        read_checkpoint(tmp_path / "run")


def reseal(folder: Path) -> None:
    """Record the current files' SHA-256 in checksums.json, as if the checkpoint had been written so."""
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    (folder / "checksums.json").write_text(json.dumps({"sha256": digests}))


def test_resume_refuses_what_does_not_fit(tmp_path: Path) -> None:
    make_trainer(tmp_path / "run", max_steps=2).train()
    other_batch = make_trainer(tmp_path / "x", max_steps=4, batch_size=4)
    with pytest.raises(ValueError, match=r"saved for other data or settings \(.*batch_size: saved 8, now 4"):
        other_batch.resume(tmp_path / "run")
    frozen = make_trainer(tmp_path / "y", max_steps=4)
    frozen.model.head.bias.requires_grad_(False)
    with pytest.raises(
        ValueError,
        match=r"not in the checkpoint \[\], in the checkpoint but not trainable here \['head\.bias'\]",
    ):
        frozen.resume(tmp_path / "run")
    no_sched = make_trainer(tmp_path / "z", max_steps=4)
    no_sched.scheduler = None
    with pytest.raises(
        ValueError, match="the checkpoint has a scheduler state, this trainer has no scheduler"
    ):
        no_sched.resume(tmp_path / "run")


def test_a_fresh_run_will_not_overwrite_a_previous_one(tmp_path: Path) -> None:
    make_trainer(tmp_path / "run", max_steps=1).train()
    with pytest.raises(FileExistsError, match=r"holds a previous run .* pass resume=True"):
        make_trainer(tmp_path / "run", max_steps=2).train()
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        make_trainer(tmp_path / "empty", max_steps=2, resume=True).train()


# ---------------------------------------------------------------------------------------------- JSON state
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), st.text(max_size=5)
)
small_arrays = arrays(
    st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_]),
    st.lists(st.integers(0, 3), max_size=3).map(tuple),
)
trees = st.recursive(
    st.one_of(scalars, small_arrays),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 9)), inner, max_size=3),
    ),
    max_leaves=12,
)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return (
            isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
    if isinstance(a, float):
        return isinstance(b, float) and (a == b or (math.isnan(a) and math.isnan(b)))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@settings(max_examples=80, deadline=None)
@given(trees, st.booleans())
# JSON has no inf or NaN: an inline array holding one was a ValueError from json.dumps (found here)
@example(np.array(np.inf, np.float32), False)
@example(np.array([1.5, -np.inf], np.float16), False)
@example(np.array([0x7FC00001, 0xFFC00000], np.uint32).view(np.float32), False)  # NaN payload and sign
def test_state_trees_round_trip_through_strict_json(tree: Any, separate_arrays: bool) -> None:
    store: dict[str, np.ndarray] | None = {} if separate_arrays else None
    text = json.dumps(to_json_tree({"root": tree}, store), allow_nan=False)
    assert same(from_json_tree(json.loads(text), store), {"root": tree})


def test_unsupported_state_is_named() -> None:
    with pytest.raises(TypeError, match=r"state at a\.1: cannot save a set"):
        to_json_tree({"a": [1, {2}]})
    with pytest.raises(KeyError, match=r"the array 'x' is missing"):
        from_json_tree({"__array__": "x"}, {})
