#include "quant/formats/number_format.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "quant/scheme.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

// The spec's field widths, written out here rather than read from Traits() so that the decode
// expectations do not share a table with the code under test.
struct SpecFormat {
  ElementFormat format;
  const char* name;
  int bits;
  bool is_int;
  int exponent_bits;
  int mantissa_bits;
  int bias;
};
const SpecFormat kSpec[] = {
    {ElementFormat::kInt8, "int8", 8, true, 0, 6, 0},
    {ElementFormat::kInt4, "int4", 4, true, 0, 2, 0},
    {ElementFormat::kFp8E4M3, "fp8_e4m3", 8, false, 4, 3, 7},
    {ElementFormat::kFp8E5M2, "fp8_e5m2", 8, false, 5, 2, 15},
    {ElementFormat::kFp6E3M2, "fp6_e3m2", 6, false, 3, 2, 3},
    {ElementFormat::kFp6E2M3, "fp6_e2m3", 6, false, 2, 3, 1},
    {ElementFormat::kFp4E2M1, "fp4_e2m1", 4, false, 2, 1, 1},
};

uint32_t FloatBits(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}

// The value of `code` straight from the spec's definitions (NaN for NaN codes).
double SpecDecode(const SpecFormat& s, uint32_t code) {
  const uint32_t n = uint32_t{1} << s.bits;
  if (s.is_int) {
    const int k = code >= n / 2 ? static_cast<int>(code) - static_cast<int>(n) : static_cast<int>(code);
    return k * std::pow(2.0, -(s.bits - 2));
  }
  const int sign = static_cast<int>(code >> (s.bits - 1));
  const int e = static_cast<int>((code >> s.mantissa_bits) & ((1u << s.exponent_bits) - 1));
  const int m = static_cast<int>(code & ((1u << s.mantissa_bits) - 1));
  const int e_ones = (1 << s.exponent_bits) - 1, m_ones = (1 << s.mantissa_bits) - 1;
  const double sgn = sign ? -1.0 : 1.0;
  if (s.format == ElementFormat::kFp8E4M3 && e == e_ones && m == m_ones) return std::nan("");
  if (s.format == ElementFormat::kFp8E5M2 && e == e_ones) {
    return m == 0 ? sgn * std::numeric_limits<double>::infinity() : std::nan("");
  }
  const double frac = m / std::pow(2.0, s.mantissa_bits);
  if (e == 0) return sgn * std::pow(2.0, 1 - s.bias) * frac;
  return sgn * std::pow(2.0, e - s.bias) * (1.0 + frac);
}

uint32_t NumCodes(ElementFormat f) { return uint32_t{1} << Traits(f).bits; }
uint32_t SignBitOf(ElementFormat f) { return uint32_t{1} << (Traits(f).bits - 1); }

// Non-negative finite values of f in code order (codes 0..MaxCode): for every format the
// magnitude codes are ordered like the values.
std::vector<float> PositiveValues(ElementFormat f) {
  std::vector<float> v;
  for (uint32_t c = 0; c <= MaxCode(f); ++c) v.push_back(DecodeElement(f, c));
  return v;
}

std::string Name(ElementFormat f) { return Traits(f).name; }

TEST(NumberFormatTest, DecodeMatchesSpecForEveryCode) {
  for (const SpecFormat& s : kSpec) {
    for (uint32_t c = 0; c < (1u << s.bits); ++c) {
      const double want = SpecDecode(s, c);
      const float got = DecodeElement(s.format, c);
      SCOPED_TRACE(absl::StrCat(s.name, " code ", c));
      if (std::isnan(want)) {
        EXPECT_TRUE(std::isnan(got)) << got;
        continue;
      }
      EXPECT_EQ(static_cast<double>(got), want);
      EXPECT_EQ(std::signbit(got), std::signbit(want));  // -0 is the sign bit alone
    }
  }
}

