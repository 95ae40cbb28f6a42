#include "quant/util/finite.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace qaas::quant {
namespace {

TEST(CheckFinite, FiniteValuesWhoseSumOverflowsAreFine) {
  // 3e38 * 4 overflows float's sum; every value is finite.
  const at::Tensor big = at::full({2, 2}, 3e38, at::TensorOptions().dtype(at::kFloat));
  ASSERT_FALSE(std::isfinite(big.sum().item<double>()));
  EXPECT_TRUE(CheckFinite(big, absl::StatusCode::kFailedPrecondition, "big").ok());
  EXPECT_TRUE(CheckFinite(big.to(at::kBFloat16), absl::StatusCode::kFailedPrecondition, "big").ok());
}

TEST(CheckFinite, CountsNaNsAndInfinitiesAndNamesTheTensor) {
  at::Tensor t = at::randn({5, 7});
  t.index_put_({1, 2}, std::numeric_limits<float>::quiet_NaN());
  t.index_put_({3, 3}, std::numeric_limits<float>::infinity());
  t.index_put_({4, 6}, -std::numeric_limits<float>::infinity());
  const absl::Status s = CheckFinite(t, absl::StatusCode::kDataLoss, "model tensor x");
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(s.message(), "model tensor x has 3 non-finite values (NaN or Inf) of 35");
  // +Inf and -Inf alone: their sum is NaN, still caught.
  at::Tensor two = at::zeros({2});
  two.index_put_({0}, std::numeric_limits<float>::infinity());
  two.index_put_({1}, -std::numeric_limits<float>::infinity());
  EXPECT_FALSE(CheckFinite(two, absl::StatusCode::kDataLoss, "two").ok());
}

TEST(CheckFinite, IntegerAndUndefinedTensorsAreFine) {
  EXPECT_TRUE(CheckFinite(at::Tensor(), absl::StatusCode::kDataLoss, "none").ok());
  EXPECT_TRUE(CheckFinite(at::full({3}, 7, at::kLong), absl::StatusCode::kDataLoss, "codes").ok());
}

}  // namespace
}  // namespace qaas::quant
