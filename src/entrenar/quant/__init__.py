"""4-bit block quantization (NF4, symmetric int4, double-quantized scales) and the QuantLinear layer.

`quantize(x, kind, block_size, double_quant)` gives a `QuantizedTensor` (packed codes + block
scales, bitsandbytes' layout); `QuantLinear` keeps a Linear's frozen weight that way and multiplies
with it through the `quant_linear` op, dequantizing tile by tile; `quantize_linears` converts a
model. `reference` holds the NumPy arithmetic that the fused dequantization kernel is held to.
"""

from entrenar.quant.codes import DYNAMIC_MAP, INT4_CODE, NF4_CODE
from entrenar.quant.functional import default_tile_rows, quant_linear
from entrenar.quant.linear import QuantLinear, quantize_linears
from entrenar.quant.tensor import QuantizedAbsmax, QuantizedTensor, quantize

__all__ = [
    "DYNAMIC_MAP",
    "INT4_CODE",
    "NF4_CODE",
    "QuantLinear",
    "QuantizedAbsmax",
    "QuantizedTensor",
    "default_tile_rows",
    "quant_linear",
    "quantize",
    "quantize_linears",
]