TEST(NumberFormatTest, DecodePinnedValuesFromTheSpecTables) {
  const float e2m1[] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
  for (uint32_t c = 0; c < 8; ++c) {
    EXPECT_EQ(DecodeElement(ElementFormat::kFp4E2M1, c), e2m1[c]) << c;
    EXPECT_EQ(DecodeElement(ElementFormat::kFp4E2M1, c | 8), -e2m1[c]) << c;
  }
  // Bits above the element's width are ignored.
  EXPECT_EQ(DecodeElement(ElementFormat::kFp4E2M1, 0x17), 6.0f);

  EXPECT_EQ(DecodeElement(ElementFormat::kFp8E4M3, 0x7E), 448.0f);
  EXPECT_EQ(DecodeElement(ElementFormat::kFp8E4M3, 0xFE), -448.0f);
  EXPECT_EQ(DecodeElement(ElementFormat::kFp8E4M3, 0x78), 256.0f);  // exponent field 15 is normal
  EXPECT_EQ(DecodeElement(ElementFormat::kFp8E4M3, 0x08), std::ldexp(1.0f, -6));
  EXPECT_EQ(DecodeElement(ElementFormat::kFp8E4M3, 0x01), std::ldexp(1.0f, -9));
  EXPECT_EQ(DecodeElement(ElementFormat::kFp8E4M3, 0x38), 1.0f);
  EXPECT_TRUE(std::isnan(DecodeElement(ElementFormat::kFp8E4M3, 0x7F)));
  EXPECT_TRUE(std::isnan(DecodeElement(ElementFormat::kFp8E4M3, 0xFF)));

  EXPECT_EQ(DecodeElement(ElementFormat::kFp8E5M2, 0x7B), 57344.0f);
  EXPECT_EQ(DecodeElement(ElementFormat::kFp8E5M2, 0x04), std::ldexp(1.0f, -14));
  EXPECT_EQ(DecodeElement(ElementFormat::kFp8E5M2, 0x01), std::ldexp(1.0f, -16));
  EXPECT_EQ(DecodeElement(ElementFormat::kFp8E5M2, 0x3C), 1.0f);
  EXPECT_EQ(DecodeElement(ElementFormat::kFp8E5M2, 0x7C), std::numeric_limits<float>::infinity());
  EXPECT_EQ(DecodeElement(ElementFormat::kFp8E5M2, 0xFC), -std::numeric_limits<float>::infinity());
  for (uint32_t c : {0x7Du, 0x7Eu, 0x7Fu, 0xFDu, 0xFEu, 0xFFu}) {
    EXPECT_TRUE(std::isnan(DecodeElement(ElementFormat::kFp8E5M2, c))) << c;
  }

  EXPECT_EQ(DecodeElement(ElementFormat::kFp6E3M2, 0x1F), 28.0f);
  EXPECT_EQ(DecodeElement(ElementFormat::kFp6E3M2, 0x04), 0.25f);
  EXPECT_EQ(DecodeElement(ElementFormat::kFp6E3M2, 0x01), 0.0625f);
  EXPECT_EQ(DecodeElement(ElementFormat::kFp6E3M2, 0x3F), -28.0f);
  EXPECT_EQ(DecodeElement(ElementFormat::kFp6E2M3, 0x1F), 7.5f);
  EXPECT_EQ(DecodeElement(ElementFormat::kFp6E2M3, 0x08), 1.0f);
  EXPECT_EQ(DecodeElement(ElementFormat::kFp6E2M3, 0x01), 0.125f);
  EXPECT_EQ(DecodeElement(ElementFormat::kFp6E2M3, 0x21), -0.125f);

  EXPECT_EQ(DecodeElement(ElementFormat::kInt8, 0x7F), 127.0f / 64);
  EXPECT_EQ(DecodeElement(ElementFormat::kInt8, 0x40), 1.0f);
  EXPECT_EQ(DecodeElement(ElementFormat::kInt8, 0x01), 1.0f / 64);
  EXPECT_EQ(DecodeElement(ElementFormat::kInt8, 0xFF), -1.0f / 64);
  EXPECT_EQ(DecodeElement(ElementFormat::kInt8, 0x81), -127.0f / 64);
  EXPECT_EQ(DecodeElement(ElementFormat::kInt8, 0x80), -2.0f);
  EXPECT_EQ(DecodeElement(ElementFormat::kInt4, 0x7), 1.75f);
  EXPECT_EQ(DecodeElement(ElementFormat::kInt4, 0x4), 1.0f);
  EXPECT_EQ(DecodeElement(ElementFormat::kInt4, 0xF), -0.25f);
  EXPECT_EQ(DecodeElement(ElementFormat::kInt4, 0x8), -2.0f);
}

TEST(NumberFormatTest, TraitsAgreeWithTheDecodedCodes) {
  ASSERT_EQ(AllElementFormats().size(), std::size(kSpec));
  std::set<std::string> names;
  for (size_t i = 0; i < std::size(kSpec); ++i) {
    const SpecFormat& s = kSpec[i];
    const ElementFormat f = AllElementFormats()[i];
    const ElementTraits& t = Traits(f);
    SCOPED_TRACE(s.name);
    EXPECT_EQ(f, s.format);
    EXPECT_EQ(t.format, f);
    EXPECT_EQ(std::string(t.name), s.name);
    names.insert(t.name);
    EXPECT_EQ(t.bits, s.bits);
    EXPECT_EQ(t.is_int, s.is_int);
    EXPECT_EQ(t.exponent_bits, s.exponent_bits);
    EXPECT_EQ(t.mantissa_bits, s.mantissa_bits);
    EXPECT_EQ(t.bias, s.bias);
    if (!t.is_int) {
      EXPECT_EQ(1 + t.exponent_bits + t.mantissa_bits, t.bits);
    }

    // Largest finite and smallest positive value, and which specials exist, by enumeration.
    double max_finite = 0, min_positive = std::numeric_limits<double>::infinity();
    bool any_inf = false, any_nan = false;
    for (uint32_t c = 0; c < NumCodes(f); ++c) {
      const double v = SpecDecode(s, c);
      if (std::isnan(v)) {
        any_nan = true;
      } else if (std::isinf(v)) {
        any_inf = true;
      } else {
        max_finite = std::max(max_finite, v);  // INT's extra code -2.0 is not the max
        if (v > 0) min_positive = std::min(min_positive, v);
      }
    }
    EXPECT_EQ(t.max_value, max_finite);
    EXPECT_EQ(DecodeElement(f, MaxCode(f)), t.max_value);
    EXPECT_EQ(MinSubnormal(f), min_positive);
    EXPECT_EQ(t.has_inf, any_inf);
    EXPECT_EQ(t.has_nan, any_nan);
    // emax: the largest value lies in the binade [2^emax, 2^(emax+1)).
    EXPECT_GE(t.max_value, std::ldexp(1.0, t.emax));
    EXPECT_LT(t.max_value, std::ldexp(1.0, t.emax + 1));
    if (!t.is_int) {
      EXPECT_EQ(MinNormal(f), std::ldexp(1.0, 1 - t.bias));
      EXPECT_EQ(DecodeElement(f, 1u << t.mantissa_bits), MinNormal(f));
    } else {
      EXPECT_EQ(t.emax, 0);
      EXPECT_EQ(t.max_value, ((1 << (t.bits - 1)) - 1) * std::ldexp(1.0, -(t.bits - 2)));
    }
  }
  EXPECT_EQ(names.size(), std::size(kSpec));
  // The pinned table of the spec.
  EXPECT_EQ(Traits(ElementFormat::kFp8E4M3).emax, 8);
  EXPECT_EQ(Traits(ElementFormat::kFp8E5M2).emax, 15);
  EXPECT_EQ(Traits(ElementFormat::kFp6E3M2).emax, 4);
  EXPECT_EQ(Traits(ElementFormat::kFp6E2M3).emax, 2);
  EXPECT_EQ(Traits(ElementFormat::kFp4E2M1).emax, 2);
  EXPECT_EQ(Traits(ElementFormat::kFp8E4M3).max_value, 448);
  EXPECT_EQ(Traits(ElementFormat::kFp8E5M2).max_value, 57344);
  EXPECT_EQ(Traits(ElementFormat::kFp6E3M2).max_value, 28);
  EXPECT_EQ(Traits(ElementFormat::kFp6E2M3).max_value, 7.5);
  EXPECT_EQ(Traits(ElementFormat::kFp4E2M1).max_value, 6);
  EXPECT_EQ(MaxCode(ElementFormat::kFp8E4M3), 0x7Eu);
  EXPECT_EQ(MaxCode(ElementFormat::kFp8E5M2), 0x7Bu);
}

