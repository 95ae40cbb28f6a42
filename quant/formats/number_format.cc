#include "quant/formats/number_format.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace qaas::quant {

namespace {

// Indexed by ElementFormat (declaration order).
constexpr ElementTraits kTraits[] = {
    // format, name, bits, is_int, E, M, bias, emax, max_value, has_inf, has_nan
    {ElementFormat::kInt8, "int8", 8, true, 0, 6, 0, 0, 127.0 / 64.0, false, false},
    {ElementFormat::kInt4, "int4", 4, true, 0, 2, 0, 0, 7.0 / 4.0, false, false},
    // E4M3 gives up infinity and all but one NaN to reach 448 (exponent field 15 is normal).
    {ElementFormat::kFp8E4M3, "fp8_e4m3", 8, false, 4, 3, 7, 8, 448.0, false, true},
    {ElementFormat::kFp8E5M2, "fp8_e5m2", 8, false, 5, 2, 15, 15, 57344.0, true, true},
    {ElementFormat::kFp6E3M2, "fp6_e3m2", 6, false, 3, 2, 3, 4, 28.0, false, false},
    {ElementFormat::kFp6E2M3, "fp6_e2m3", 6, false, 2, 3, 1, 2, 7.5, false, false},
    {ElementFormat::kFp4E2M1, "fp4_e2m1", 4, false, 2, 1, 1, 2, 6.0, false, false},
};

uint32_t CodeMask(const ElementTraits& t) { return (uint32_t{1} << t.bits) - 1; }
uint32_t SignBit(const ElementTraits& t) { return uint32_t{1} << (t.bits - 1); }
// Exponent of the smallest normal binade (also the subnormals' scale exponent).
int Emin(const ElementTraits& t) { return 1 - t.bias; }

// The NaN code of formats that have one: E4M3's only NaN, E5M2's canonical quiet NaN
// (S.11111.10, the mantissa's top bit set as in IEEE 754).
uint32_t NanCode(const ElementTraits& t) {
  return t.format == ElementFormat::kFp8E4M3 ? 0x7F : 0x7E;
}

// Round half to even, independent of the floating-point environment's rounding mode.
double RoundHalfEven(double q) {
  const double fl = std::floor(q);
  const double frac = q - fl;
  if (frac > 0.5) return fl + 1.0;
  if (frac < 0.5) return fl;
  return std::fmod(fl, 2.0) == 0.0 ? fl : fl + 1.0;
}

// floor(log2(a)) of non-negative float32 values read off the exponent field (exact, unlike
// log2 near powers of two). Zero and subnormal floats give -127, below every emin and the MX
// scale's lower clamp, so the callers' clamps absorb them. int32, same shape.
at::Tensor FloorLog2(const at::Tensor& a) {
  return at::bitwise_right_shift(a.contiguous().view(at::kInt), 23) - 127;
}

// Sizes of x with the last dim n replaced by [ceil(n / 32), 32].
std::vector<int64_t> BlockedSizes(const at::Tensor& x) {
  std::vector<int64_t> sizes = x.sizes().vec();
  const int64_t n = sizes.back();
  sizes.back() = (n + kMxBlockSize - 1) / kMxBlockSize;
  sizes.push_back(kMxBlockSize);
  return sizes;
}

// x (float32) zero-padded along its last dim to whole blocks and viewed as [..., blocks, 32].
at::Tensor ToBlocks(const at::Tensor& x) {
  const int64_t n = x.size(-1);
  const int64_t pad = (kMxBlockSize - n % kMxBlockSize) % kMxBlockSize;
  at::Tensor padded = pad == 0 ? x : at::constant_pad_nd(x, {0, pad}, 0);
  return padded.reshape(BlockedSizes(x));
}

// Inverse of ToBlocks for a tensor whose last dim had n elements.
at::Tensor FromBlocks(const at::Tensor& blocks, int64_t n) {
  std::vector<int64_t> sizes = blocks.sizes().vec();
  sizes.pop_back();
  sizes.back() *= kMxBlockSize;
  return blocks.reshape(sizes).narrow(-1, 0, n);
}

struct MxBlocks {
  at::Tensor exponents;  // int32 [..., blocks]
  at::Tensor elements;   // float32 [..., blocks, 32]: rounded element values, before rescaling
};

MxBlocks QuantizeBlocks(const at::Tensor& x, ElementFormat f) {
  TORCH_CHECK(x.dim() >= 1, "MX quantization needs at least one dimension");
  MxBlocks b;
  b.exponents = MxSharedExponents(x, f);
  at::Tensor blocks = ToBlocks(x.to(at::kFloat));
  // Multiplying by 2^-e is exact (2^-e is a normal float for e in [-127, 127]); a product that
  // underflows is far below half the element's smallest step and rounds to zero either way.
  b.elements = RoundToElement(blocks * Pow2(-b.exponents).unsqueeze(-1), f);
  return b;
}

// Elements per group of whole bytes in the packed bit stream, and that group's byte count:
// 8 bits: 1 element / 1 byte, 4 bits: 2 / 1, 6 bits: 4 / 3.
int GroupElements(int bits) { return bits == 6 ? 4 : 8 / bits; }
int GroupBytes(int bits) { return GroupElements(bits) * bits / 8; }

}  // namespace

