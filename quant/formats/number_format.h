// Element formats of the OCP Microscaling (MX) v1.0 specification and of
// per-tensor FP8, with a bit-exact scalar reference and vectorized (ATen)
// rounding, MX block scaling and the packed MX storage layout.
//
// Element value tables (magnitudes; "sub" = subnormal, exponent field 0):
//
//   format    bias  emax  max normal        min normal  min sub   specials
//   FP8 E4M3    7     8   448 = 1.75*2^8    2^-6        2^-9      NaN = S.1111.111 only (no inf)
//   FP8 E5M2   15    15   57344 = 1.75*2^15 2^-14       2^-16     inf = S.11111.00, NaN = S.11111.{01,10,11}
//   FP6 E3M2    3     4   28 = 1.75*2^4     2^-2        2^-4      none
//   FP6 E2M3    1     2   7.5 = 1.875*2^2   2^0         2^-3      none
//   FP4 E2M1    1     2   6 = 1.5*2^2       2^0         2^-1      none
//   INT8        -     0   127/64            -           1/64      none (two's complement k/64)
//   INT4        -     0   7/4               -           1/4       none (two's complement k/4)
//
// A float code is S | E | M with E exponent and M mantissa bits:
//   E != 0: (-1)^S * 2^(E - bias) * (1 + M / 2^mantissa_bits)
//   E == 0: (-1)^S * 2^(1 - bias) * (M / 2^mantissa_bits)
// An MX INT element is a two's complement integer k with the value k * 2^-(bits - 2), i.e. a fixed
// point number with one integer bit, so that (like the float elements) the largest power of two of
// the element is 2^emax = 1 and the shared scale chooses the block's binade.
//
// Rounding (everywhere in this file): round to nearest, ties to even, saturating. Any finite
// |x| > max_value becomes +-max_value (also for E5M2, whose infinity is never produced from a
// finite input: MX's conversion is saturating, and a quantizer that turned outliers into inf
// would poison every dot product they take part in). +-inf saturates to +-max_value too.
// Signed zeros: float formats keep the sign of x, so -0.0 and negative values that round to zero
// give -0 (the sign bit set); INT has a single zero.
// NaN: EncodeElement gives the format's NaN where it has one (E4M3: S.1111.111, E5M2: S.11111.10,
// sign kept); formats without NaN (FP6, FP4, INT) have no code that means "not a number", and the
// scalar encoder then returns the largest-magnitude code with NaN's sign bit (a deterministic,
// documented choice; in MX a NaN belongs in the shared scale, which PackMx never produces).
// RoundToElement, which returns values rather than codes, keeps NaN as NaN for every format.
#ifndef QAAS_QUANT_FORMATS_NUMBER_FORMAT_H_
#define QAAS_QUANT_FORMATS_NUMBER_FORMAT_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "quant/scheme.h"