TEST(NumberFormatTest, EncodeInvertsDecodeForEveryCode) {
  for (ElementFormat f : AllElementFormats()) {
    const ElementTraits& t = Traits(f);
    const uint32_t sign = SignBitOf(f);
    for (uint32_t c = 0; c < NumCodes(f); ++c) {
      SCOPED_TRACE(absl::StrCat(t.name, " code ", c));
      const float v = DecodeElement(f, c);
      const uint32_t back = EncodeElement(f, v);
      if (std::isnan(v)) {
        EXPECT_TRUE(std::isnan(DecodeElement(f, back)));
        EXPECT_EQ(back & sign, c & sign);
      } else if (std::isinf(v)) {
        EXPECT_EQ(back, (c & sign) | MaxCode(f));  // saturating: inf never comes back
      } else if (t.is_int && c == sign) {
        // The most negative code (-2.0) decodes but is outside the symmetric range.
        EXPECT_EQ(back, c + 1);
        EXPECT_EQ(DecodeElement(f, back), -static_cast<float>(t.max_value));
      } else {
        EXPECT_EQ(back, c);
      }
    }
  }
}

TEST(NumberFormatTest, EncodeRoundsMidpointsToEven) {
  for (ElementFormat f : AllElementFormats()) {
    const ElementTraits& t = Traits(f);
    const std::vector<float> values = PositiveValues(f);
    for (uint32_t c = 0; c + 1 < values.size(); ++c) {
      const float lo = values[c], hi = values[c + 1];
      const float mid = static_cast<float>((static_cast<double>(lo) + hi) / 2);
      ASSERT_EQ(static_cast<double>(mid), (static_cast<double>(lo) + hi) / 2);  // exact in float
      SCOPED_TRACE(absl::StrCat(t.name, " between ", lo, " and ", hi));
      const uint32_t even = c % 2 == 0 ? c : c + 1;
      EXPECT_EQ(EncodeElement(f, mid), even);
      EXPECT_EQ(EncodeElement(f, std::nextafter(mid, 0.0f)), c);
      EXPECT_EQ(EncodeElement(f, std::nextafter(mid, 1e9f)), c + 1);
      // The negative side mirrors the positive one.
      const uint32_t neg_even = t.is_int ? (NumCodes(f) - even) % NumCodes(f) : (SignBitOf(f) | even);
      EXPECT_EQ(EncodeElement(f, -mid), neg_even);
      EXPECT_EQ(DecodeElement(f, EncodeElement(f, -mid)), -DecodeElement(f, even));
    }
  }
  // A few by hand.
  EXPECT_EQ(EncodeElement(ElementFormat::kFp4E2M1, 0.25f), 0u);
  EXPECT_EQ(EncodeElement(ElementFormat::kFp4E2M1, 0.75f), 2u);   // -> 1.0
  EXPECT_EQ(EncodeElement(ElementFormat::kFp4E2M1, 1.25f), 2u);   // -> 1.0
  EXPECT_EQ(EncodeElement(ElementFormat::kFp4E2M1, 1.75f), 4u);   // -> 2.0
  EXPECT_EQ(EncodeElement(ElementFormat::kFp4E2M1, 2.5f), 4u);    // -> 2.0
  EXPECT_EQ(EncodeElement(ElementFormat::kFp4E2M1, 3.5f), 6u);    // -> 4.0
  EXPECT_EQ(EncodeElement(ElementFormat::kFp4E2M1, 5.0f), 6u);    // -> 4.0
  EXPECT_EQ(EncodeElement(ElementFormat::kFp4E2M1, 5.01f), 7u);   // -> 6.0
  EXPECT_EQ(EncodeElement(ElementFormat::kFp8E4M3, 1.0625f), 0x38u);  // 1 + 1/16 -> 1.0
  EXPECT_EQ(EncodeElement(ElementFormat::kFp8E4M3, 1.1875f), 0x3Au);  // 1 + 3/16 -> 1.25
  EXPECT_EQ(EncodeElement(ElementFormat::kInt8, 0.5f / 64), 0u);
  EXPECT_EQ(EncodeElement(ElementFormat::kInt8, 1.5f / 64), 2u);
  EXPECT_EQ(EncodeElement(ElementFormat::kInt8, -1.5f / 64), 0xFEu);
  EXPECT_EQ(EncodeElement(ElementFormat::kInt4, 0.375f), 2u);  // 1.5 steps -> 2
}