at::Tensor Pow2(const at::Tensor& k_in) {
  at::Tensor k = k_in.to(at::kInt);
  at::Tensor normal = at::bitwise_left_shift(at::clamp_min(k + 127, 1), 23);
  at::Tensor subnormal = at::bitwise_left_shift(at::ones_like(k), at::clamp(k + 149, 0, 22));
  return at::where(k >= -126, normal, subnormal).view(at::kFloat);
}

const ElementTraits& Traits(ElementFormat f) { return kTraits[static_cast<int>(f)]; }

const std::vector<ElementFormat>& AllElementFormats() {
  static const auto* const kAll = new std::vector<ElementFormat>{
      ElementFormat::kInt8,     ElementFormat::kInt4,     ElementFormat::kFp8E4M3,
      ElementFormat::kFp8E5M2,  ElementFormat::kFp6E3M2,  ElementFormat::kFp6E2M3,
      ElementFormat::kFp4E2M1};
  return *kAll;
}

absl::StatusOr<ElementFormat> ElementFormatOf(const TensorQuant& q) {
  switch (q.format) {
    case NumberFormat::kMxInt:
      if (q.exponent_bits == 0) {
        if (q.bits == 8) return ElementFormat::kInt8;
        if (q.bits == 4) return ElementFormat::kInt4;
      }
      break;
    case NumberFormat::kMxFp:
      // exponent_bits 0 is the default element for the width; the parser may also spell the
      // default out (mxfp8e4m3 -> 4).
      if (q.bits == 8 && (q.exponent_bits == 0 || q.exponent_bits == 4)) return ElementFormat::kFp8E4M3;
      if (q.bits == 8 && q.exponent_bits == 5) return ElementFormat::kFp8E5M2;
      if (q.bits == 6 && (q.exponent_bits == 0 || q.exponent_bits == 3)) return ElementFormat::kFp6E3M2;
      if (q.bits == 6 && q.exponent_bits == 2) return ElementFormat::kFp6E2M3;
      if (q.bits == 4 && (q.exponent_bits == 0 || q.exponent_bits == 2)) return ElementFormat::kFp4E2M1;
      break;
    case NumberFormat::kFp8E4M3:
      if (q.exponent_bits == 0 || q.exponent_bits == 4) return ElementFormat::kFp8E4M3;
      break;
    case NumberFormat::kFp8E5M2:
      if (q.exponent_bits == 0 || q.exponent_bits == 5) return ElementFormat::kFp8E5M2;
      break;
    case NumberFormat::kNone:
    case NumberFormat::kInt:
      return absl::InvalidArgumentError(absl::StrCat(
          "number format '", NumberFormatName(q.format), "' has no element format (only MX and FP8 do)"));
  }
  return absl::InvalidArgumentError(absl::StrCat("number format '", NumberFormatName(q.format),
                                                 "' has no element with ", q.bits, " bits and ",
                                                 q.exponent_bits, " exponent bits"));
}

double MinNormal(ElementFormat f) {
  const ElementTraits& t = Traits(f);
  return t.is_int ? MinSubnormal(f) : std::ldexp(1.0, Emin(t));
}

double MinSubnormal(ElementFormat f) {
  const ElementTraits& t = Traits(f);
  return std::ldexp(1.0, t.is_int ? -t.mantissa_bits : Emin(t) - t.mantissa_bits);
}

