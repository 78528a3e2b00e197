"""LoraLinear: a Linear (or QuantLinear) plus named low-rank adapters, laid out as PEFT's `lora.Linear`.

For each active adapter a with rank r, A (r, in), B (out, r) and scaling s:

    y = base(x) + s * B(A(dropout(x)))          delta W = s * B @ A  (out, in)

Parameters are PEFT's names: `base_layer.weight`, `lora_A.<a>.weight`, `lora_B.<a>.weight` (and
`lora_B.<a>.bias` with lora_bias), `lora_magnitude_vector.<a>.weight` for DoRA. Everything is written
with entrenar ops, so autograd needs nothing here. Merging writes delta W into the base weight
(W += s B A; DoRA: see `entrenar.lora.dora`), unmerging takes it out again; a quantized base is
dequantized, changed and re-quantized (a GGML base into its own Q4_0 / Q4_1 / Q8_0 kind), and the
rounding that causes is reported.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from entrenar.autograd.tape import no_grad
from entrenar.lora.base import QuantReport, is_quantized, read_weight, set_codes, weight_dtype, write_weight
from entrenar.lora.config import LoraConfig
from entrenar.lora.dora import DoraLinearLayer, dora_delta, dora_merge, dora_unmerge
from entrenar.nn import init
from entrenar.nn.layers import Dropout, Linear
from entrenar.nn.module import Module
from entrenar.tensor import Tensor, TensorLike

__all__ = ["Identity", "LoraLinear"]


class Identity(Module):
    """Returns its input: the `lora_dropout` of an adapter with dropout 0, as PEFT's nn.Identity."""

    def forward(self, input: TensorLike) -> Any:
        return input


