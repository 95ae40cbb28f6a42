#include "quant/methods/adadim.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <map>

#include "quant/export.h"
#include "quant/methods/gptq.h"
#include "quant/methods/rtn.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

TensorQuant Spec(int bits, int group) {
  TensorQuant t;
  t.format = NumberFormat::kInt;
  t.bits = bits;
  t.granularity = group > 0 ? Granularity::kPerGroup : Granularity::kPerChannel;
  t.group_size = group;
  return t;
}

// Weights with a few large input channels (columns), as LLM weights have.
at::Tensor OutlierColumns(int64_t out, int64_t in, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  at::Tensor w = at::randn({out, in}, gen, at::TensorOptions().dtype(at::kFloat)) * 0.02;
  w.narrow(1, 5, 2).mul_(30.0);
  return w;
}

TEST(AdaDim, PerInputChannelRtnIsRtnOfTheTranspose) {
  at::Tensor w = OutlierColumns(64, 96, 1);
  QuantizedLinear ic = QuantizeRtnPerInputChannel(w, Spec(4, 32));
  QuantizedLinear t = QuantizeRtn(w.t().contiguous(), Spec(4, 32));
  EXPECT_TRUE(ic.per_input_channel);
  EXPECT_TRUE(at::equal(ic.dequantized, t.dequantized.t()));
  EXPECT_EQ(ic.codes.sizes(), (std::vector<int64_t>{96, 64}));  // describes W^T
  EXPECT_EQ(ic.params.scale.sizes(), (std::vector<int64_t>{96, 2}));
}

// Per-IC groups isolate outlier input channels: the other channels no longer
// share a scale with them, so their weights keep a fine grid.
TEST(AdaDim, PerInputChannelGroupsIsolateOutlierColumns) {
  at::Tensor w = OutlierColumns(128, 128, 2);
  at::Tensor normal = at::ones({128}, at::TensorOptions().dtype(at::kBool));
  normal.narrow(0, 5, 2).fill_(false);
  auto error_on_normal_columns = [&](const at::Tensor& q) {
    return RelativeError(w.index({at::indexing::Slice(), normal}), q.index({at::indexing::Slice(), normal}));
  };
  const double oc = error_on_normal_columns(QuantizeRtn(w, Spec(3, 32)).dequantized);
  const double ic = error_on_normal_columns(QuantizeRtnPerInputChannel(w, Spec(3, 32)).dequantized);
  EXPECT_LT(ic, oc / 2);
}

// The choice follows the block output: when only the ordinary input channels
// carry signal, per-IC (which spares them) wins; when only the outlier
// channels do, per-OC (whose groups hold just two outliers each, so a finer
// grid for them) wins.
TEST(AdaDim, ChooseAxisKeepsTheCandidateWithTheSmallerBlockError) {
  at::Generator gen = at::detail::createCPUGenerator(4);
  at::Tensor w = OutlierColumns(128, 128, 5);
  QuantizedLinear oc = QuantizeRtn(w, Spec(3, 32));
  QuantizedLinear ic = QuantizeRtnPerInputChannel(w, Spec(3, 32));
  for (bool signal_on_outliers : {false, true}) {
    at::Tensor x = at::randn({256, 128}, gen, at::TensorOptions().dtype(at::kFloat));
    at::Tensor outlier_channels = x.narrow(1, 5, 2).clone();
    if (signal_on_outliers) {
      x.zero_();
      x.narrow(1, 5, 2).copy_(outlier_channels);
    } else {
      x.narrow(1, 5, 2).zero_();
    }
    auto block = [&](const at::Tensor& weight) { return at::matmul(x, weight.t()); };
    AdaDimChoice c = ChooseAxis(oc, ic, block(w), block);
    EXPECT_EQ(c.per_input_channel, !signal_on_outliers);
    EXPECT_EQ(c.per_input_channel, c.error_per_ic < c.error_per_oc);
    EXPECT_GT(std::max(c.error_per_oc, c.error_per_ic), 0);
  }
}

TEST(AdaDim, GptqPerInputChannelBeatsRtnPerInputChannelAndRoundTrips) {
  at::Generator gen = at::detail::createCPUGenerator(6);
  auto opts = at::TensorOptions().dtype(at::kFloat);
  at::Tensor x = at::matmul(at::randn({2048, 128}, gen, opts), at::randn({128, 128}, gen, opts) / 11.0 + at::eye(128, opts));
  at::Tensor w = OutlierColumns(96, 128, 7);
  HessianAccumulator acc(128, at::kCPU);
  acc.Add(x);
  for (bool act_order : {false, true}) {
    GptqOptions o;
    o.per_input_channel = true;
    o.act_order = act_order;
    auto q = QuantizeGptq(w, acc.H(), Spec(3, 32), o);
    QAAS_ASSERT_OK(q);
    ASSERT_TRUE(q->per_input_channel);
    auto err = [&](const at::Tensor& d) { return (at::matmul(x, (w - d).t())).norm().item<double>(); };
    EXPECT_LT(err(q->dequantized), err(QuantizeRtnPerInputChannel(w, Spec(3, 32)).dequantized));
    // The transposed description reproduces the weights exactly, and packs.
    at::Tensor g = q->g_idx.to(at::kLong);
    at::Tensor t = (q->codes.to(at::kFloat) - q->params.zero.index_select(1, g)) * q->params.scale.index_select(1, g);
    EXPECT_TRUE(at::equal(t.t(), q->dequantized));
    std::map<std::string, RawTensor> tensors;
    for (auto& r : PackGptqLinear("l.ic", *q, at::Tensor())) tensors[r.name] = r;
    auto back = UnpackGptqLinear(tensors, "l.ic", 3, /*in=*/96, /*out=*/128);
    QAAS_ASSERT_OK(back);
    EXPECT_TRUE(at::equal(back->t(), q->dequantized));
  }
}

}  // namespace
}  // namespace qaas::quant