uint32_t MaxCode(ElementFormat f) {
  const ElementTraits& t = Traits(f);
  const uint32_t all_but_sign = SignBit(t) - 1;
  // E4M3: S.1111.111 is NaN, so the largest finite is S.1111.110. E5M2: the all-ones exponent
  // is inf/NaN, so the largest finite is S.11110.11. Everything else uses every code.
  if (f == ElementFormat::kFp8E4M3) return all_but_sign - 1;
  if (f == ElementFormat::kFp8E5M2) return all_but_sign - (uint32_t{1} << t.mantissa_bits);
  return all_but_sign;
}

float DecodeElement(ElementFormat f, uint32_t code) {
  const ElementTraits& t = Traits(f);
  code &= CodeMask(t);
  const bool negative = (code & SignBit(t)) != 0;
  if (t.is_int) {
    // Two's complement: the sign bit weighs -2^(bits-1).
    const int k = static_cast<int>(code) - (negative ? (1 << t.bits) : 0);
    return static_cast<float>(std::ldexp(static_cast<double>(k), -t.mantissa_bits));
  }
  const uint32_t mantissa = code & ((uint32_t{1} << t.mantissa_bits) - 1);
  const uint32_t exponent = (code >> t.mantissa_bits) & ((uint32_t{1} << t.exponent_bits) - 1);
  const uint32_t exponent_ones = (uint32_t{1} << t.exponent_bits) - 1;
  double magnitude;
  if (f == ElementFormat::kFp8E4M3 && exponent == exponent_ones &&
      mantissa == (uint32_t{1} << t.mantissa_bits) - 1) {
    magnitude = std::numeric_limits<double>::quiet_NaN();
  } else if (f == ElementFormat::kFp8E5M2 && exponent == exponent_ones) {
    magnitude = mantissa == 0 ? std::numeric_limits<double>::infinity()
                              : std::numeric_limits<double>::quiet_NaN();
  } else if (exponent == 0) {
    magnitude = std::ldexp(static_cast<double>(mantissa), Emin(t) - t.mantissa_bits);
  } else {
    const double significand = static_cast<double>((uint32_t{1} << t.mantissa_bits) + mantissa);
    magnitude = std::ldexp(significand, static_cast<int>(exponent) - t.bias - t.mantissa_bits);
  }
  return static_cast<float>(negative ? -magnitude : magnitude);
}

uint32_t EncodeElement(ElementFormat f, float x) {
  const ElementTraits& t = Traits(f);
  const uint32_t mask = CodeMask(t);
  if (t.is_int) {
    const double max_k = static_cast<double>(MaxCode(f));
    double k;
    if (std::isnan(x)) {
      k = std::signbit(x) ? -max_k : max_k;
    } else {
      // The clamp also saturates +-inf; scaling by 2^(bits-2) is exact in double.
      k = std::clamp(RoundHalfEven(std::ldexp(static_cast<double>(x), t.mantissa_bits)), -max_k, max_k);
    }
    return static_cast<uint32_t>(static_cast<int32_t>(k)) & mask;
  }

  const uint32_t sign = std::signbit(x) ? SignBit(t) : 0;
  if (std::isnan(x)) return sign | (t.has_nan ? NanCode(t) : MaxCode(f));
  const double a = std::fabs(static_cast<double>(x));
  // Saturation: max_value is representable, so every a >= max_value (inf included) rounds to it.
  if (a >= t.max_value) return sign | MaxCode(f);

  // The binade of a, or the subnormal range's scale below the smallest normal: the representable
  // values there are r * 2^(e - M) for integers r, in [2^M, 2^(M+1)] (normal) or [0, 2^M].
  const int emin = Emin(t);
  int e = emin;
  if (a > 0) {
    int frexp_exp;
    std::frexp(a, &frexp_exp);  // a = m * 2^frexp_exp, m in [0.5, 1)
    e = std::max(frexp_exp - 1, emin);
  }
  const double r = RoundHalfEven(std::ldexp(a, t.mantissa_bits - e));
  // Codes are ordered like magnitudes: each binade above emin adds 2^M codes, and r == 2^(M+1)
  // (rounding up out of the binade) lands on the next binade's first code as it should. In the
  // subnormal range r is the mantissa field itself, and r == 2^M is the smallest normal.
  uint32_t magnitude = static_cast<uint32_t>(e - emin) * (uint32_t{1} << t.mantissa_bits) +
                       static_cast<uint32_t>(r);
  magnitude = std::min(magnitude, MaxCode(f));
  return sign | magnitude;
}

