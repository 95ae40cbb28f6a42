#ifndef QAAS_QUANT_FORMATS_PER_TOKEN_KERNEL_H_
#define QAAS_QUANT_FORMATS_PER_TOKEN_KERNEL_H_

#include <ATen/ATen.h>

namespace qaas::quant {

// Per-token integer fake quantization (one scale, and for asymmetric one
// zero point, per row of the last dimension) of a float32 CPU tensor in two
// reads and one write per row: its range, then every value. The result is
// bit for bit what the ATen formula in act_quant.cc computes, NaN rows
// included. An undefined tensor where it does not apply (another dtype or
// device, a tensor that needs gradients, rows that are not contiguous, a
// CPU without AVX2): the caller takes the formula.
at::Tensor FakeQuantizePerTokenKernel(const at::Tensor& x, int bits, bool symmetric);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_FORMATS_PER_TOKEN_KERNEL_H_
