#include "quant/model/small_head_attention.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "quant/model/llama.h"

namespace qaas::quant {
namespace {

// Softmax attention in float64 with the mask written out: query i sees keys
// i - window < j <= i (window 0: every j <= i).
at::Tensor Reference(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int window, double scale) {
  const int64_t T = q.size(1);
  const at::Tensor qd = q.to(at::kDouble), kd = k.to(at::kDouble), vd = v.to(at::kDouble);
  at::Tensor scores = at::bmm(qd, kd.transpose(1, 2)) * scale;
  const at::Tensor i = at::arange(T).unsqueeze(1), j = at::arange(T).unsqueeze(0);
  at::Tensor keep = j <= i;
  if (window > 0) keep = keep & (j > i - window);
  scores = scores.masked_fill(keep.logical_not(), -std::numeric_limits<double>::infinity());
  return at::bmm(at::softmax(scores, -1), vd);
}

at::Tensor CausalMask(int64_t T, int window) {
  const float inf = std::numeric_limits<float>::infinity();
  at::Tensor mask = at::full({T, T}, -inf).triu(1);
  if (window > 0) mask = mask + at::full({T, T}, -inf).tril(-window);
  return mask;
}

// Largest difference to the reference, relative to the reference's largest
// value (the outputs are averages of values of size ~1).
double RelativeError(const at::Tensor& out, const at::Tensor& ref) {
  return ((out.to(at::kDouble) - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item<double>();
}

class SmallHeadAttentionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!SmallHeadAttentionAvailable()) GTEST_SKIP() << "this CPU lacks AVX2/FMA: the small-head kernel does not run";
  }
};

// Every head size it takes, lengths around its vectors of 8 keys (1, 7, 8,
// 9, ...), causal and sliding windows (1: each query sees itself only):
// equal to float64 attention to float rounding. A wrong mask, a lane past the
// query, or a key of another head is off by far more.
TEST_F(SmallHeadAttentionTest, MatchesFloat64AttentionForEveryHeadSizeLengthAndWindow) {
  at::manual_seed(0);
  for (int hd : {1, 3, 8, 16}) {
    for (int64_t T : {1, 7, 8, 9, 64, 131}) {
      for (int window : {0, 1, 6, 40}) {
        SCOPED_TRACE(testing::Message() << "hd " << hd << ", T " << T << ", window " << window);
        const at::Tensor q = at::randn({3, T, hd}), k = at::randn({3, T, hd}), v = at::randn({3, T, hd});
        const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
        const at::Tensor out = SmallHeadCausalAttention(q, k, v, window, scale);
        ASSERT_TRUE(out.defined());
        ASSERT_EQ(out.sizes(), q.sizes());
        const at::Tensor ref = Reference(q, k, v, window, scale);
        EXPECT_LT(RelativeError(out, ref), 1e-5);
        // The matrix-product form agrees with both.
        EXPECT_LT(RelativeError(ChunkedCausalAttention(q, k, v, CausalMask(T, window), window, scale), ref), 1e-5);
      }
    }
  }
}

// Non-contiguous inputs (the model passes views after its transposes) read
// as their values, not their storage order.
TEST_F(SmallHeadAttentionTest, ReadsStridedInputsByTheirValues) {
  at::manual_seed(1);
  const at::Tensor q = at::randn({20, 2, 8}).transpose(0, 1), k = at::randn({2, 8, 20}).transpose(1, 2),
                   v = at::randn({20, 2, 8}).transpose(0, 1);
  ASSERT_FALSE(q.is_contiguous());
  const at::Tensor out = SmallHeadCausalAttention(q, k, v, 0, 0.5);
  ASSERT_TRUE(out.defined());
  EXPECT_LT(RelativeError(out, Reference(q, k, v, 0, 0.5)), 1e-5);
}

// Scores in the thousands: the maximum is subtracted before e^x, so the
// weights neither overflow nor all underflow; the output stays finite and is
// the reference's (each query takes the value of its best key).
TEST_F(SmallHeadAttentionTest, LargeScoresStayFinite) {
  at::manual_seed(2);
  const at::Tensor q = at::randn({2, 50, 8}) * 100, k = at::randn({2, 50, 8}) * 100, v = at::randn({2, 50, 8});
  const at::Tensor out = SmallHeadCausalAttention(q, k, v, 0, 1.0);
  ASSERT_TRUE(out.defined());
  EXPECT_TRUE(at::isfinite(out).all().item<bool>());
  EXPECT_LT(RelativeError(out, Reference(q, k, v, 0, 1.0)), 1e-5);
}

// Rows are independent: one thread or two give the same bits.
TEST_F(SmallHeadAttentionTest, ThreadsDoNotChangeTheResult) {
  at::manual_seed(3);
  const at::Tensor q = at::randn({16, 200, 8}), k = at::randn({16, 200, 8}), v = at::randn({16, 200, 8});
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  const at::Tensor one = SmallHeadCausalAttention(q, k, v, 0, 0.3);
  at::set_num_threads(2);
  const at::Tensor two = SmallHeadCausalAttention(q, k, v, 0, 0.3);
  at::set_num_threads(threads);
  EXPECT_TRUE(at::equal(one, two));
}

// Where the kernel does not apply it says so (undefined), and
// CausalAttention takes the matrix products: heads above kSmallHeadMaxDim,
// float64.
TEST_F(SmallHeadAttentionTest, OutsideItsRangeCausalAttentionUsesTheMatrixProducts) {
  at::manual_seed(4);
  const int64_t T = 33;
  const int big = kSmallHeadMaxDim + 1;
  const at::Tensor q = at::randn({2, T, big}), k = at::randn({2, T, big}), v = at::randn({2, T, big});
  EXPECT_FALSE(SmallHeadCausalAttention(q, k, v, 0, 0.2).defined());
  EXPECT_LT(RelativeError(CausalAttention(q, k, v, CausalMask(T, 0), 0, 0.2), Reference(q, k, v, 0, 0.2)), 1e-5);
  const at::Tensor qd = at::randn({2, T, 8}, at::kDouble);
  EXPECT_FALSE(SmallHeadCausalAttention(qd, qd, qd, 0, 0.2).defined());
  const at::Tensor qs = at::randn({2, T, 8}), ks = at::randn({2, T, 8}), vs = at::randn({2, T, 8});
  EXPECT_LT(RelativeError(CausalAttention(qs, ks, vs, CausalMask(T, 5), 5, 0.2), Reference(qs, ks, vs, 5, 0.2)),
            1e-5);
}

}  // namespace
}  // namespace qaas::quant
