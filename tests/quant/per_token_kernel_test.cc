#include "quant/formats/per_token_kernel.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

#include "quant/formats/act_quant.h"

namespace qaas::quant {
namespace {

// Equal value for value, NaN where the other has NaN (-0 equals +0).
bool SameValues(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes()) return false;
  const at::Tensor both_nan = at::isnan(a) & at::isnan(b);
  return ((a == b) | both_nan).all().item<bool>();
}

// Rows that exercise every branch: random values of several magnitudes,
// a zero row, a constant row, exact ties of x / scale (half-way values, which
// round to even; at scales 1 and 3), a NaN, +Inf, -Inf, a range whose width overflows float,
// subnormals; 37 columns so that every row has a tail past the 8-wide
// vectors.
at::Tensor HardRows(int64_t cols, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  auto opts = at::TensorOptions().dtype(at::kFloat);
  std::vector<at::Tensor> rows;
  for (double magnitude : {1e-3, 1.0, 30.0, 1e4}) rows.push_back(at::randn({1, cols}, gen, opts) * magnitude);
  rows.push_back(at::zeros({1, cols}, opts));
  rows.push_back(at::full({1, cols}, 2.5, opts));
  // |max| 127 makes the 8-bit symmetric scale exactly 1: the halves are ties.
  at::Tensor ties = at::arange(cols, opts).remainder(16).sub(8).add(0.5);
  ties.index_put_({0}, 127.0);
  rows.push_back(ties.unsqueeze(0));
  // Scale 3, which has no exact reciprocal: x / 3 lands on the halves
  // exactly, x * (1/3) may not.
  rows.push_back((ties * 3).unsqueeze(0));
  const float inf = std::numeric_limits<float>::infinity();
  for (float special : {std::numeric_limits<float>::quiet_NaN(), inf, -inf}) {
    at::Tensor r = at::randn({1, cols}, gen, opts);
    r.index_put_({0, cols / 2}, special);
    rows.push_back(r);
  }
  at::Tensor wide = at::randn({1, cols}, gen, opts);
  wide.index_put_({0, 0}, 3e38f);
  wide.index_put_({0, 1}, -3e38f);
  rows.push_back(wide);
  rows.push_back(at::randn({1, cols}, gen, opts) * 1e-40);
  return at::cat(rows, 0);
}

class PerTokenKernel : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(PerTokenKernel, GivesTheFormulasBits) {
  if (!__builtin_cpu_supports("avx2")) GTEST_SKIP() << "no AVX2 on this CPU: the formula runs everywhere";
  const auto [bits, symmetric] = GetParam();
  for (int64_t cols : {int64_t{37}, int64_t{8}, int64_t{3}, int64_t{768}}) {
    const at::Tensor x = HardRows(cols, 7 + cols);
    const at::Tensor fused = FakeQuantizePerTokenKernel(x, bits, symmetric);
    ASSERT_TRUE(fused.defined()) << cols;
    const at::Tensor formula = FakeQuantizePerTokenFormula(x, bits, symmetric);
    EXPECT_TRUE(SameValues(fused, formula)) << cols << " columns\nkernel:\n" << fused << "\nformula:\n" << formula;
    // A row with a NaN or an infinity is NaN throughout, as the formula makes it.
    EXPECT_TRUE(at::isnan(fused.select(0, 8)).all().item<bool>()) << cols;
  }
  // More dimensions than two: rows are the last dimension's.
  const at::Tensor x3 = HardRows(40, 3).view({13, 1, 40});
  EXPECT_TRUE(SameValues(FakeQuantizePerTokenKernel(x3, bits, symmetric),
                         FakeQuantizePerTokenFormula(x3, bits, symmetric)));
}

INSTANTIATE_TEST_SUITE_P(BitsAndSymmetry, PerTokenKernel,
                         ::testing::Combine(::testing::Values(4, 8), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<int, bool>>& info) {
                           return "w" + std::to_string(std::get<0>(info.param)) +
                                  (std::get<1>(info.param) ? "_sym" : "_asym");
                         });

TEST(PerTokenKernel, OneThreadAndTwoGiveTheSameBits) {
  if (!__builtin_cpu_supports("avx2")) GTEST_SKIP() << "no AVX2 on this CPU";
  at::Generator gen = at::detail::createCPUGenerator(5);
  const at::Tensor x = at::randn({513, 300}, gen, at::TensorOptions().dtype(at::kFloat));
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const at::Tensor one = FakeQuantizePerTokenKernel(x, 8, true);
  at::set_num_threads(2);
  const at::Tensor two = FakeQuantizePerTokenKernel(x, 8, true);
  at::set_num_threads(threads);
  EXPECT_TRUE(at::equal(one, two));
}

// What it does not take, FakeQuantizePerToken gives to the formula.
TEST(PerTokenKernel, DeclinesWhatItDoesNotTake) {
  at::Generator gen = at::detail::createCPUGenerator(9);
  const at::Tensor x = at::randn({16, 24}, gen, at::TensorOptions().dtype(at::kFloat));
  EXPECT_FALSE(FakeQuantizePerTokenKernel(x.to(at::kDouble), 8, true).defined());
  EXPECT_FALSE(FakeQuantizePerTokenKernel(x.t(), 8, true).defined());
  EXPECT_FALSE(FakeQuantizePerTokenKernel(x.clone().requires_grad_(true), 8, true).defined());
  EXPECT_FALSE(FakeQuantizePerTokenKernel(x, 1, true).defined());
  EXPECT_TRUE(SameValues(FakeQuantizePerToken(x.t(), 4, false), FakeQuantizePerTokenFormula(x.t(), 4, false)));
  EXPECT_TRUE(SameValues(FakeQuantizePerToken(x.to(at::kDouble), 8, true),
                         FakeQuantizePerTokenFormula(x.to(at::kDouble), 8, true)));
}

}  // namespace
}  // namespace qaas::quant
