#include "quant/methods/gptq.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include "quant/export.h"
#include "quant/formats/number_format.h"
#include "quant/methods/rtn.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

struct Problem {
  at::Tensor W;  // [rows, columns]
  at::Tensor X;  // [tokens, columns]
  at::Tensor H;
};

// Correlated inputs with a few high-variance channels, as in LLM activations.
Problem MakeProblem(int64_t rows, int64_t columns, int64_t tokens, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  auto opts = at::TensorOptions().dtype(at::kFloat);
  at::Tensor mix = at::randn({columns, columns}, gen, opts) / std::sqrt(static_cast<double>(columns));
  at::Tensor X = at::matmul(at::randn({tokens, columns}, gen, opts), mix + at::eye(columns, opts));
  X.narrow(1, 0, 4).mul_(8.0);
  Problem p;
  p.W = at::randn({rows, columns}, gen, opts) * 0.05;
  p.X = X;
  HessianAccumulator acc(columns, at::kCPU);
  for (int64_t i = 0; i < tokens; i += 256) acc.Add(X.narrow(0, i, std::min<int64_t>(256, tokens - i)));
  p.H = acc.H();
  return p;
}

double OutputError(const Problem& p, const at::Tensor& Q) {
  return (at::matmul(p.X, p.W.t()) - at::matmul(p.X, Q.t())).norm().item<double>();
}

TensorQuant Spec(int bits, int group, bool sym = false) {
  TensorQuant t;
  t.format = NumberFormat::kInt;
  t.bits = bits;
  t.granularity = group > 0 ? Granularity::kPerGroup : Granularity::kPerChannel;
  t.group_size = group;
  t.symmetric = sym;
  return t;
}

TEST(HessianAccumulator, StreamingEqualsTheBatchFormula) {
  Problem p = MakeProblem(8, 48, 1000, 1);
  at::Tensor expected = 2.0 * at::matmul(p.X.t(), p.X) / 1000.0;
  EXPECT_TRUE(at::allclose(p.H, expected, 1e-4, 1e-4));
}

// Staged windows, flushed mid-window and at the end, updating only the upper
// triangle in panels (600 columns: one full panel and a partial one), read
// between windows and after: H is the batch formula every time, symmetric
// exactly, and samples() counts the staged tokens too. On both CPU paths:
// BLAS's syrk where the process has one, and ATen's panels (what other
// devices run).
class HessianAccumulatorPaths : public ::testing::TestWithParam<bool> {};

TEST_P(HessianAccumulatorPaths, StagedBatchesAndPanelsEqualTheBatchFormula) {
  const bool allow_blas = GetParam();
  const int64_t columns = 600;
  Problem p = MakeProblem(4, columns, 1300, 2);
  // Batches of 256 rows (the smallest): windows of 100 rows end mid-batch.
  HessianAccumulator acc(columns, at::kCPU, /*batch_bytes=*/256 * columns * 4, allow_blas);
  int64_t added = 0;
  for (int64_t i = 0; i < 1300; i += 100) {
    acc.Add(p.X.narrow(0, i, 100));
    added += 100;
    EXPECT_EQ(acc.samples(), added);
    if (added == 700 || added == 1300) {
      const at::Tensor H = acc.H();
      at::Tensor seen = p.X.narrow(0, 0, added);
      at::Tensor expected = 2.0 * at::matmul(seen.t(), seen) / static_cast<double>(added);
      // float32 sums of 700-1300 products of O(10) values: relative 1e-5
      // of the largest entries.
      const double scale = expected.abs().max().item<double>();
      EXPECT_LT((H - expected).abs().max().item<double>(), 1e-5 * scale) << added << " tokens";
      EXPECT_TRUE(at::equal(H, H.t())) << added << " tokens";
    }
  }
  // One window longer than a batch goes straight in.
  HessianAccumulator whole(columns, at::kCPU, 256 * columns * 4, allow_blas);
  whole.Add(p.X);
  at::Tensor expected = 2.0 * at::matmul(p.X.t(), p.X) / 1300.0;
  EXPECT_LT((whole.H() - expected).abs().max().item<double>(), 1e-5 * expected.abs().max().item<double>());
  EXPECT_EQ(whole.samples(), 1300);
}