TEST(NumberFormatTest, EncodeSaturatesBeyondMax) {
  const float inf = std::numeric_limits<float>::infinity();
  for (ElementFormat f : AllElementFormats()) {
    const ElementTraits& t = Traits(f);
    SCOPED_TRACE(t.name);
    const uint32_t neg_max = t.is_int ? NumCodes(f) - MaxCode(f) : SignBitOf(f) | MaxCode(f);
    const float max = static_cast<float>(t.max_value);
    for (float x : {max, std::nextafter(max, inf), max * 1.01f, max * 1.1f, max * 2.0f, 1e30f,
                    std::numeric_limits<float>::max(), inf}) {
      EXPECT_EQ(EncodeElement(f, x), MaxCode(f)) << x;
      EXPECT_EQ(EncodeElement(f, -x), neg_max) << -x;
    }
  }
  // Beyond max but below what would round to a NaN/inf code in a non-saturating conversion too.
  EXPECT_EQ(EncodeElement(ElementFormat::kFp8E4M3, 449.0f), 0x7Eu);
  EXPECT_EQ(EncodeElement(ElementFormat::kFp8E4M3, 464.0f), 0x7Eu);
  EXPECT_EQ(EncodeElement(ElementFormat::kFp8E4M3, 480.0f), 0x7Eu);
  EXPECT_EQ(EncodeElement(ElementFormat::kFp8E5M2, 61440.0f), 0x7Bu);
  EXPECT_EQ(EncodeElement(ElementFormat::kFp8E5M2, 65536.0f), 0x7Bu);
  EXPECT_EQ(EncodeElement(ElementFormat::kFp8E5M2, 1e10f), 0x7Bu);
  EXPECT_EQ(EncodeElement(ElementFormat::kFp8E5M2, -1e10f), 0xFBu);
  EXPECT_EQ(EncodeElement(ElementFormat::kFp8E5M2, inf), 0x7Bu);
  EXPECT_EQ(EncodeElement(ElementFormat::kFp8E5M2, -inf), 0xFBu);
  EXPECT_EQ(EncodeElement(ElementFormat::kInt8, 2.0f), 0x7Fu);
  EXPECT_EQ(EncodeElement(ElementFormat::kInt8, -2.0f), 0x81u);
  EXPECT_EQ(EncodeElement(ElementFormat::kInt4, -5.0f), 0x9u);
}

TEST(NumberFormatTest, EncodeNanAndSignedZero) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(EncodeElement(ElementFormat::kFp8E4M3, nan), 0x7Fu);
  EXPECT_EQ(EncodeElement(ElementFormat::kFp8E4M3, -nan), 0xFFu);
  EXPECT_EQ(EncodeElement(ElementFormat::kFp8E5M2, nan), 0x7Eu);
  EXPECT_EQ(EncodeElement(ElementFormat::kFp8E5M2, -nan), 0xFEu);
  // No NaN code: the largest magnitude with NaN's sign (documented choice).
  EXPECT_EQ(EncodeElement(ElementFormat::kFp6E3M2, nan), 0x1Fu);
  EXPECT_EQ(EncodeElement(ElementFormat::kFp6E2M3, -nan), 0x3Fu);
  EXPECT_EQ(EncodeElement(ElementFormat::kFp4E2M1, nan), 0x7u);
  EXPECT_EQ(EncodeElement(ElementFormat::kFp4E2M1, -nan), 0xFu);
  EXPECT_EQ(EncodeElement(ElementFormat::kInt8, nan), 0x7Fu);
  EXPECT_EQ(EncodeElement(ElementFormat::kInt8, -nan), 0x81u);
  EXPECT_EQ(EncodeElement(ElementFormat::kInt4, nan), 0x7u);

  for (ElementFormat f : AllElementFormats()) {
    const ElementTraits& t = Traits(f);
    SCOPED_TRACE(t.name);
    const uint32_t neg_zero = t.is_int ? 0 : SignBitOf(f);
    EXPECT_EQ(EncodeElement(f, 0.0f), 0u);
    EXPECT_EQ(EncodeElement(f, -0.0f), neg_zero);
    // Below half the smallest step: rounds to a zero that keeps the sign (float formats).
    const float tiny = static_cast<float>(MinSubnormal(f) / 4);
    EXPECT_EQ(EncodeElement(f, tiny), 0u);
    EXPECT_EQ(EncodeElement(f, -tiny), neg_zero);
    EXPECT_EQ(EncodeElement(f, -1e-40f), neg_zero);  // a float32 subnormal
    EXPECT_EQ(EncodeElement(f, static_cast<float>(MinSubnormal(f) / 2)), 0u);  // tie -> even (0)
    EXPECT_EQ(EncodeElement(f, static_cast<float>(MinSubnormal(f) * 0.51)), 1u);
  }
}

// Inputs that exercise every rounding path: all representable values, every midpoint and its
// neighbours, and random values over many binades (float subnormals and beyond max included).
std::vector<float> ProbeValues(ElementFormat f, uint32_t seed) {
  std::vector<float> x;
  for (uint32_t c = 0; c < NumCodes(f); ++c) {
    const float v = DecodeElement(f, c);
    if (!std::isnan(v)) x.push_back(v);
  }
  const std::vector<float> values = PositiveValues(f);
  for (size_t i = 0; i + 1 < values.size(); ++i) {
    const float mid = (values[i] + values[i + 1]) / 2;
    for (float m : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e9f)}) {
      x.push_back(m);
      x.push_back(-m);
    }
  }
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> log2_mag(-30.0, 20.0);
  std::uniform_real_distribution<double> unit(-1.0, 1.0);
  for (int i = 0; i < 10000; ++i) {
    const double mag = std::exp2(log2_mag(rng));
    x.push_back(static_cast<float>((rng() % 2 ? -1 : 1) * mag));
  }
  for (int i = 0; i < 500; ++i) {
    x.push_back(static_cast<float>(unit(rng) * Traits(f).max_value * 1.2));  // the interesting range
  }
  const float inf = std::numeric_limits<float>::infinity();
  for (float v : {0.0f, -0.0f, 1e-40f, -1e-45f, 1e30f, -3e38f, inf, -inf}) x.push_back(v);
  return x;
}

TEST(NumberFormatTest, RoundToElementMatchesTheScalarReference) {
  for (ElementFormat f : AllElementFormats()) {
    SCOPED_TRACE(Name(f));
    const std::vector<float> x = ProbeValues(f, 7 + static_cast<uint32_t>(f));
    at::Tensor xt = at::from_blob(const_cast<float*>(x.data()), {static_cast<int64_t>(x.size())},
                                  at::kFloat)
                        .clone();
    at::Tensor rounded = RoundToElement(xt, f);
    at::Tensor codes = EncodeElements(xt, f);
    ASSERT_EQ(rounded.scalar_type(), at::kFloat);
    ASSERT_EQ(codes.scalar_type(), at::kInt);
    ASSERT_EQ(rounded.sizes(), xt.sizes());
    const float* r = rounded.data_ptr<float>();
    const int32_t* k = codes.data_ptr<int32_t>();
    int mismatches = 0;
    for (size_t i = 0; i < x.size() && mismatches < 10; ++i) {
      const uint32_t code = EncodeElement(f, x[i]);
      const float want = DecodeElement(f, code);
      if (FloatBits(r[i]) != FloatBits(want) || static_cast<uint32_t>(k[i]) != code) {
        ++mismatches;
        ADD_FAILURE() << "x=" << x[i] << " RoundToElement " << r[i] << " scalar " << want
                      << " EncodeElements " << k[i] << " EncodeElement " << code;
      }
    }
  }
}