namespace qaas::quant {

// Element formats: the scalar types MX blocks (and per-tensor FP8) are made of.
enum class ElementFormat { kInt8, kInt4, kFp8E4M3, kFp8E5M2, kFp6E3M2, kFp6E2M3, kFp4E2M1 };

// One row of the trait table.
struct ElementTraits {
  ElementFormat format;
  const char* name;    // "int8", "fp8_e4m3", "fp6_e2m3", ...
  int bits;            // storage bits per element (8, 6 or 4)
  bool is_int;
  int exponent_bits;   // 0 for INT
  int mantissa_bits;   // INT: fraction bits (INT8: 6, INT4: 2)
  int bias;            // exponent bias (0 for INT)
  int emax;            // exponent of the largest normal power of two (0 for INT)
  double max_value;    // largest finite magnitude
  bool has_inf;        // only E5M2
  bool has_nan;        // E4M3 (S.1111.111 only) and E5M2 (IEEE-like)
};
const ElementTraits& Traits(ElementFormat f);
const std::vector<ElementFormat>& AllElementFormats();
// The element of an MX (kMxInt/kMxFp) or FP8 (kFp8E4M3/kFp8E5M2) TensorQuant: MXINT by bits (8, 4);
// MXFP by bits and exponent_bits (0 = the default element: 8 -> E4M3, 6 -> E3M2, 4 -> E2M1;
// 5 with 8 bits -> E5M2, 2 with 6 bits -> E2M3). InvalidArgument naming the format otherwise.
absl::StatusOr<ElementFormat> ElementFormatOf(const TensorQuant& q);

// Smallest positive normal value (2^(1 - bias)) and smallest positive value (the smallest
// subnormal, 2^(1 - bias - mantissa_bits)) of f. INT has no subnormals: both are one step,
// 2^-(bits - 2).
double MinNormal(ElementFormat f);
double MinSubnormal(ElementFormat f);
// The code of +max_value (the largest-magnitude finite positive code), e.g. E4M3 0x7E.
uint32_t MaxCode(ElementFormat f);

// Scalar reference implementation (the spec's definitions, bit by bit).
// code: the element's bit pattern in the low `bits` bits (INT: two's complement); higher bits are
// ignored.
float DecodeElement(ElementFormat f, uint32_t code);
// Round to nearest, ties to even, saturating to +-max_value; see the file comment for inf, NaN and
// signed zero. INT: value = code * 2^-(bits-2) with codes clamped to the symmetric range
// [-(2^(bits-1) - 1), 2^(bits-1) - 1]: the most negative code (-2^(bits-1), i.e. -2.0) is never
// produced here, but decodes.
uint32_t EncodeElement(ElementFormat f, float x);

// Vectorized (ATen, any device, float32 out; other float inputs are converted): rounds every
// element of x to the nearest value of format f with the same rounding and saturation as
// EncodeElement. Equals DecodeElement(EncodeElement(x)) for every non-NaN x; NaN stays NaN.
at::Tensor RoundToElement(const at::Tensor& x, ElementFormat f);

// Vectorized EncodeElement: the codes (int32, same shape and device as x) of every element of x,
// equal to EncodeElement's for every input (NaN, inf and out-of-range values included).
at::Tensor EncodeElements(const at::Tensor& x, ElementFormat f);

constexpr int kMxBlockSize = 32;
// OCP MX shared scale of each block of 32 consecutive elements along the LAST dim of x (the last
// dim is padded virtually with zeros when not a multiple of 32):
//   shared_exp = floor(log2(max |x| in block)) - Traits(f).emax, clamped to [-127, 127];
// an all-zero block gets -127. Returns int32 [..., ceil(n / 32)] (unbiased exponents) on x's
// device. The largest element of a block then lands in the element's top binade
// [2^emax, 2^(emax+1)) and, if above max_value, saturates (as the spec prescribes).
at::Tensor MxSharedExponents(const at::Tensor& x, ElementFormat f);
// 2^k as float32, built from the bit pattern so it is exact on every device (exp2 and pow are
// approximations on some backends, CUDA's exp2f within 2 ulp). k: integer tensor with values in
// [-149, 127]; below -126 the result is a float32 subnormal (the MX scale 2^-127 is one).
at::Tensor Pow2(const at::Tensor& k);
// Quantize-dequantize x in MX blocks along its last dim:
//   x' = RoundToElement(x / 2^e, f) * 2^e   with e the block's shared exponent.
// Same shape as x, float32, on x's device. All the scaling is by exact powers of two, so the only
// rounding is the element's. NaN and inf inputs are not expected (a model's weights and
// activations are finite): they are not given the spec's NaN scale (0xFF); an inf clamps its
// block's exponent to 127 and saturates, a NaN stays NaN (its block's exponent is unspecified).
at::Tensor FakeQuantizeMx(const at::Tensor& x, ElementFormat f);

// Storage layout of an MX tensor [rows, cols] (blocks along cols).
struct MxPacked {
  ElementFormat format = ElementFormat::kFp4E2M1;
  int64_t rows = 0, cols = 0;
  // uint8 [rows, ceil(cols * bits / 8)]: element codes as a little-endian bit stream per row,
  // element j at bits [j * bits, (j + 1) * bits) (4-bit: two per byte, low nibble first; 6-bit:
  // four per three bytes). Unused high bits of a row's last byte are zero.
  at::Tensor codes;
  // uint8 [rows, ceil(cols / 32)]: E8M0 scales, the shared exponent biased by 127 (so 0..254;
  // 0xFF, E8M0's NaN, is never produced).
  at::Tensor scales;
};
// x: float [rows, cols] on any device. Packs FakeQuantizeMx(x)'s values; the result is on the CPU.
MxPacked PackMx(const at::Tensor& x, ElementFormat f);
// float32 [rows, cols] on the CPU; equals FakeQuantizeMx(x) exactly for the x that was packed.
at::Tensor UnpackMx(const MxPacked& packed);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_FORMATS_NUMBER_FORMAT_H_
