#include "quant/formats/int_quant.h"

#include <ATen/ATen.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <ostream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "quant/methods/quantized_linear.h"
#include "quant/methods/rtn.h"
#include "quant/scheme.h"

namespace qaas::quant {
namespace {

TensorQuant IntSpec(int bits, bool symmetric, int group_size = 0,
                    Granularity g = Granularity::kPerChannel) {
  TensorQuant q;
  q.format = NumberFormat::kInt;
  q.bits = bits;
  q.symmetric = symmetric;
  q.group_size = group_size;
  q.granularity = group_size > 0 ? Granularity::kPerGroup : g;
  return q;
}

at::Tensor RandomWeight(int64_t out, int64_t in, uint64_t seed) {
  at::manual_seed(seed);
  // A little skew so that asymmetric ranges are not centred on zero.
  return at::randn({out, in}) * 0.05 + 0.01;
}

// The per-column scale of `p` as [out, in].
at::Tensor ColumnParams(const at::Tensor& t, const IntQuantParams& p, int64_t in) {
  const int64_t g = p.group_size == 0 ? in : p.group_size;
  return t.repeat_interleave(g, 1).narrow(1, 0, in);
}

struct RtnCase {
  int bits;
  bool symmetric;
  int group_size;
};
void PrintTo(const RtnCase& c, std::ostream* os) { *os << "W" << c.bits << "g" << c.group_size << (c.symmetric ? "sym" : "asym"); }

class RtnPropertyTest : public ::testing::TestWithParam<RtnCase> {};

TEST_P(RtnPropertyTest, ErrorCodesScalesAndZerosObeyTheFormat) {
  const RtnCase c = GetParam();
  const int64_t out = 24, in = 172;  // 172 = 128 + a ragged group of 44
  at::Tensor w = RandomWeight(out, in, c.bits * 10 + c.symmetric);
  const TensorQuant spec = IntSpec(c.bits, c.symmetric, c.group_size);
  QuantizedLinear q = QuantizeRtn(w, spec);
  const double maxq = (1 << c.bits) - 1;
  const int64_t groups = c.group_size == 0 ? 1 : (in + c.group_size - 1) / c.group_size;

  EXPECT_EQ(q.params.bits, c.bits);
  EXPECT_EQ(q.params.symmetric, c.symmetric);
  EXPECT_EQ(q.params.scale.sizes().vec(), (std::vector<int64_t>{out, groups}));
  EXPECT_EQ(q.params.zero.sizes().vec(), (std::vector<int64_t>{out, groups}));
  ASSERT_EQ(q.codes.sizes().vec(), (std::vector<int64_t>{out, in}));
  EXPECT_EQ(q.codes.scalar_type(), at::kInt);
  EXPECT_GE(q.codes.min().item<int>(), 0);
  EXPECT_LE(q.codes.max().item<int>(), maxq);
  // Every code value is used somewhere for 2..4 bits: the range is not wasted.
  if (c.bits <= 4) {
    EXPECT_EQ(std::get<0>(at::_unique(q.codes)).numel(), (int64_t{1} << c.bits));
  }

  // Scales are float16-representable, positive; zeros integers in range.
  EXPECT_TRUE(q.params.scale.equal(q.params.scale.to(at::kHalf).to(at::kFloat)));
  EXPECT_GT(q.params.scale.min().item<float>(), 0);
  EXPECT_TRUE(q.params.zero.equal(q.params.zero.round()));
  EXPECT_GE(q.params.zero.min().item<float>(), 0);
  EXPECT_LE(q.params.zero.max().item<float>(), maxq);
  if (c.symmetric) {
    EXPECT_TRUE((q.params.zero == (1 << (c.bits - 1))).all().item<bool>());
  }

  // The dequantized weights are the codes mapped back.
  EXPECT_TRUE(q.dequantized.equal(DequantizeCodes(q.codes, q.params)));
  EXPECT_TRUE(q.codes.equal(QuantizeToCodes(w, q.params)));

  // Within the clamp range, every element is within half a step of its weight.
  at::Tensor scale = ColumnParams(q.params.scale, q.params, in);
  at::Tensor zero = ColumnParams(q.params.zero, q.params, in);
  at::Tensor unclamped = at::round(w / scale) + zero;
  at::Tensor inside = (unclamped >= 0) & (unclamped <= maxq);
  at::Tensor err = (w - q.dequantized).abs();
  at::Tensor excess = at::where(inside, err - scale * 0.5, at::zeros_like(err));
  EXPECT_LE(excess.max().item<float>(), 1e-6f);
  // Outside it (the float16-rounded range's edges), still within a step.
  EXPECT_LE((err - scale * 1.01).max().item<float>(), 0.0f);
  EXPECT_GT(inside.to(at::kFloat).mean().item<float>(), 0.99);

  // g_idx names each column's group.
  ASSERT_EQ(q.g_idx.numel(), in);
  EXPECT_EQ(q.g_idx.scalar_type(), at::kInt);
  for (int64_t i : {int64_t{0}, int64_t{127}, int64_t{128}, in - 1}) {
    EXPECT_EQ(q.g_idx[i].item<int>(), c.group_size == 0 ? 0 : i / c.group_size) << i;
  }

  // More bits, less error.
  const double rel = RelativeError(w, q.dequantized);
  EXPECT_GT(rel, 0);
  EXPECT_LT(rel, c.bits >= 8 ? 0.01 : c.bits >= 4 ? 0.2 : c.bits == 3 ? 0.4 : 0.8) << rel;
}

INSTANTIATE_TEST_SUITE_P(
    BitsSymmetryGroups, RtnPropertyTest,
    ::testing::Values(RtnCase{2, false, 0}, RtnCase{3, false, 128}, RtnCase{4, false, 128},
                      RtnCase{4, true, 128}, RtnCase{4, false, 0}, RtnCase{4, true, 0},
                      RtnCase{8, false, 0}, RtnCase{8, true, 128}, RtnCase{3, true, 64}),
    [](const ::testing::TestParamInfo<RtnCase>& info) {
      return "W" + std::to_string(info.param.bits) + "g" + std::to_string(info.param.group_size) +
             (info.param.symmetric ? "sym" : "asym");
    });

// Scalar reference of the min-max parameters and codes (the formulas of int_quant.h).
TEST(IntQuantTest, MatchesTheScalarReference) {
  for (const RtnCase c : {RtnCase{4, false, 128}, RtnCase{3, true, 0}, RtnCase{8, false, 32}}) {
    SCOPED_TRACE(std::to_string(c.bits) + (c.symmetric ? " sym g" : " asym g") + std::to_string(c.group_size));
    const int64_t out = 6, in = 172;
    at::Tensor w = RandomWeight(out, in, 99);
    IntQuantParams p = ComputeIntParams(w, IntSpec(c.bits, c.symmetric, c.group_size));
    at::Tensor codes = QuantizeToCodes(w, p);
    const int64_t g = c.group_size == 0 ? in : c.group_size;
    const float maxq = static_cast<float>((1 << c.bits) - 1);
    auto W = w.accessor<float, 2>();
    int mismatches = 0;
    for (int64_t r = 0; r < out; ++r) {
      for (int64_t g0 = 0, gi = 0; g0 < in; g0 += g, ++gi) {
        const int64_t g1 = std::min(in, g0 + g);
        float lo = 0, hi = 0;  // the range always includes zero
        for (int64_t i = g0; i < g1; ++i) {
          lo = std::min(lo, W[r][i]);
          hi = std::max(hi, W[r][i]);
        }
        if (c.symmetric) {
          hi = std::max(-lo, hi);
          lo = -hi;
        }
        const float scale = static_cast<float>(c10::Half((hi - lo) / maxq));
        const float zero =
            c.symmetric ? static_cast<float>(1 << (c.bits - 1)) : std::nearbyint(-lo / scale);
        EXPECT_FLOAT_EQ(p.scale[r][gi].item<float>(), scale) << r << "," << gi;
        EXPECT_EQ(p.zero[r][gi].item<float>(), zero) << r << "," << gi;
        for (int64_t i = g0; i < g1; ++i) {
          const float code = std::clamp(std::nearbyint(W[r][i] / scale) + zero, 0.0f, maxq);
          mismatches += codes[r][i].item<int>() != static_cast<int>(code);
        }
      }
    }
    EXPECT_EQ(mismatches, 0);
  }
}

TEST(IntQuantTest, RaggedLastGroupUsesOnlyItsOwnColumns) {
  at::Tensor w = RandomWeight(4, 172, 5);
  w.narrow(1, 128, 44).mul_(0.01);  // the last group is much narrower
  IntQuantParams p = ComputeIntParams(w, IntSpec(4, false, 128));
  EXPECT_EQ(p.group_size, 128);
  ASSERT_EQ(p.scale.size(1), 2);
  IntQuantParams last = ComputeIntParams(w.narrow(1, 128, 44).contiguous(), IntSpec(4, false, 0));
  IntQuantParams first = ComputeIntParams(w.narrow(1, 0, 128).contiguous(), IntSpec(4, false, 0));
  EXPECT_TRUE(p.scale.select(1, 1).equal(last.scale.select(1, 0)));
  EXPECT_TRUE(p.zero.select(1, 1).equal(last.zero.select(1, 0)));
  EXPECT_TRUE(p.scale.select(1, 0).equal(first.scale.select(1, 0)));
  EXPECT_LT(p.scale.select(1, 1).max().item<float>(), p.scale.select(1, 0).min().item<float>());
}

TEST(IntQuantTest, GroupSizeAtLeastTheWidthIsPerChannel) {
  at::Tensor w = RandomWeight(3, 100, 6);
  EXPECT_EQ(GroupSize(IntSpec(4, false, 128), 100), 100);
  EXPECT_EQ(GroupSize(IntSpec(4, false, 32), 100), 32);
  EXPECT_EQ(GroupSize(IntSpec(4, false, 0), 100), 100);
  IntQuantParams grouped = ComputeIntParams(w, IntSpec(4, false, 128));
  IntQuantParams channel = ComputeIntParams(w, IntSpec(4, false, 0));
  EXPECT_EQ(grouped.group_size, 0);
  EXPECT_TRUE(grouped.scale.equal(channel.scale));
}

TEST(IntQuantTest, PerTensorSharesOneScaleAndZero) {
  at::Tensor w = RandomWeight(8, 40, 7);
  w[3][5] = 1.0;  // the tensor's maximum, in one row only
  IntQuantParams p = ComputeIntParams(w, IntSpec(4, false, 0, Granularity::kPerTensor));
  EXPECT_EQ(p.scale.sizes().vec(), (std::vector<int64_t>{8, 1}));
  EXPECT_TRUE((p.scale == p.scale[0][0]).all().item<bool>());
  EXPECT_TRUE((p.zero == p.zero[0][0]).all().item<bool>());
  const float want = static_cast<float>(c10::Half((1.0f - std::min(0.0f, w.min().item<float>())) / 15.0f));
  EXPECT_FLOAT_EQ(p.scale[0][0].item<float>(), want);
  at::Tensor deq = DequantizeCodes(QuantizeToCodes(w, p), p);
  EXPECT_NEAR(deq[3][5].item<float>(), 1.0f, p.scale[0][0].item<float>());
}

TEST(IntQuantTest, AsymmetricZeroPointsAreNeverZero) {
  // Groups that are all >= 0 or have a tiny negative minimum would round the
  // zero point to 0; it must stay in [1, maxq] for every bit width.
  at::Tensor w = at::rand({32, 256}) - 0.001;
  w.narrow(0, 0, 8).abs_();
  for (int bits : {2, 3, 4, 8}) {
    IntQuantParams p = ComputeIntParams(w, IntSpec(bits, false, 32));
    EXPECT_GE(p.zero.min().item<float>(), 1.0f) << bits;
    at::Tensor deq = DequantizeCodes(QuantizeToCodes(w, p), p);
    // Every weight is still within half a step (nothing is clipped).
    EXPECT_TRUE(((deq - w).abs() <= p.scale.repeat_interleave(32, 1) / 2 + 1e-6).all().item<bool>()) << bits;
  }
}

TEST(IntQuantTest, AsymmetricRangeAlwaysIncludesZero) {
  // Rows entirely positive and entirely negative: zero stays representable.
  at::Tensor w = at::stack({at::linspace(0.5, 1.5, 64), at::linspace(-2.0, -1.0, 64)});
  IntQuantParams p = ComputeIntParams(w, IntSpec(4, false, 0));
  // min widened to 0; the zero point is kept at 1, not 0, so GPTQ v1 loaders
  // agree on it (a stored zero - 1 of -1 is read differently by each).
  EXPECT_EQ(p.zero[0][0].item<float>(), 1.0f);
  EXPECT_EQ(p.zero[1][0].item<float>(), 15.0f);  // max widened to 0
  at::Tensor zeros = at::zeros({2, 64});
  EXPECT_TRUE(DequantizeCodes(QuantizeToCodes(zeros, p), p).equal(zeros));
  at::Tensor deq = DequantizeCodes(QuantizeToCodes(w, p), p);
  EXPECT_NEAR(deq[0][63].item<float>(), 1.5f, p.scale[0][0].item<float>() / 2 + 1e-6);
  EXPECT_NEAR(deq[1][0].item<float>(), -2.0f, p.scale[1][0].item<float>() / 2 + 1e-6);
  // Ranges: 1.5 over the 14 steps above zero point 1; 2.0 over 15 steps.
  EXPECT_FLOAT_EQ(p.scale[0][0].item<float>(), static_cast<float>(c10::Half(1.5f / 14)));
  EXPECT_FLOAT_EQ(p.scale[1][0].item<float>(), static_cast<float>(c10::Half(2.0f / 15)));
}

TEST(IntQuantTest, SymmetricZeroIsMidRange) {
  for (int bits : {2, 3, 4, 8}) {
    at::Tensor w = RandomWeight(5, 64, bits);
    IntQuantParams p = ComputeIntParams(w, IntSpec(bits, true, 0));
    EXPECT_TRUE((p.zero == static_cast<float>(1 << (bits - 1))).all().item<bool>()) << bits;
    // scale = 2 max|w| / (2^b - 1), rounded to float16.
    at::Tensor m = w.abs().amax(1, true);
    EXPECT_TRUE(p.scale.equal((m * 2 / ((1 << bits) - 1)).to(at::kHalf).to(at::kFloat))) << bits;
  }
}

TEST(IntQuantTest, AllZeroRowGivesZerosNotNaN) {
  at::Tensor w = RandomWeight(3, 130, 8);
  w[1].zero_();
  for (bool sym : {false, true}) {
    for (int group : {0, 64}) {
      QuantizedLinear q = QuantizeRtn(w, IntSpec(4, sym, group));
      EXPECT_FALSE(q.dequantized.isnan().any().item<bool>());
      EXPECT_FALSE(q.params.scale.isnan().any().item<bool>());
      EXPECT_GT(q.params.scale.min().item<float>(), 0.0f);
      EXPECT_TRUE(q.dequantized[1].equal(at::zeros({130})));
    }
  }
}

TEST(IntQuantTest, TinyRangeKeepsAPositiveScale) {
  // A range below float16's smallest subnormal must not round the scale to 0.
  at::Tensor w = at::full({2, 16}, 1e-12f);
  IntQuantParams p = ComputeIntParams(w, IntSpec(4, false, 0));
  EXPECT_GT(p.scale.min().item<float>(), 0.0f);
  at::Tensor deq = DequantizeCodes(QuantizeToCodes(w, p), p);
  EXPECT_FALSE(deq.isnan().any().item<bool>());
  EXPECT_LT(deq.abs().max().item<float>(), 1e-6f);
}

TEST(IntQuantTest, FakeQuantizeColumnsEqualsQuantizeThenDequantize) {
  at::Tensor w = RandomWeight(7, 48, 9);
  IntQuantParams p = ComputeIntParams(w, IntSpec(3, false, 0));
  EXPECT_TRUE(FakeQuantizeColumns(w, p.scale, p.zero, 3).equal(DequantizeCodes(QuantizeToCodes(w, p), p)));

  at::Tensor scale, zero;
  RangeToScaleZero(std::get<0>(w.min(1)), std::get<0>(w.max(1)), 3, false, &scale, &zero);
  EXPECT_TRUE(scale.reshape({7, 1}).equal(p.scale));
  EXPECT_TRUE(zero.reshape({7, 1}).equal(p.zero));
}

TEST(IntQuantTest, RelativeErrorIsTheFrobeniusRatio) {
  at::Tensor a = at::tensor({3.0f, 4.0f});
  at::Tensor b = at::tensor({3.0f, 3.0f});
  EXPECT_DOUBLE_EQ(RelativeError(a, b), 1.0 / 5.0);
  EXPECT_DOUBLE_EQ(RelativeError(a, a), 0.0);
  EXPECT_NEAR(RelativeError(at::zeros({2}), b), std::sqrt(18.0), 1e-5);
}

}  // namespace
}  // namespace qaas::quant