TEST(NumberFormatTest, RoundToElementKeepsNanShapeAndConvertsDtypes) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (ElementFormat f : AllElementFormats()) {
    at::Tensor x = at::tensor({nan, 1.3f, -nan}, at::kFloat);
    at::Tensor r = RoundToElement(x, f);
    EXPECT_TRUE(std::isnan(r[0].item<float>())) << Name(f);
    EXPECT_TRUE(std::isnan(r[2].item<float>())) << Name(f);
    EXPECT_EQ(EncodeElements(x, f)[0].item<int>(), static_cast<int>(EncodeElement(f, nan)));
    EXPECT_EQ(EncodeElements(x, f)[2].item<int>(), static_cast<int>(EncodeElement(f, -nan)));

    at::manual_seed(3);
    at::Tensor y = at::randn({3, 5, 7}) * 3;
    at::Tensor want = RoundToElement(y, f);
    EXPECT_EQ(want.sizes().vec(), (std::vector<int64_t>{3, 5, 7}));
    EXPECT_TRUE(RoundToElement(y.to(at::kDouble), f).equal(want)) << Name(f);
    // Non-contiguous input.
    EXPECT_TRUE(RoundToElement(y.transpose(0, 2), f).equal(want.transpose(0, 2))) << Name(f);
  }
}

// The MX exponent of one block, written out with frexp.
int ManualSharedExponent(const float* block, int64_t n, ElementFormat f) {
  double amax = 0;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(static_cast<double>(block[i])));
  if (amax == 0) return -127;
  int e;
  std::frexp(amax, &e);
  return std::clamp(e - 1 - Traits(f).emax, -127, 127);
}

// FakeQuantizeMx of a [rows, cols] CPU float matrix, element by element with the scalar path.
at::Tensor ManualFakeQuantizeMx(const at::Tensor& x, ElementFormat f) {
  at::Tensor xc = x.contiguous();
  const int64_t rows = x.size(0), cols = x.size(1);
  at::Tensor out = at::empty({rows, cols}, at::kFloat);
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = xc.data_ptr<float>() + r * cols;
    float* o = out.data_ptr<float>() + r * cols;
    for (int64_t b = 0; b < cols; b += kMxBlockSize) {
      const int64_t n = std::min<int64_t>(kMxBlockSize, cols - b);
      const int e = ManualSharedExponent(in + b, n, f);
      for (int64_t i = 0; i < n; ++i) {
        const float scaled = static_cast<float>(std::ldexp(static_cast<double>(in[b + i]), -e));
        const double q = DecodeElement(f, EncodeElement(f, scaled));
        o[b + i] = static_cast<float>(std::ldexp(q, e));
      }
    }
  }
  return out;
}

// Rows of very different magnitudes (some blocks at the exponent clamps), a zero block and exact
// ties after scaling.
at::Tensor MxTestMatrix(int64_t rows, int64_t cols, uint64_t seed) {
  at::manual_seed(seed);
  at::Tensor x = at::randn({rows, cols});
  at::Tensor row_scale = at::exp2(at::randint(-40, 40, {rows, 1}).to(at::kFloat));
  x = x * row_scale;
  if (rows > 2) {
    x[1] = x[1] * 1e-30;  // exponents near the -127 clamp
    x[2].narrow(0, 0, std::min<int64_t>(cols, kMxBlockSize)).zero_();
  }
  if (cols > 3) {
    x[0][0] = 6.0;
    x[0][1] = 2.5;  // a tie for E2M1 with exponent 0
    x[0][2] = 0.25;
  }
  return x;
}

TEST(MxTest, Pow2IsExactDownToTheSmallestSubnormal) {
  // GPTQ's MX scales and MX dequantization go through Pow2, never exp2 (an
  // approximation on CUDA): every exponent a float32 can hold, bit for bit.
  at::Tensor k = at::arange(-149, 128, at::TensorOptions().dtype(at::kInt));
  at::Tensor p = Pow2(k);
  ASSERT_EQ(p.scalar_type(), at::kFloat);
  for (int64_t i = 0; i < k.numel(); ++i) {
    const int e = k[i].item<int>();
    const float want = std::ldexp(1.0f, e);
    const float got = p[i].item<float>();
    uint32_t want_bits, got_bits;
    std::memcpy(&want_bits, &want, 4);
    std::memcpy(&got_bits, &got, 4);
    EXPECT_EQ(got_bits, want_bits) << "2^" << e;
  }
  EXPECT_EQ(Pow2(at::full({1}, -127, at::kInt)).item<float>(), std::ldexp(1.0f, -127));  // MX's E8M0 minimum
}