// Windows as a calibration pass may hand them, each at least a batch long
// so that it goes straight in: one whose rows are not contiguous (a
// transposed view) and one whose rows are padded apart; then a single row,
// flushed alone when H is read.
TEST_P(HessianAccumulatorPaths, StridedWindowsAndASingleRowEqualTheBatchFormula) {
  const bool allow_blas = GetParam();
  const int64_t columns = 300;
  Problem p = MakeProblem(4, columns, 1001, 3);
  HessianAccumulator acc(columns, at::kCPU, /*batch_bytes=*/256 * columns * 4, allow_blas);
  acc.Add(p.X.narrow(0, 0, 300).t().contiguous().t());
  at::Tensor padded = at::zeros({700, columns + 7}, p.X.options());
  padded.narrow(1, 0, columns).copy_(p.X.narrow(0, 300, 700));
  acc.Add(padded.narrow(1, 0, columns));
  acc.Add(p.X.narrow(0, 1000, 1));
  const at::Tensor expected = 2.0 * at::matmul(p.X.t(), p.X) / 1001.0;
  const at::Tensor H = acc.H();
  EXPECT_LT((H - expected).abs().max().item<double>(), 1e-5 * expected.abs().max().item<double>());
  EXPECT_TRUE(at::equal(H, H.t()));
  EXPECT_EQ(acc.samples(), 1001);
}

INSTANTIATE_TEST_SUITE_P(CpuPaths, HessianAccumulatorPaths, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return std::string(info.param ? "BlasWhereFound" : "AtenPanels");
                         });

// UpperCholeskyOfInverse by LAPACK's strtri (where this process has it) and
// by the triangular solve: upper triangular, a positive diagonal, and the
// float64 factor of the float64 inverse, on a Hessian with a few channels of
// 8x the scale (condition number ~1e3, so float32 is good to ~1e-4 of it).
class InverseFactorPaths : public ::testing::TestWithParam<bool> {};

TEST_P(InverseFactorPaths, IsTheUpperCholeskyFactorOfTheInverse) {
  if (GetParam() && !HasLapackTrtri()) GTEST_SKIP() << "this process has no LAPACK strtri";
  auto one = UpperCholeskyOfInverse(at::full({1, 1}, 4.0f), GetParam());
  QAAS_ASSERT_OK(one);
  EXPECT_EQ(one->item<float>(), 0.5f);
  for (int64_t n : {5, 67, 300}) {
    SCOPED_TRACE(n);
    Problem p = MakeProblem(1, n, 4 * n + 16, 11);
    at::Tensor A = p.H.clone();
    A.diagonal().add_(0.01 * A.diagonal().mean().item<double>());
    auto U = UpperCholeskyOfInverse(A, /*allow_lapack=*/GetParam());
    QAAS_ASSERT_OK(U);
    ASSERT_EQ(U->sizes(), A.sizes());
    EXPECT_TRUE(at::equal(at::tril(*U, -1), at::zeros_like(*U)));
    EXPECT_GT(U->diagonal().min().item<float>(), 0.0f);
    const at::Tensor A64 = A.to(at::kDouble);
    const at::Tensor expected = at::linalg_cholesky(at::linalg_inv(A64), /*upper=*/true);
    const double scale = expected.abs().max().item<double>();
    EXPECT_LT((U->to(at::kDouble) - expected).abs().max().item<double>(), 1e-3 * scale);
    // U^T U A = I.
    const at::Tensor product = at::matmul(at::matmul(U->to(at::kDouble).t(), U->to(at::kDouble)), A64);
    EXPECT_LT((product - at::eye(n, product.options())).abs().max().item<double>(), 1e-3);
  }
}