at::Tensor RoundToElement(const at::Tensor& x_in, ElementFormat f) {
  const ElementTraits& t = Traits(f);
  at::Tensor x = x_in.to(at::kFloat);
  at::Tensor q;
  if (t.is_int) {
    const double scale = std::ldexp(1.0, t.mantissa_bits);
    q = at::round(at::clamp(x, -t.max_value, t.max_value) * scale) * (1.0 / scale);
    // INT has one zero: turn the -0.0 of small negatives into +0.0 like the scalar path.
    q = at::where(q == 0, at::zeros_like(q), q);
  } else {
    // Clamping first is the saturation: max_value is representable and rounding is monotonic.
    at::Tensor a = at::clamp_max(x.abs(), t.max_value);
    at::Tensor e = at::clamp_min(FloorLog2(a), Emin(t));
    at::Tensor step = Pow2(e - t.mantissa_bits);
    // a / step is exact (a power-of-two division with no over/underflow: a <= max_value and
    // step >= 2^-16), and at::round rounds half to even; the product is exact too.
    q = at::copysign(at::round(a / step) * step, x);
  }
  return at::where(at::isnan(x), x, q);
}

at::Tensor EncodeElements(const at::Tensor& v_in, ElementFormat f) {
  const ElementTraits& t = Traits(f);
  at::Tensor v = v_in.to(at::kFloat);
  at::Tensor nan = at::isnan(v);
  if (t.is_int) {
    const double max_k = static_cast<double>(MaxCode(f));
    at::Tensor k = at::clamp(at::round(v * std::ldexp(1.0, t.mantissa_bits)), -max_k, max_k);
    // NaN as in EncodeElement (and never cast to int: that would be undefined).
    k = at::where(nan, at::copysign(at::full_like(k, max_k), v), k);
    return at::bitwise_and(k.to(at::kInt), static_cast<int64_t>(CodeMask(t)));  // two's complement
  }
  // The clamp keeps out-of-range inputs (and inf) finite: they saturate as in EncodeElement.
  at::Tensor a = at::where(nan, at::zeros_like(v), at::clamp_max(v.abs(), t.max_value));
  at::Tensor e = at::clamp_min(FloorLog2(a), Emin(t));
  at::Tensor r = at::round(a / Pow2(e - t.mantissa_bits)).to(at::kInt);
  at::Tensor magnitude = at::clamp((e - Emin(t)) * (1 << t.mantissa_bits) + r, 0,
                                   static_cast<int64_t>(MaxCode(f)));
  at::Tensor sign = at::signbit(v).to(at::kInt) * static_cast<int64_t>(SignBit(t));
  const int64_t nan_magnitude = t.has_nan ? NanCode(t) : MaxCode(f);
  return at::where(nan, sign + nan_magnitude, magnitude + sign);
}

at::Tensor MxSharedExponents(const at::Tensor& x, ElementFormat f) {
  TORCH_CHECK(x.dim() >= 1, "MX quantization needs at least one dimension");
  at::Tensor amax = ToBlocks(x.to(at::kFloat)).abs().amax(-1);
  // An all-zero block reads as floor(log2(0)) = -127 here and stays at the lower clamp.
  return at::clamp(FloorLog2(amax) - Traits(f).emax, -127, 127).to(at::kInt);
}

at::Tensor FakeQuantizeMx(const at::Tensor& x, ElementFormat f) {
  MxBlocks b = QuantizeBlocks(x, f);
  // q * 2^e is exact even where the product is a float32 subnormal (e down to -127): q's lowest
  // set bit is at least 2^-16 (E5M2's smallest subnormal), so the product's is at least 2^-143,
  // above float32's smallest subnormal 2^-149.
  return FromBlocks(b.elements * Pow2(b.exponents).unsqueeze(-1), x.size(-1)).contiguous();
}