TEST(MxTest, SharedExponentsOfKnownBlocks) {
  auto exps = [](const std::vector<float>& v, ElementFormat f) {
    at::Tensor x = at::zeros({1, static_cast<int64_t>(v.size())});
    for (size_t i = 0; i < v.size(); ++i) x[0][i] = v[i];
    return MxSharedExponents(x, f);
  };
  using EF = ElementFormat;
  EXPECT_EQ(exps({6.0f, 1.0f, -0.5f}, EF::kFp4E2M1).item<int>(), 0);
  EXPECT_EQ(exps({0.1f, -6.0f}, EF::kFp4E2M1).item<int>(), 0);  // the sign does not matter
  EXPECT_EQ(exps({7.99f}, EF::kFp4E2M1).item<int>(), 0);
  EXPECT_EQ(exps({8.0f}, EF::kFp4E2M1).item<int>(), 1);  // exactly a power of two
  EXPECT_EQ(exps({std::nextafter(8.0f, 0.0f)}, EF::kFp4E2M1).item<int>(), 0);
  EXPECT_EQ(exps({1.0f, 0.25f}, EF::kInt8).item<int>(), 0);
  EXPECT_EQ(exps({1.99f}, EF::kInt4).item<int>(), 0);
  EXPECT_EQ(exps({2.0f}, EF::kInt8).item<int>(), 1);
  EXPECT_EQ(exps({448.0f}, EF::kFp8E4M3).item<int>(), 0);
  EXPECT_EQ(exps({1.0f}, EF::kFp8E4M3).item<int>(), -8);
  EXPECT_EQ(exps({1.0f}, EF::kFp8E5M2).item<int>(), -15);
  EXPECT_EQ(exps({28.0f}, EF::kFp6E3M2).item<int>(), 0);
  EXPECT_EQ(exps({7.5f}, EF::kFp6E2M3).item<int>(), 0);
  EXPECT_EQ(exps({0.0f, -0.0f}, EF::kFp4E2M1).item<int>(), -127);
  EXPECT_EQ(exps({1e-40f}, EF::kInt8).item<int>(), -127);       // clamped below
  EXPECT_EQ(exps({std::ldexp(1.0f, -120)}, EF::kFp8E4M3).item<int>(), -127);
  EXPECT_EQ(exps({std::ldexp(1.0f, -120)}, EF::kInt8).item<int>(), -120);
  EXPECT_EQ(exps({3e38f}, EF::kInt8).item<int>(), 127);
  EXPECT_EQ(exps({3e38f}, EF::kFp4E2M1).item<int>(), 125);

  // Blocks of 32 along the last dim, the last one padded with zeros.
  at::Tensor x = at::zeros({2, 3, 70});
  x[0][0][31] = 6.0;   // block 0
  x[0][0][32] = 12.0;  // block 1
  x[0][0][69] = 24.0;  // block 2 (6 real elements)
  x[1][2][64] = 0.75;  // block 2
  at::Tensor e = MxSharedExponents(x, EF::kFp4E2M1);
  ASSERT_EQ(e.sizes().vec(), (std::vector<int64_t>{2, 3, 3}));
  EXPECT_EQ(e.scalar_type(), at::kInt);
  EXPECT_EQ(e[0][0][0].item<int>(), 0);
  EXPECT_EQ(e[0][0][1].item<int>(), 1);
  EXPECT_EQ(e[0][0][2].item<int>(), 2);
  EXPECT_EQ(e[1][2][2].item<int>(), -3);
  EXPECT_EQ(e[1][2][0].item<int>(), -127);
  EXPECT_EQ(MxSharedExponents(at::ones({4, 32}), EF::kInt8).sizes().vec(), (std::vector<int64_t>{4, 1}));
  EXPECT_EQ(MxSharedExponents(at::ones({4, 33}), EF::kInt8).sizes().vec(), (std::vector<int64_t>{4, 2}));
}

TEST(MxTest, FakeQuantizeMatchesPerBlockScalarComputation) {
  for (ElementFormat f : AllElementFormats()) {
    for (int64_t cols : {32, 77, 5, 96}) {
      SCOPED_TRACE(absl::StrCat(Name(f), " cols ", cols));
      at::Tensor x = MxTestMatrix(6, cols, 100 + cols);
      at::Tensor got = FakeQuantizeMx(x, f);
      at::Tensor want = ManualFakeQuantizeMx(x, f);
      ASSERT_EQ(got.sizes(), x.sizes());
      ASSERT_EQ(got.scalar_type(), at::kFloat);
      EXPECT_TRUE(got.equal(want)) << "max diff " << (got - want).abs().max().item<float>();
      // Quantizing twice changes nothing: the result is representable with the same exponents.
      EXPECT_TRUE(FakeQuantizeMx(got, f).equal(got));
    }
  }
  // Leading dims are batch dims.
  at::Tensor x3 = at::randn({2, 3, 50});
  EXPECT_TRUE(FakeQuantizeMx(x3, ElementFormat::kFp4E2M1)
                  .reshape({6, 50})
                  .equal(ManualFakeQuantizeMx(x3.reshape({6, 50}), ElementFormat::kFp4E2M1)));
}

TEST(MxTest, FakeQuantizeSaturatesTheLargestElement) {
  for (int k : {-3, 0, 5, 40}) {
    at::Tensor x = at::zeros({1, 32});
    x[0][0] = static_cast<float>(std::ldexp(7.9, k));
    x[0][1] = static_cast<float>(std::ldexp(-7.9, k));
    x[0][2] = static_cast<float>(std::ldexp(1.0, k));
    x[0][3] = static_cast<float>(std::ldexp(2.5, k));  // tie: 2.5 -> 2 (even)
    x[0][4] = static_cast<float>(std::ldexp(0.2, k));  // below half of 0.5: -> 0
    at::Tensor q = FakeQuantizeMx(x, ElementFormat::kFp4E2M1);
    EXPECT_EQ(MxSharedExponents(x, ElementFormat::kFp4E2M1).item<int>(), k);
    EXPECT_EQ(q[0][0].item<float>(), std::ldexp(6.0f, k)) << k;
    EXPECT_EQ(q[0][1].item<float>(), std::ldexp(-6.0f, k)) << k;
    EXPECT_EQ(q[0][2].item<float>(), std::ldexp(1.0f, k)) << k;
    EXPECT_EQ(q[0][3].item<float>(), std::ldexp(2.0f, k)) << k;
    EXPECT_EQ(q[0][4].item<float>(), 0.0f) << k;
  }
  // MXINT8: 1.999 is in the top binade but above 127/64.
  at::Tensor y = at::full({1, 32}, 0.5f);
  y[0][7] = 1.999f;
  at::Tensor q = FakeQuantizeMx(y, ElementFormat::kInt8);
  EXPECT_EQ(q[0][7].item<float>(), 127.0f / 64);
  EXPECT_EQ(q[0][0].item<float>(), 0.5f);
  // E4M3: 470 is beyond 448 and saturates (a non-saturating conversion would give 480 = NaN).
  at::Tensor z = at::zeros({1, 3});
  z[0][0] = 470.0f;
  EXPECT_EQ(FakeQuantizeMx(z, ElementFormat::kFp8E4M3)[0][0].item<float>(), 448.0f);
}

