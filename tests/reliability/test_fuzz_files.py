"""Fuzzing the other readers: safetensors weights, YAML run configs and training checkpoints, with
mutated copies of valid files, hostile values and hand-made attacks (a header claiming terabytes, YAML
that would run code, aliases that expand exponentially, nesting deeper than the parser's stack).

Allowed errors: safetensors FormatError; YAML ConfigError; checkpoints FormatError (files present)."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fault_run import build
from fuzzing import EXAMPLES, PER_READER, SWEEP, check_reader, fuzz, hostile_docs, mutations, run_sweep
from hypothesis import given
from hypothesis import strategies as st

from entrenar.config import ConfigError, default_config_text, load_config
from entrenar.io import FormatError, load_safetensors, save_safetensors
from entrenar.train import read_checkpoint

SAMPLE = {
    "base_model.model.q.lora_A.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
    "ids": np.array([7, -1], dtype=np.int64),
    "half": np.array([0.5, 2.0], dtype=np.float16),
}


# ------------------------------------------------------------------------------ safetensors
@pytest.fixture(scope="module")
def weights(folder: Path) -> bytes:
    save_safetensors(folder / "valid.safetensors", SAMPLE, {"format": "pt"})
    return (folder / "valid.safetensors").read_bytes()


def header_file(header: dict[str, Any], body: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def header_of(valid: bytes) -> dict[str, Any]:
    (n,) = struct.unpack("<Q", valid[:8])
    return json.loads(valid[8 : 8 + n])


@fuzz(EXAMPLES)
@given(data=st.data())
def test_fuzz_safetensors(folder: Path, weights: bytes, data: st.DataObject) -> None:
    valid_header, body = header_of(weights), weights[8 + struct.unpack("<Q", weights[:8])[0] :]
    blob = data.draw(
        st.one_of(mutations(weights), hostile_docs(valid_header).map(lambda h: header_file(h, body)))
    )
    path = folder / "fuzz.safetensors"
    path.write_bytes(blob)
    check_reader(lambda: load_safetensors(path), path, (FormatError,), "safetensors")


def test_a_header_claiming_terabytes_is_refused_at_once(folder: Path) -> None:
    path = folder / "huge.safetensors"
    huge = {"w": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 4 * 2**40]}}
    for blob in (struct.pack("<Q", 2**62) + b"{}", header_file(huge, b"\0" * 16)):
        path.write_bytes(blob)
        t0 = time.perf_counter()
        with pytest.raises(FormatError, match=str(path)):
            load_safetensors(path)
        assert time.perf_counter() - t0 < 1.0


# ------------------------------------------------------------------------------ YAML configs
CONFIG = default_config_text().encode()


@fuzz(EXAMPLES)
@given(
    data=st.one_of(
        mutations(CONFIG),
        hostile_docs(yaml.safe_load(CONFIG)).map(lambda d: yaml.safe_dump(d).encode()),
    )
)
def test_fuzz_yaml_config(folder: Path, data: bytes) -> None:
    path = folder / "run.yaml"
    path.write_bytes(data)
    check_reader(lambda: load_config(path), path, (ConfigError,), "yaml-config")


def test_yaml_never_runs_code(folder: Path) -> None:
    marker = folder / "pwned"
    for payload in (
        f'model: !!python/object/apply:os.system ["touch {marker}"]\n',
        f'model: !!python/object/new:subprocess.Popen [["touch", "{marker}"]]\n',
        "model: !!python/name:os.system\n",
    ):
        path = folder / "evil.yaml"
        path.write_text(payload)
        with pytest.raises(ConfigError, match=rf"{path}: not valid YAML .*constructor"):
            load_config(path)
    assert not marker.exists()


def test_yaml_aliases_that_expand_exponentially_are_refused(folder: Path) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9^10 strings
    path = folder / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"{path}: more than 100000 values once its aliases"):
        load_config(path)
    assert time.perf_counter() - t0 < 5.0


def test_yaml_nested_deeper_than_the_parser_is_refused(folder: Path) -> None:
    path = folder / "deep.yaml"
    path.write_text("model: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ConfigError, match=rf"{path}: nested too deeply"):
        load_config(path)


# ------------------------------------------------------------------------------ training checkpoints
CHECKPOINT_JSON = ["trainer_state.json", "optimizer.json", "scheduler.json", "config.json"]


@pytest.fixture(scope="module")
def checkpoint(folder: Path) -> Path:
    build(folder / "run", 2).train()
    return folder / "run" / "checkpoints" / "step-2"


def reseal(ck: Path) -> None:
    """Record the files' current SHA-256, so the structural checks behind the checksums are reached."""
    manifest = ck / "checksums.json"
    digests = json.loads(manifest.read_text())["sha256"]
    for name in digests:
        digests[name] = hashlib.sha256((ck / name).read_bytes()).hexdigest()
    manifest.write_text(json.dumps({"sha256": digests}))


@pytest.fixture
def scratch_checkpoint(checkpoint: Path, folder: Path) -> Path:
    ck = folder / "scratch" / "step-2"
    if not ck.exists():
        shutil.copytree(checkpoint, ck)
    return ck


@fuzz(EXAMPLES)
@given(data=st.data())
def test_fuzz_checkpoint_json(checkpoint: Path, scratch_checkpoint: Path, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(CHECKPOINT_JSON))
    valid = (checkpoint / name).read_bytes()
    doc = json.loads(valid)
    blob = data.draw(
        st.one_of(mutations(valid), hostile_docs(doc).map(lambda d: json.dumps(d).encode()))
        if isinstance(doc, (dict, list)) and doc
        else mutations(valid)
    )
    path = scratch_checkpoint / name
    path.write_bytes(blob)
    reseal(scratch_checkpoint)
    try:
        check_reader(lambda: read_checkpoint(scratch_checkpoint), path, (FormatError,), "checkpoint")
    finally:
        path.write_bytes(valid)
        reseal(scratch_checkpoint)


# ------------------------------------------------------------------------------ byte sweeps
@pytest.mark.parametrize("reader", ["safetensors", "yaml-config", "checkpoint"])
def test_byte_sweep(
    folder: Path, weights: bytes, checkpoint: Path, scratch_checkpoint: Path, reader: str
) -> None:
    """Thousands of seeded mutations of each valid file: accepted, or refused by the reader's own error."""
    assert EXAMPLES + SWEEP >= PER_READER
    if reader == "safetensors":
        path, valid, allowed = folder / "sweep.safetensors", weights, (FormatError,)
        read: Any = lambda: load_safetensors(path)  # noqa: E731
    elif reader == "yaml-config":
        path, valid, allowed = folder / "sweep.yaml", CONFIG, (ConfigError,)
        read = lambda: load_config(path)  # noqa: E731
    else:  # unsealed: every mutation must be caught, by the checksums first
        path, valid, allowed = (
            scratch_checkpoint / "model.safetensors",
            (checkpoint / "model.safetensors").read_bytes(),
            (FormatError,),
        )
        read = lambda: read_checkpoint(scratch_checkpoint)  # noqa: E731
    accepted = run_sweep(valid, path, read, allowed, reader)
    assert accepted < SWEEP
    if reader == "checkpoint":
        assert accepted == 0
