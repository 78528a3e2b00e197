"""Fast paths, each held equal to a plain-NumPy reference by a test.

The optimizers call `entrenar.kernels.sgd_step` and `entrenar.kernels.adam_step` by attribute lookup
at every step, so this module is the one place where a fused kernel with the reference's exact
signature replaces the reference (`optim_reference.py`).
"""

from entrenar.kernels.optim_reference import adam_step, sgd_step

__all__ = ["adam_step", "sgd_step"]