MxPacked PackMx(const at::Tensor& x, ElementFormat f) {
  TORCH_CHECK(x.dim() == 2, "PackMx expects a [rows, cols] matrix, got ", x.dim(), " dims");
  const ElementTraits& t = Traits(f);
  MxPacked p;
  p.format = f;
  p.rows = x.size(0);
  p.cols = x.size(1);
  MxBlocks b = QuantizeBlocks(x, f);
  p.scales = (b.exponents + 127).to(at::kByte).to(at::kCPU).contiguous();

  // Pack each group of g elements (g * bits a whole number of bytes) into one integer word,
  // element i at bits [i * bits, (i + 1) * bits), then split the word into little-endian bytes.
  const int g = GroupElements(t.bits), gb = GroupBytes(t.bits);
  at::Tensor codes = FromBlocks(EncodeElements(b.elements, f), p.cols).to(at::kCPU);
  const int64_t pad = (g - p.cols % g) % g;
  if (pad != 0) codes = at::constant_pad_nd(codes, {0, pad}, 0);  // zero codes: unused bits stay 0
  const int64_t groups = (p.cols + pad) / g;
  codes = codes.reshape({p.rows, groups, g});
  at::Tensor word = at::zeros({p.rows, groups}, codes.options());
  for (int i = 0; i < g; ++i) {
    word = at::bitwise_or(word, at::bitwise_left_shift(codes.select(2, i), i * t.bits));
  }
  std::vector<at::Tensor> bytes;
  for (int k = 0; k < gb; ++k) {
    bytes.push_back(at::bitwise_and(at::bitwise_right_shift(word, 8 * k), 0xFF));
  }
  const int64_t packed_bytes = (p.cols * t.bits + 7) / 8;
  p.codes = at::stack(bytes, 2).reshape({p.rows, groups * gb}).narrow(1, 0, packed_bytes)
                .to(at::kByte)
                .contiguous();
  return p;
}

at::Tensor UnpackMx(const MxPacked& p) {
  const ElementTraits& t = Traits(p.format);
  const int g = GroupElements(t.bits), gb = GroupBytes(t.bits);
  TORCH_CHECK(p.codes.dim() == 2 && p.codes.size(0) == p.rows &&
                  p.codes.size(1) == (p.cols * t.bits + 7) / 8,
              "UnpackMx: codes must be [rows, ceil(cols * bits / 8)]");
  TORCH_CHECK(p.scales.dim() == 2 && p.scales.size(0) == p.rows &&
                  p.scales.size(1) == (p.cols + kMxBlockSize - 1) / kMxBlockSize,
              "UnpackMx: scales must be [rows, ceil(cols / 32)]");
  at::Tensor bytes = p.codes.to(at::kCPU).to(at::kInt);
  const int64_t pad = (gb - bytes.size(1) % gb) % gb;
  if (pad != 0) bytes = at::constant_pad_nd(bytes, {0, pad}, 0);
  const int64_t groups = bytes.size(1) / gb;
  bytes = bytes.reshape({p.rows, groups, gb});
  at::Tensor word = at::zeros({p.rows, groups}, bytes.options());
  for (int k = 0; k < gb; ++k) {
    word = at::bitwise_or(word, at::bitwise_left_shift(bytes.select(2, k), 8 * k));
  }
  std::vector<at::Tensor> elements;
  for (int i = 0; i < g; ++i) {
    elements.push_back(
        at::bitwise_and(at::bitwise_right_shift(word, i * t.bits), static_cast<int64_t>(CodeMask(t))));
  }
  at::Tensor codes = at::stack(elements, 2).reshape({p.rows, groups * g}).narrow(1, 0, p.cols);

  // Decoding through a table of every code reuses the scalar reference, so the two cannot drift.
  const int64_t n_codes = int64_t{1} << t.bits;
  at::Tensor table = at::empty({n_codes}, at::kFloat);
  float* table_data = table.data_ptr<float>();
  for (int64_t c = 0; c < n_codes; ++c) table_data[c] = DecodeElement(p.format, static_cast<uint32_t>(c));
  at::Tensor values =
      table.index_select(0, codes.reshape({-1}).to(at::kLong)).reshape({p.rows, p.cols});

  at::Tensor scale = Pow2(p.scales.to(at::kCPU).to(at::kInt) - 127)
                         .repeat_interleave(kMxBlockSize, 1)
                         .narrow(1, 0, p.cols);
  return (values * scale).contiguous();
}

}  // namespace qaas::quant
