"""Every registered op, every spec case: values and input gradients equal PyTorch's.

float64 within rtol 1e-9, float32 within the spec's rtol32 (1e-5 unless the spec says otherwise).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from cases import all_cases, call_entrenar, materialize, outputs, resolve_torch, torch_inputs

from entrenar import Tensor
from entrenar.autograd.registry import SPECS

torch.set_num_threads(1)


def _compare(name: str, index: int, dtype: Any, rtol: float, atol: float) -> None:
    m = materialize(name, index, dtype)
    ours, leaves = call_entrenar(m)
    targs, tkwargs, tleaves = torch_inputs(m)
    theirs = resolve_torch(m.spec.torch)(*targs, **tkwargs)
    ours_o, theirs_o = outputs(ours), outputs(theirs)
    assert len(ours_o) == len(theirs_o), f"{name}: {len(ours_o)} outputs, PyTorch gives {len(theirs_o)}"
    rng = np.random.default_rng(index)
    grads_ours, grads_theirs, douts = [], [], []
    for o, t in zip(ours_o, theirs_o, strict=True):
        assert isinstance(o, Tensor), f"{name}: output is {type(o).__name__}, not a Tensor"
        tn = t.detach().numpy()
        assert o.shape == tuple(tn.shape), f"{name}: shape {o.shape}, PyTorch {tuple(tn.shape)}"
        assert o.dtype == tn.dtype, f"{name}: dtype {o.dtype}, PyTorch {tn.dtype}"
        np.testing.assert_allclose(o.data, tn, rtol=rtol, atol=atol, err_msg=f"{name} forward")
        if o.dtype.kind == "f" and t.requires_grad:
            w = rng.standard_normal(o.shape).astype(o.dtype)
            grads_ours.append(o)
            grads_theirs.append(t)
            douts.append(w)
    assert len(leaves) == len(tleaves)
    if not grads_ours:
        return
    for o, w in zip(grads_ours, douts, strict=True):
        o.backward(w, retain_graph=True)
    torch.autograd.backward(grads_theirs, [torch.from_numpy(w) for w in douts])
    for k, (a, b) in enumerate(zip(leaves, tleaves, strict=True)):
        gb = np.zeros(a.shape, dtype=a.dtype) if b.grad is None else b.grad.numpy()
        ga = np.zeros(a.shape, dtype=a.dtype) if a.grad is None else a.grad
        assert ga.dtype == a.dtype, f"{name}: grad of input {k} has dtype {ga.dtype}"
        np.testing.assert_allclose(ga, gb, rtol=rtol, atol=atol, err_msg=f"{name} grad of input {k}")


# Cases that PyTorch cannot reproduce (random masks) say why in their spec; they are gradchecked only.
ORACLE_CASES = [(n, i) for n, i in all_cases() if SPECS[n].cases[i].oracle]
ORACLE_IDS = [f"{n}-{i}" for n, i in ORACLE_CASES]


@pytest.mark.parametrize(("name", "index"), ORACLE_CASES, ids=ORACLE_IDS)
def test_matches_torch_float64(name: str, index: int) -> None:
    _compare(name, index, np.float64, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("name", "index"), ORACLE_CASES, ids=ORACLE_IDS)
def test_matches_torch_float32(name: str, index: int) -> None:
    spec = SPECS[name]
    _compare(name, index, np.float32, rtol=spec.rtol32, atol=spec.atol32)