TEST_P(InverseFactorPaths, AnIndefiniteMatrixIsAnErrorThatSaysSo) {
  if (GetParam() && !HasLapackTrtri()) GTEST_SKIP() << "this process has no LAPACK strtri";
  Problem p = MakeProblem(1, 32, 256, 12);
  at::Tensor A = p.H.clone();
  A[5][5] = -1.0f;
  auto U = UpperCholeskyOfInverse(A, GetParam());
  QAAS_EXPECT_CODE(U, kFailedPrecondition);
  EXPECT_NE(std::string(U.status().message()).find("not positive definite"), std::string::npos) << U.status();
  QAAS_EXPECT_CODE(UpperCholeskyOfInverse(at::ones({3, 4}), GetParam()), kInvalidArgument);
  QAAS_EXPECT_CODE(UpperCholeskyOfInverse(at::ones({4}), GetParam()), kInvalidArgument);
  QAAS_EXPECT_CODE(UpperCholeskyOfInverse(at::eye(4).to(at::kHalf), GetParam()), kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(CpuPaths, InverseFactorPaths, ::testing::Values(true, false),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return std::string(info.param ? "LapackTrtri" : "TriangularSolve");
                         });

class GptqBeatsRtn : public ::testing::TestWithParam<std::tuple<int, int, bool>> {};

TEST_P(GptqBeatsRtn, OnLayerOutputError) {
  const auto [bits, group, act_order] = GetParam();
  Problem p = MakeProblem(96, 256, 2048, 7);
  GptqOptions o;
  o.act_order = act_order;
  o.blocksize = 64;  // several lazy blocks
  GptqStats stats;
  auto q = QuantizeGptq(p.W, p.H, Spec(bits, group), o, &stats);
  QAAS_ASSERT_OK(q);
  QuantizedLinear rtn = QuantizeRtn(p.W, Spec(bits, group));
  const double gptq_err = OutputError(p, q->dequantized), rtn_err = OutputError(p, rtn.dequantized);
  EXPECT_LT(gptq_err, rtn_err) << "bits " << bits << " group " << group << " act_order " << act_order;
  EXPECT_EQ(stats.cholesky_retries, 0);
  EXPECT_GT(stats.damp, 0);
  // Codes, parameters and g_idx describe exactly the dequantized weights.
  at::Tensor g = q->g_idx.to(at::kLong);
  at::Tensor deq = (q->codes.to(at::kFloat) - q->params.zero.index_select(1, g)) * q->params.scale.index_select(1, g);
  EXPECT_TRUE(at::equal(deq, q->dequantized));
  EXPECT_GE(q->codes.min().item<int>(), 0);
  EXPECT_LE(q->codes.max().item<int>(), (1 << bits) - 1);
}

INSTANTIATE_TEST_SUITE_P(Settings, GptqBeatsRtn,
                         ::testing::Combine(::testing::Values(2, 3, 4, 8), ::testing::Values(0, 32, 128),
                                            ::testing::Bool()));

// MX weights: GPTQ's error feedback works under shared block exponents too,
// and every weight it returns is an MX value of its block (re-quantizing
// changes nothing).
class GptqMx : public ::testing::TestWithParam<std::string> {};

TEST_P(GptqMx, BeatsRtnAndStaysOnTheMxGrid) {
  const Scheme scheme = MustParse(GetParam());
  Problem p = MakeProblem(64, 256, 2048, 11);
  GptqOptions o;
  o.blocksize = 64;
  auto q = QuantizeGptq(p.W, p.H, scheme.weights, o);
  QAAS_ASSERT_OK(q);
  EXPECT_TRUE(q->mx);
  QuantizedLinear rtn = QuantizeRtn(p.W, scheme.weights);
  ASSERT_TRUE(rtn.mx);
  EXPECT_LT(OutputError(p, q->dequantized), OutputError(p, rtn.dequantized)) << GetParam();
  EXPECT_TRUE(at::equal(FakeQuantizeMx(q->dequantized, q->element), q->dequantized));
  EXPECT_TRUE(at::equal(UnpackMx(PackMx(q->dequantized, q->element)), q->dequantized));

  o.act_order = true;
  QAAS_EXPECT_CODE(QuantizeGptq(p.W, p.H, scheme.weights, o), kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Formats, GptqMx, ::testing::Values("Wmxint4A16", "Wmxfp4A16", "Wmxfp6A16", "Wmxint8A16"));

TEST(Gptq, ExportRoundTripsWithActOrderAndStaticGroups) {
  Problem p = MakeProblem(64, 256, 1024, 3);
  for (bool static_groups : {false, true}) {
    GptqOptions o;
    o.act_order = true;
    o.static_groups = static_groups;
    auto q = QuantizeGptq(p.W, p.H, Spec(4, 64, /*sym=*/true), o);
    QAAS_ASSERT_OK(q);
    std::map<std::string, RawTensor> tensors;
    for (auto& t : PackGptqLinear("l", *q, at::Tensor())) tensors[t.name] = t;
    auto back = UnpackGptqLinear(tensors, "l", 4, 256, 64);
    QAAS_ASSERT_OK(back);
    EXPECT_TRUE(at::equal(*back, q->dequantized)) << "static_groups " << static_groups;
    at::Tensor in_order = at::div(at::arange(256, at::TensorOptions().dtype(at::kLong)), 64, "floor").to(at::kInt);
    // Static groups keep groups in column order; dynamic ones follow act-order.
    EXPECT_EQ(at::equal(q->g_idx, in_order), static_groups);
  }
}

TEST(Gptq, DeadInputsAreZeroed) {
  Problem p = MakeProblem(16, 64, 512, 5);
  p.X.select(1, 10).zero_();
  HessianAccumulator acc(64, at::kCPU);
  acc.Add(p.X);
  GptqStats stats;
  auto q = QuantizeGptq(p.W, acc.H(), Spec(4, 0), GptqOptions(), &stats);
  QAAS_ASSERT_OK(q);
  EXPECT_EQ(stats.dead_columns, 1);
  EXPECT_EQ(q->dequantized.select(1, 10).abs().max().item<float>(), 0.0f);
}

TEST(Gptq, IndefiniteHessianIsDampedNotFatal) {
  Problem p = MakeProblem(16, 32, 256, 9);
  at::Tensor H = p.H.clone();
  H[3][3] = -H.diagonal().mean() * 0.5;  // not positive definite
  GptqStats stats;
  auto q = QuantizeGptq(p.W, H, Spec(4, 0), GptqOptions(), &stats);
  QAAS_ASSERT_OK(q);
  EXPECT_GT(stats.cholesky_retries, 0);
  EXPECT_FALSE(q->dequantized.isnan().any().item<bool>());

  GptqOptions no_retries;
  no_retries.max_damp_retries = 0;
  QAAS_EXPECT_CODE(QuantizeGptq(p.W, H, Spec(4, 0), no_retries), kInternal);
}

TEST(Gptq, ShapeMismatchIsInvalidArgument) {
  Problem p = MakeProblem(16, 32, 64, 2);
  QAAS_EXPECT_CODE(QuantizeGptq(p.W, at::eye(31), Spec(4, 0), GptqOptions()), kInvalidArgument);
}

TEST(Gptq, DoesNotModifyItsInputs) {
  Problem p = MakeProblem(16, 64, 256, 4);
  at::Tensor W = p.W.clone(), H = p.H.clone();
  ASSERT_TRUE(QuantizeGptq(p.W, p.H, Spec(3, 32), GptqOptions()).ok());
  EXPECT_TRUE(at::equal(W, p.W));
  EXPECT_TRUE(at::equal(H, p.H));
}

}  // namespace
}  // namespace qaas::quant