// Reads element j of a packed row as the spec's little-endian bit stream.
uint32_t ReadStream(const uint8_t* row, int64_t j, int bits) {
  uint32_t v = 0;
  for (int b = 0; b < bits; ++b) {
    const int64_t bit = j * bits + b;
    v |= static_cast<uint32_t>((row[bit / 8] >> (bit % 8)) & 1) << b;
  }
  return v;
}

TEST(MxTest, PackUnpackRoundTripsFakeQuantize) {
  for (ElementFormat f : AllElementFormats()) {
    const int bits = Traits(f).bits;
    for (auto [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{
             {3, 64}, {4, 45}, {2, 7}, {5, 1}, {6, 33}, {1, 96}, {3, 6}}) {
      SCOPED_TRACE(absl::StrCat(Name(f), " [", rows, ", ", cols, "]"));
      at::Tensor x = MxTestMatrix(rows, cols, 31 * rows + cols);
      MxPacked p = PackMx(x, f);
      EXPECT_EQ(p.format, f);
      EXPECT_EQ(p.rows, rows);
      EXPECT_EQ(p.cols, cols);
      ASSERT_EQ(p.codes.scalar_type(), at::kByte);
      ASSERT_EQ(p.scales.scalar_type(), at::kByte);
      ASSERT_EQ(p.codes.sizes().vec(), (std::vector<int64_t>{rows, (cols * bits + 7) / 8}));
      ASSERT_EQ(p.scales.sizes().vec(), (std::vector<int64_t>{rows, (cols + 31) / 32}));
      EXPECT_TRUE(p.codes.device().is_cpu());
      EXPECT_TRUE(p.scales.device().is_cpu());

      at::Tensor exps = MxSharedExponents(x, f);
      EXPECT_TRUE(p.scales.to(at::kInt).equal(exps + 127));
      EXPECT_LT(p.scales.max().item<int>(), 0xFF);

      at::Tensor want = FakeQuantizeMx(x, f);
      at::Tensor got = UnpackMx(p);
      ASSERT_EQ(got.sizes(), want.sizes());
      EXPECT_TRUE(got.device().is_cpu());
      // Bit-exact, signed zeros included.
      EXPECT_TRUE(got.view(at::kInt).equal(want.view(at::kInt)));

      // Each element's bits in the stream are the scalar encoding of its scaled value.
      at::Tensor codes = p.codes.contiguous();
      at::Tensor xc = x.contiguous();
      for (int64_t r = 0; r < rows; ++r) {
        const uint8_t* row = codes.data_ptr<uint8_t>() + r * codes.size(1);
        for (int64_t j = 0; j < cols; ++j) {
          const int e = exps[r][j / 32].item<int>();
          const float scaled =
              static_cast<float>(std::ldexp(static_cast<double>(xc[r][j].item<float>()), -e));
          ASSERT_EQ(ReadStream(row, j, bits), EncodeElement(f, scaled)) << r << "," << j;
        }
        // Bits past the last element are zero.
        for (int64_t bit = cols * bits; bit < codes.size(1) * 8; ++bit) {
          ASSERT_EQ((row[bit / 8] >> (bit % 8)) & 1, 0) << "row " << r << " bit " << bit;
        }
      }
    }
  }
}

TEST(MxTest, PackedByteLayoutByHand) {
  // FP4 E2M1, block max 6 -> exponent 0: codes 1.0=0x2, 6=0x7, -0.5=0x9, 0=0x0, 3=0x5.
  at::Tensor x = at::tensor({1.0f, 6.0f, -0.5f, 0.0f, 3.0f}).reshape({1, 5});
  MxPacked p = PackMx(x, ElementFormat::kFp4E2M1);
  ASSERT_EQ(p.codes.sizes().vec(), (std::vector<int64_t>{1, 3}));
  EXPECT_EQ(p.codes[0][0].item<int>(), 0x72);  // low nibble first
  EXPECT_EQ(p.codes[0][1].item<int>(), 0x09);
  EXPECT_EQ(p.codes[0][2].item<int>(), 0x05);
  EXPECT_EQ(p.scales[0][0].item<int>(), 127);

  // FP6 E3M2, block max 28 -> exponent 0: 28=0x1F, 1=0x0C, 0.25=0x04, -28=0x3F, 2=0x10.
  // Stream: 0x1F | 0x0C << 6 | 0x04 << 12 | 0x3F << 18 = 0xFC431F, then 0x10 in the 4th byte.
  at::Tensor y = at::tensor({28.0f, 1.0f, 0.25f, -28.0f, 2.0f}).reshape({1, 5});
  p = PackMx(y, ElementFormat::kFp6E3M2);
  ASSERT_EQ(p.codes.sizes().vec(), (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(p.codes[0][0].item<int>(), 0x1F);
  EXPECT_EQ(p.codes[0][1].item<int>(), 0x43);
  EXPECT_EQ(p.codes[0][2].item<int>(), 0xFC);
  EXPECT_EQ(p.codes[0][3].item<int>(), 0x10);

  // MXINT8: one byte per element, two's complement; block max 1.0 -> exponent 0.
  at::Tensor z = at::tensor({1.0f, -1.0f, 0.5f, -1.0f / 64}).reshape({1, 4});
  p = PackMx(z, ElementFormat::kInt8);
  EXPECT_EQ(p.codes[0][0].item<int>(), 0x40);
  EXPECT_EQ(p.codes[0][1].item<int>(), 0xC0);
  EXPECT_EQ(p.codes[0][2].item<int>(), 0x20);
  EXPECT_EQ(p.codes[0][3].item<int>(), 0xFF);

  // E8M0 scale of a block with max 2^-10 under E4M3: exponent -18 -> 109.
  at::Tensor w = at::full({1, 40}, std::ldexp(1.0f, -10));
  w[0][35] = 3.0f;  // the second block: floor(log2 3) - 8 = -7 -> 120
  p = PackMx(w, ElementFormat::kFp8E4M3);
  EXPECT_EQ(p.scales[0][0].item<int>(), 109);
  EXPECT_EQ(p.scales[0][1].item<int>(), 120);
  EXPECT_TRUE(UnpackMx(p).equal(w));  // all representable
}

TEST(MxTest, OtherDevicesMatchTheCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (ElementFormat f : AllElementFormats()) {
    SCOPED_TRACE(Name(f));
    const std::vector<float> probe = ProbeValues(f, 11);
    at::Tensor x = at::tensor(probe);
    EXPECT_TRUE(RoundToElement(x.cuda(), f).cpu().view(at::kInt).equal(RoundToElement(x, f).view(at::kInt)));
    EXPECT_TRUE(EncodeElements(x.cuda(), f).cpu().equal(EncodeElements(x, f)));
    at::Tensor m = MxTestMatrix(5, 77, 9);
    EXPECT_TRUE(FakeQuantizeMx(m.cuda(), f).cpu().equal(FakeQuantizeMx(m, f)));
    MxPacked p = PackMx(m.cuda(), f);
    EXPECT_TRUE(p.codes.device().is_cpu());
    EXPECT_TRUE(UnpackMx(p).equal(FakeQuantizeMx(m, f)));
  }
}

TensorQuant Quant(NumberFormat format, int bits, int exponent_bits = 0) {
  TensorQuant q;
  q.format = format;
  q.bits = bits;
  q.exponent_bits = exponent_bits;
  return q;
}

TEST(NumberFormatTest, ElementFormatOfEachTensorQuantKind) {
  using EF = ElementFormat;
  using NF = NumberFormat;
  struct Case {
    TensorQuant q;
    EF want;
  };
  const Case cases[] = {
      {Quant(NF::kMxInt, 8), EF::kInt8},          {Quant(NF::kMxInt, 4), EF::kInt4},
      {Quant(NF::kMxFp, 8), EF::kFp8E4M3},        {Quant(NF::kMxFp, 8, 4), EF::kFp8E4M3},
      {Quant(NF::kMxFp, 8, 5), EF::kFp8E5M2},     {Quant(NF::kMxFp, 6), EF::kFp6E3M2},
      {Quant(NF::kMxFp, 6, 3), EF::kFp6E3M2},     {Quant(NF::kMxFp, 6, 2), EF::kFp6E2M3},
      {Quant(NF::kMxFp, 4), EF::kFp4E2M1},        {Quant(NF::kMxFp, 4, 2), EF::kFp4E2M1},
      {Quant(NF::kFp8E4M3, 8), EF::kFp8E4M3},     {Quant(NF::kFp8E4M3, 8, 4), EF::kFp8E4M3},
      {Quant(NF::kFp8E5M2, 8, 5), EF::kFp8E5M2},  {Quant(NF::kFp8E5M2, 8), EF::kFp8E5M2},
  };
  for (const Case& c : cases) {
    absl::StatusOr<EF> got = ElementFormatOf(c.q);
    QAAS_ASSERT_OK(got);
    EXPECT_EQ(*got, c.want) << NumberFormatName(c.q.format) << c.q.bits << "e" << c.q.exponent_bits;
  }

  absl::StatusOr<EF> bad = ElementFormatOf(Quant(NF::kInt, 4));
  QAAS_EXPECT_CODE(bad, kInvalidArgument);
  EXPECT_NE(bad.status().message().find("int"), absl::string_view::npos) << bad.status();
  QAAS_EXPECT_CODE(ElementFormatOf(Quant(NF::kNone, 16)), kInvalidArgument);
  QAAS_EXPECT_CODE(ElementFormatOf(Quant(NF::kMxInt, 6)), kInvalidArgument);
  QAAS_EXPECT_CODE(ElementFormatOf(Quant(NF::kMxFp, 5)), kInvalidArgument);
  QAAS_EXPECT_CODE(ElementFormatOf(Quant(NF::kMxFp, 4, 3)), kInvalidArgument);
  QAAS_EXPECT_CODE(ElementFormatOf(Quant(NF::kMxFp, 8, 2)), kInvalidArgument);
  QAAS_EXPECT_CODE(ElementFormatOf(Quant(NF::kFp8E4M3, 8, 5)), kInvalidArgument);
}

TEST(NumberFormatTest, ElementFormatOfParsedSchemes) {
  struct Case {
    const char* scheme;
    ElementFormat want;
  };
  for (const Case& c : {Case{"Wmxfp4", ElementFormat::kFp4E2M1}, Case{"Wmxfp6", ElementFormat::kFp6E3M2},
                        Case{"Wmxfp6e2m3", ElementFormat::kFp6E2M3}, Case{"Wmxfp8", ElementFormat::kFp8E4M3},
                        Case{"Wmxfp8e5m2", ElementFormat::kFp8E5M2}, Case{"Wmxint8", ElementFormat::kInt8},
                        Case{"Wmxint4", ElementFormat::kInt4}}) {
    SCOPED_TRACE(c.scheme);
    absl::StatusOr<Scheme> s = ParseScheme(c.scheme);
    QAAS_ASSERT_OK(s);
    absl::StatusOr<Scheme> n = NormalizeScheme(*s);
    QAAS_ASSERT_OK(n);
    for (const TensorQuant& q : {s->weights, n->weights}) {
      absl::StatusOr<ElementFormat> f = ElementFormatOf(q);
      QAAS_ASSERT_OK(f);
      EXPECT_EQ(*f, c.want);
    }
  }
}

}  // namespace
}  // namespace qaas::quant