class LoraLinear(Module):
    """A base Linear/QuantLinear/GGMLLinear wrapped with LoRA adapters; see the module docstring for the math.

    `active_adapters` are summed in order; `merged_adapters` lists what is merged into the base
    (the forward then runs the base alone); `disable_adapters` gives the base output (unmerging first,
    as PEFT does).
    """

    def __init__(
        self,
        base_layer: Module,
        adapter_name: str,
        config: LoraConfig,
        module_name: str,
        *,
        generator: np.random.Generator,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features: int = base_layer.in_features  # type: ignore[attr-defined]
        self.out_features: int = base_layer.out_features  # type: ignore[attr-defined]
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.use_rslora: dict[str, bool] = {}
        self.lora_bias: dict[str, bool] = {}
        self.lora_dropout: dict[str, Module] = {}
        self.lora_A: dict[str, Linear] = {}
        self.lora_B: dict[str, Linear] = {}
        self.lora_magnitude_vector: dict[str, DoraLinearLayer] = {}
        self.merged_adapters: list[str] = []
        self.active_adapters: list[str] = [adapter_name]
        self.disable_adapters = False
        self._dora_norms: dict[str, np.ndarray] = {}  # weight norms at merge time, needed to unmerge DoRA
        self._premerge_qweight: Any = None  # a quantized base's codes before merging: unmerge restores them
        self.update_layer(adapter_name, config, module_name, generator=generator)

    # ------------------------------------------------------------------------------ adapters
    def update_layer(
        self, adapter_name: str, config: LoraConfig, module_name: str, *, generator: np.random.Generator
    ) -> None:
        """Add adapter `adapter_name` with the rank, alpha and init `config` gives `module_name`."""
        if adapter_name in self.lora_A:
            raise ValueError(f"LoraLinear {module_name}: adapter {adapter_name!r} already exists")
        r, alpha = config.rank_and_alpha(module_name)
        dt = weight_dtype(self.base_layer)
        # nn.Linear's init: A (and B unless zeroed below) ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as in PEFT
        a = Linear(self.in_features, r, bias=False, dtype=dt, generator=generator)
        b = Linear(r, self.out_features, bias=config.lora_bias, dtype=dt, generator=generator)
        if config.init_lora_weights == "gaussian":
            init.normal_(a.weight, std=1.0 / r, generator=generator)
        if config.init_lora_weights is not False:
            init.zeros_(b.weight)
            if b.bias is not None:
                init.zeros_(b.bias)
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = alpha
        self.scaling[adapter_name] = alpha / math.sqrt(r) if config.use_rslora else alpha / r
        self.use_rslora[adapter_name] = config.use_rslora
        self.lora_bias[adapter_name] = config.lora_bias
        p = config.lora_dropout
        self.lora_dropout[adapter_name] = Dropout(p, generator=generator) if p > 0 else Identity()
        self.lora_A[adapter_name] = a
        self.lora_B[adapter_name] = b
        if config.use_dora:
            base = self._unmerged_weight()
            self.lora_magnitude_vector[adapter_name] = DoraLinearLayer(
                base.astype(dt, copy=False), a.weight.data, b.weight.data, self.scaling[adapter_name]
            )
        self.lora_dropout[adapter_name].train(self.training)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def adapter_modules(self, adapter_name: str) -> list[Module]:
        """The modules holding adapter `adapter_name`'s parameters."""
        mods: list[Module] = [self.lora_A[adapter_name], self.lora_B[adapter_name]]
        if adapter_name in self.lora_magnitude_vector:
            mods.append(self.lora_magnitude_vector[adapter_name])
        return mods

    def set_adapter(self, adapter_names: str | Sequence[str], inference_mode: bool = False) -> None:
        """Activate `adapter_names`: their parameters train unless inference_mode; the others freeze."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        for name in self.lora_A:
            trainable = name in names and not inference_mode
            for m in self.adapter_modules(name):
                m.requires_grad_(trainable)
        self.active_adapters = names

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an (unmerged) adapter; if it was active, the first remaining one (sorted) becomes active."""
        if adapter_name in self.merged_adapters:
            raise ValueError(f"cannot delete adapter {adapter_name!r} while it is merged; unmerge it first")
        for table in (
            self.r,
            self.lora_alpha,
            self.scaling,
            self.use_rslora,
            self.lora_bias,
            self.lora_dropout,
        ):
            table.pop(adapter_name, None)
        for mods in (self.lora_A, self.lora_B, self.lora_magnitude_vector):
            mods.pop(adapter_name, None)
        if adapter_name in self.active_adapters:
            rest = [a for a in self.active_adapters if a != adapter_name] or sorted(self.lora_A)[:1]
            self.active_adapters = rest

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    # ------------------------------------------------------------------------------ forward
    def forward(self, x: TensorLike) -> Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x)
        result: Tensor = self.base_layer(x)
        if self.merged:
            return result
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            a, b, dropout, s = (
                self.lora_A[name],
                self.lora_B[name],
                self.lora_dropout[name],
                self.scaling[name],
            )
            if name not in self.lora_magnitude_vector:
                h = a(dropout(x))  # (*, in) -> (*, r)
                # (*, r) -> (*, out); without lora_B's bias, s costs less on the rank-r intermediate
                result = result + (b(h) * s if b.bias is not None else b(h * s))
                continue
            no_dropout = isinstance(dropout, Identity) or not self.training
            result = result + dora_delta(
                x if no_dropout else dropout(x),
                magnitude=self.lora_magnitude_vector[name],
                lora_A=a,
                lora_B=b,
                scaling=s,
                base_weight=read_weight(self.base_layer),
                base_bias=getattr(self.base_layer, "bias", None),
                base_result=result if no_dropout else None,
            )
        return result

    # ------------------------------------------------------------------------------ merge
    def get_delta_weight(self, adapter_name: str) -> np.ndarray:
        """delta W = s * B @ A, (out, r) @ (r, in) -> (out, in)."""
        return (self.lora_B[adapter_name].weight.data @ self.lora_A[adapter_name].weight.data) * self.scaling[
            adapter_name
        ]

    def _unmerged_weight(self) -> np.ndarray:
        """A copy of the base weight with every merged adapter taken out (what the forward sees as W0)."""
        if self._premerge_qweight is not None:  # a quantized base kept its codes from before the merge
            return np.asarray(self._premerge_qweight.dequantize(np.float32))
        w = np.array(read_weight(self.base_layer), copy=True)
        for name in reversed(self.merged_adapters):
            delta = self.get_delta_weight(name)
            if name in self.lora_magnitude_vector:
                w = dora_unmerge(
                    w, delta, self.lora_magnitude_vector[name].weight.data, self._dora_norms[name]
                )
            else:
                w = w - delta
        return w

    def merge(
        self, safe_merge: bool = False, adapter_names: Sequence[str] | None = None, *, warn: bool = True
    ) -> QuantReport | None:
        """Merge adapters (default: the active ones not yet merged) into the base weight.

        Returns the rounding report for a quantized base (and warns with its numbers unless
        warn=False), None for a float base. safe_merge checks the result for NaN/inf first.
        """
        names = self._to_merge(adapter_names)
        if not names:
            return None
        weight = np.array(read_weight(self.base_layer), copy=True)
        bias = getattr(self.base_layer, "bias", None)
        new_bias = None if bias is None else np.array(bias.data, copy=True)
        norms: dict[str, np.ndarray] = {}
        for name in names:
            delta = self.get_delta_weight(name)
            if name in self.lora_magnitude_vector:
                m = self.lora_magnitude_vector[name].weight.data
                weight, norms[name] = dora_merge(weight, self._unmerged_weight(), delta, m)
            else:
                weight = weight + delta
            if self.lora_bias[name]:
                lb = self.lora_B[name].bias
                if new_bias is None or lb is None:
                    raise RuntimeError(
                        "cannot merge an adapter with lora_bias=True into a base layer without bias"
                    )
                new_bias = new_bias + lb.data * self.scaling[name]
        if safe_merge and not (
            np.isfinite(weight).all() and (new_bias is None or np.isfinite(new_bias).all())
        ):
            raise ValueError(f"NaNs detected in the merged weights. The adapter(s) {names} seem to be broken")
        if is_quantized(self.base_layer) and not self.merged:
            self._premerge_qweight = self.base_layer.qweight  # type: ignore[attr-defined]
        with no_grad():
            report = write_weight(self.base_layer, weight)
            if bias is not None and new_bias is not None:
                np.copyto(bias.data, new_bias, casting="same_kind")
        self._dora_norms.update(norms)
        self.merged_adapters.extend(names)
        if report is not None and warn:
            warnings.warn(_rounding_message(f"merging {names}", report), stacklevel=2)
        return report

    def _to_merge(self, adapter_names: Sequence[str] | None) -> list[str]:
        """PEFT's check_adapters_to_merge: the requested adapters not yet merged, with its warnings."""
        if isinstance(adapter_names, str):
            raise TypeError(f"adapter_names should be a list of strings, got {adapter_names!r}")
        names = list(self.active_adapters if adapter_names is None else adapter_names)
        if self.merged:
            names = [n for n in names if n not in self.merged_adapters]
            if names:
                warnings.warn(
                    f"Already following adapters were merged {','.join(self.merged_adapters)}. "
                    f"You are now additionally merging {','.join(names)}.",
                    stacklevel=3,
                )
            else:
                warnings.warn("All adapters are already merged, nothing to do.", stacklevel=3)
        return [n for n in names if n in self.lora_A]

    def unmerge(self) -> None:
        """Take every merged adapter out of the base weight (a quantized base gets its old codes back)."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        bias = getattr(self.base_layer, "bias", None)
        with no_grad():
            for name in reversed(self.merged_adapters):
                if self.lora_bias[name] and bias is not None and self.lora_B[name].bias is not None:
                    bias.data -= self.lora_B[name].bias.data * self.scaling[name]  # type: ignore[union-attr]
            if self._premerge_qweight is not None:
                set_codes(self.base_layer, self._premerge_qweight)
                self._premerge_qweight = None
            else:
                write_weight(self.base_layer, self._unmerged_weight())
        self.merged_adapters = []
        self._dora_norms.clear()

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"adapters={list(self.lora_A)}, active={self.active_adapters}, merged={self.merged_adapters}"
        )


def _rounding_message(what: str, report: QuantReport) -> str:
    return (
        f"LoRA: {what} into a quantized base re-quantized its weight, which rounds: max |error| "
        f"{report['max_abs_error']:.4g}, mean |error| {report['mean_abs_error']:.4g}, "
        f"relative error {report['rel_error']:.4g}"
    )
