// SmoothQuant, RPTQ and the outlier transform keep the float function; the
// activation quantizers quantize what they say.
#include <ATen/ATen.h>

#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "quant/formats/act_quant.h"
#include "quant/formats/number_format.h"
#include "quant/methods/rptq.h"
#include "quant/methods/smoothquant.h"
#include "quant/model/checkpoint.h"
#include "quant/model/decoder.h"
#include "quant/model/llama.h"
#include "quant/model/outliers.h"
#include "quant/model/random_model.h"
#include "tests/quant/layer_fixture.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {
namespace {

using ::qaas::testing::LocalPathExists;
using ::qaas::testing::ScopedTempDir;

double RelErr(const at::Tensor& ref, const at::Tensor& x) {
  return ((ref - x).norm() / ref.norm()).item<double>();
}

TEST(ActQuantTest, PerTokenSymmetricUsesEachRowsAbsMax) {
  at::Tensor x = at::tensor({1.0f, -0.3f, 0.25f, 2.0f, 5.0f, -8.0f}).view({2, 3});
  // 4 bits symmetric: qmax 7; row 0 scale 1/7, row 1 scale 8/7 (no value sits on a midpoint).
  at::Tensor q = FakeQuantizePerToken(x, 4, /*symmetric=*/true);
  at::Tensor expect = at::tensor({1.0f, -2.0f / 7, 2.0f / 7, 2.0f * 8 / 7, 4.0f * 8 / 7, -8.0f}).view({2, 3});
  EXPECT_TRUE(at::allclose(q, expect, 1e-6, 1e-6)) << q;
  // The row maxima are exact.
  EXPECT_FLOAT_EQ(q[0][0].item<float>(), 1.0f);
  EXPECT_FLOAT_EQ(q[1][2].item<float>(), -8.0f);
}

TEST(ActQuantTest, PerTokenAsymmetricKeepsMinAndMaxAndStaysOnTheGrid) {
  at::Tensor x = at::rand({5, 64}) * 3 + 1;  // all positive: asymmetric pays off
  at::Tensor q = FakeQuantizePerToken(x, 4, /*symmetric=*/false);
  // At most 16 distinct values per row, within half a step of x.
  for (int r = 0; r < 5; ++r) {
    EXPECT_LE(std::get<0>(at::_unique(q[r])).numel(), 16);
    const double step = ((x[r].max() - x[r].min()) / 15).item<double>();
    EXPECT_LE((q[r] - x[r]).abs().max().item<double>(), step / 2 + 1e-5);
  }
  EXPECT_LT(RelErr(x, q), RelErr(x, FakeQuantizePerToken(x, 4, true)));
}

TEST(ActQuantTest, StaticPerChannelClampsOutsideTheCalibratedRange) {
  TensorQuant spec;
  spec.format = NumberFormat::kInt;
  spec.bits = 8;
  ActQuantizer q = StaticPerChannelQuantizer(spec, at::tensor({-1.0f, 0.0f}), at::tensor({1.0f, 10.0f}));
  at::Tensor x = at::tensor({0.5f, 5.0f, 3.0f, 20.0f}).view({2, 2});
  at::Tensor y = q(x);
  EXPECT_NEAR(y[0][0].item<float>(), 0.5, 2.0 / 255);
  EXPECT_NEAR(y[0][1].item<float>(), 5.0, 10.0 / 255);
  EXPECT_NEAR(y[1][0].item<float>(), 1.0, 2.0 / 255);   // clamped to the channel's max
  EXPECT_NEAR(y[1][1].item<float>(), 10.0, 10.0 / 255);  // clamped
}

TEST(ActQuantTest, DynamicQuantizersFollowTheScheme) {
  at::Tensor x = at::randn({4, 64});
  Scheme s = MustParse("W4A8KV4");
  EXPECT_TRUE(DynamicQuantizer(s.activations)(x).equal(FakeQuantizePerToken(x, 8, true)));
  EXPECT_TRUE(DynamicQuantizer(s.kv_cache)(x).equal(FakeQuantizePerToken(x, 4, false)));
  Scheme mx = MustParse("Wmxfp4Amxfp4");
  at::Tensor y = DynamicQuantizer(mx.activations)(x);
  EXPECT_TRUE(y.equal(FakeQuantizeMx(x, ElementFormat::kFp4E2M1)));
  EXPECT_FALSE(y.equal(x));
  EXPECT_TRUE(ActQuantizer()(x).equal(x));
}

TEST(KMeansTest, SeparatesObviousClustersDeterministically) {
  std::vector<float> xs, ys;
  for (int i = 0; i < 30; ++i) {
    const int c = i % 3;  // three well separated blobs, interleaved
    xs.push_back(static_cast<float>(c * 10 + (i % 5) * 0.01));
    ys.push_back(static_cast<float>(c * 20 + (i % 7) * 0.01));
  }
  std::vector<int> labels = KMeans2D(xs, ys, 3, 42);
  ASSERT_EQ(labels.size(), 30u);
  for (int i = 0; i < 30; ++i) EXPECT_EQ(labels[i], i % 3) << i;  // numbered by increasing centroid
  EXPECT_EQ(KMeans2D(xs, ys, 3, 42), labels);
  // More clusters than distinct points: no empty cluster numbers.
  std::vector<int> few = KMeans2D({1, 1, 2}, {1, 1, 2}, 8, 0);
  EXPECT_EQ(few, (std::vector<int>{0, 0, 1}));
}

// A random LLaMA layer with GQA, and the tiny OPT model.
using TransformTest = ArchitectureLayerTest;

TEST_P(TransformTest, SmoothQuantKeepsTheLayersFunction) {
  const at::Tensor ref = model_->LayerForward(layer_, x_);
  DecoderLayer smoothed = layer_;
  for (ActPoint p : {ActPoint::kAttnIn, ActPoint::kMlpIn}) {
    at::Tensor absmax = at::rand({ck_->config().hidden_size}) * 50 + 0.1;
    auto s = SmoothLayer(*model_, p, absmax, SmoothQuantOptions{0.5}, &smoothed);
    QAAS_ASSERT_OK(s);
    EXPECT_GT((*s - 1).abs().max().item<double>(), 0.1);  // it did scale
  }
  EXPECT_FALSE(smoothed.linears[0].weight.equal(layer_.linears[0].weight));
  // A mixture of experts' router and shared-expert gate take the MLP input's
  // scales (routing unchanged, so the function is).
  for (const std::string& reader : model_->FloatReadersOf(ActPoint::kMlpIn)) {
    EXPECT_FALSE(smoothed.norm(reader).equal(layer_.norm(reader))) << reader;
  }
  EXPECT_LT(RelErr(ref, model_->LayerForward(smoothed, x_)), 1e-5);
  // The original layer's tensors are untouched.
  EXPECT_TRUE(model_->LayerForward(layer_, x_).equal(ref));
}

TEST(SmoothQuantTest, ScalesFollowThePaperAndSkipDeadChannels) {
  at::Tensor s = SmoothingScales(at::tensor({16.0f, 0.0f, 4.0f}), at::tensor({1.0f, 2.0f, 0.25f}), 0.5);
  EXPECT_FLOAT_EQ(s[0].item<float>(), 4.0f);  // sqrt(16) / sqrt(1)
  EXPECT_FLOAT_EQ(s[1].item<float>(), 1.0f);  // no activation: unchanged
  EXPECT_FLOAT_EQ(s[2].item<float>(), 4.0f);  // sqrt(4) / sqrt(0.25)
  at::Tensor a1 = SmoothingScales(at::tensor({16.0f}), at::tensor({2.0f}), 1.0);
  EXPECT_FLOAT_EQ(a1[0].item<float>(), 16.0f);  // alpha 1: everything to the weights
}

TEST_P(TransformTest, RptqReorderKeepsTheLayersFunctionAndMakesClustersContiguous) {
  if (config().moe.num_experts > 0) {
    // Each expert has its own hidden channels: no one reorder serves them.
    DecoderLayer layer = layer_;
    LayerActQuant act;
    nlohmann::json details;
    auto st = ApplyRptq(*model_, RptqStats{}, RptqOptions{}, MustParse("W4A4").activations, &layer, &act, &details);
    QAAS_EXPECT_CODE(st, kUnimplemented);
    EXPECT_TRUE(MessageHas(st, "mixture-of-experts"));
    return;
  }
  const at::Tensor ref = model_->LayerForward(layer_, x_);
  const std::vector<std::string>& names = model_->LinearNames();
  RptqStats stats;
  const int v = model_->ProducersOf(ActPoint::kAttnOut)[0];
  model_->LayerForward(layer_, x_, [&](const std::string& name, const at::Tensor& x) {
    if (name == names[0]) stats.attn_in.Add(x);
    if (name == names[model_->ConsumersOf(ActPoint::kAttnOut)[0]]) stats.attn_out.Add(x);
    if (name == names[model_->ConsumersOf(ActPoint::kMlpIn)[0]]) stats.mlp_in.Add(x);
    if (name == names[model_->ConsumersOf(ActPoint::kMlpHidden)[0]]) stats.mlp_hidden.Add(x);
    if (name == names[v]) {
      const Linear& l = layer_.linears[v];
      stats.v_out.Add(l.bias.defined() ? at::linear(x, l.weight, l.bias) : at::linear(x, l.weight));
    }
  });
  DecoderLayer reordered = layer_;
  LayerActQuant act;
  nlohmann::json details;
  RptqOptions options;
  options.clusters = {8, 4, 4, 8, 8};
  QAAS_ASSERT_OK(ApplyRptq(*model_, stats, options, MustParse("W4A4").activations, &reordered, &act, &details));
  EXPECT_EQ(details["clusters"]["attn_in"].get<int>(), 8);
  EXPECT_EQ(details["clusters"]["mlp_hidden"].get<int>(), 8);
  // Something moved, and the float function is the same.
  const BlockNorm norm = model_->NormOf(ActPoint::kAttnIn);
  at::Tensor reorder = reordered.norm(norm.reorder);
  ASSERT_TRUE(reorder.defined());
  EXPECT_FALSE(reorder.equal(at::arange(reorder.numel(), reorder.options())));
  EXPECT_FALSE(reordered.linears[names.size() - 1].weight.equal(layer_.linears[names.size() - 1].weight));
  EXPECT_LT(RelErr(ref, model_->LayerForward(reordered, x_)), 1e-6);

  // Each point's clusters are contiguous: a channel's (scale, zero) changes
  // only at cluster boundaries, so there are as many runs as clusters.
  auto runs = [](const ActQuantizer& q) {
    at::Tensor s = q.scale, z = q.zero;
    at::Tensor change = (s.narrow(0, 1, s.numel() - 1) != s.narrow(0, 0, s.numel() - 1)) |
                        (z.narrow(0, 1, z.numel() - 1) != z.narrow(0, 0, z.numel() - 1));
    return change.sum().item<int64_t>() + 1;
  };
  EXPECT_LE(runs(act.at(ActPoint::kAttnIn)), 8);
  EXPECT_LE(runs(act.at(ActPoint::kMlpIn)), 8);
  EXPECT_LE(runs(act.at(ActPoint::kMlpHidden)), 8);
  // Attention output: contiguous within each head.
  const int64_t hd = ck_->config().head_dim;
  const ActQuantizer& ao = act.at(ActPoint::kAttnOut);
  for (int64_t h = 0; h < ck_->config().num_heads; ++h) {
    ActQuantizer head{ao.spec, ao.scale.narrow(0, h * hd, hd), ao.zero.narrow(0, h * hd, hd)};
    EXPECT_LE(runs(head), 4) << "head " << h;
  }

  // With the activations quantized per cluster, the layer stays close to the
  // float one (4 bits), and much closer at 8 bits.
  reordered.act = std::make_shared<const LayerActQuant>(act);
  const double err4 = RelErr(ref, model_->LayerForward(reordered, x_));
  EXPECT_LT(err4, 0.5);
  EXPECT_GT(err4, 0);
}

INSTANTIATE_TEST_SUITE_P(Architectures, TransformTest,
                         ::testing::Values("llama", "opt", "llama3", "mistral", "qwen2", "qwen3", "gemma2",
                                           "gemma3", "phi3", "mixtral", "qwen2-moe", "qwen3-moe"));

// Gathering one expert's statistics runs the router and that expert only:
// it observes exactly what the whole layer's forward shows it, and no other
// expert's linear is observed.
TEST(MoeObservedExpertTest, OneExpertSeesWhatTheWholeForwardShowsIt) {
  for (const char* family : {"mixtral", "qwen2-moe", "qwen3-moe"}) {
    SCOPED_TRACE(family);
    auto ck = Checkpoint::Open(ReferencePath(std::string("families/") + family));
    QAAS_ASSERT_OK(ck);
    auto model = DecoderModel::Create(**ck, at::kCPU, 64);
    QAAS_ASSERT_OK(model);
    auto layer = (*model)->LoadLayer(0);
    QAAS_ASSERT_OK(layer);
    at::manual_seed(0);
    const at::Tensor x = at::randn({4, 16, (*ck)->config().hidden_size});
    auto observe = [&]() {
      std::map<std::string, at::Tensor> seen;
      (*model)->LayerForward(*layer, x, [&](const std::string& name, const at::Tensor& in) { seen[name] = in; });
      return seen;
    };
    const auto all = observe();
    const int experts = (*ck)->config().moe.num_experts;
    for (int e = 0; e < experts; ++e) {
      (*model)->set_observed_expert(e);
      const auto one = observe();
      (*model)->set_observed_expert(-1);
      const std::string stem = LinearNamesOf((*ck)->config())[4 + 3 * e];  // the expert's gate
      const std::string expert_prefix = stem.substr(0, stem.rfind('.') + 1);
      int own = 0;
      for (const auto& [name, in] : one) {
        if (name.rfind("self_attn.", 0) == 0) continue;  // attention runs as always
        EXPECT_EQ(name.rfind(expert_prefix, 0), 0u) << name << " observed while gathering expert " << e;
        ASSERT_TRUE(all.count(name)) << name;
        EXPECT_TRUE(in.equal(all.at(name))) << name;
        ++own;
      }
      EXPECT_EQ(own, 3) << "expert " << e << ": gate, up and down";
    }
    EXPECT_TRUE(observe().size() == all.size()) << "-1 runs the whole layer again";
  }
}

// A mixture of experts' router (and Qwen2-MoE's shared-expert gate) is a
// float linear: with the MLP input's activations quantized, the experts read
// the quantized input but routing reads the norm's output as it is, so
// every token goes to the experts the float layer sends it to.
TEST(MoeActivationTest, RoutingReadsTheUnquantizedInput) {
  for (const char* family : {"mixtral", "qwen2-moe", "qwen3-moe"}) {
    SCOPED_TRACE(family);
    auto ck = Checkpoint::Open(ReferencePath(std::string("families/") + family));
    QAAS_ASSERT_OK(ck);
    auto model = DecoderModel::Create(**ck, at::kCPU, 64);
    QAAS_ASSERT_OK(model);
    auto layer = (*model)->LoadLayer(0);
    QAAS_ASSERT_OK(layer);
    at::manual_seed(0);
    const at::Tensor x = at::randn({4, 16, (*ck)->config().hidden_size});
    const std::vector<std::string>& names = (*model)->LinearNames();
    // The tokens (rows of the MLP input) each expert's gate observes.
    auto routed = [&](const DecoderLayer& l) {
      std::map<std::string, int64_t> rows;
      (*model)->LayerForward(l, x, [&](const std::string& name, const at::Tensor& in) {
        for (int j : (*model)->ObserversOf(ActPoint::kMlpIn)) {
          if (name == names[j]) rows[name] = in.size(0);
        }
      });
      return rows;
    };
    DecoderLayer quantized = *layer;
    auto act = std::make_shared<LayerActQuant>();
    act->at(ActPoint::kMlpIn) = DynamicQuantizer(MustParse("W4A4").activations);  // coarse: routing would move
    quantized.act = act;
    EXPECT_EQ(routed(quantized), routed(*layer));
    EXPECT_GT(RelErr((*model)->LayerForward(*layer, x), (*model)->LayerForward(quantized, x)), 1e-3)
        << "the experts compute on the quantized input";
  }
}

TEST(OutlierModelTest, KeepsTheFunctionAndCreatesOutlierChannels) {
  ScopedTempDir tmp;
  RandomModelOptions m;
  m.tokenizer_text = kTinyText;
  m.dtype = "float32";
  QAAS_ASSERT_OK(WriteRandomLlama(m, tmp.path() + "/base"));
  OutlierOptions oo;
  oo.channels = 3;
  auto record = MakeOutlierModel(tmp.path() + "/base", tmp.path() + "/outliers", oo);
  QAAS_ASSERT_OK(record);
  ASSERT_EQ((*record)["channels"].size(), 3u);
  for (double f : (*record)["factors"]) {
    EXPECT_GE(f, 30);
    EXPECT_LE(f, 100);
  }
  EXPECT_TRUE(LocalPathExists(tmp.path() + "/outliers/qaas_outliers.json"));

  auto base_ck = Checkpoint::Open(tmp.path() + "/base");
  auto out_ck = Checkpoint::Open(tmp.path() + "/outliers");
  QAAS_ASSERT_OK(base_ck);
  QAAS_ASSERT_OK(out_ck);
  auto base = DecoderModel::Create(**base_ck, at::kCPU, 32);
  auto out = DecoderModel::Create(**out_ck, at::kCPU, 32);
  QAAS_ASSERT_OK(base);
  QAAS_ASSERT_OK(out);
  const at::Tensor ids = at::arange(32, at::TensorOptions().dtype(at::kLong)).remainder(m.vocab_size).view({1, 32});
  at::Tensor hb = (*base)->Embed(ids), ho = (*out)->Embed(ids);
  // Per-token 8-bit quantization of the attention input costs q_proj's
  // output far more on the outlier model (the outlier channels take the range).
  double err_base = 0, err_out = 0;
  auto q_error = [](const DecoderLayer& l, const at::Tensor& x) {
    const at::Tensor& w = l.linears[0].weight;
    return RelErr(at::linear(x, w), at::linear(FakeQuantizePerToken(x, 8, true), w));
  };
  for (int i = 0; i < m.num_layers; ++i) {
    DecoderLayer lb = *(*base)->LoadLayer(i), lo = *(*out)->LoadLayer(i);
    (*base)->AttentionForward(lb, hb, [&](const std::string& name, const at::Tensor& x) {
      if (name == "self_attn.q_proj") err_base += q_error(lb, x);
    });
    (*out)->AttentionForward(lo, ho, [&](const std::string& name, const at::Tensor& x) {
      if (name == "self_attn.q_proj") err_out += q_error(lo, x);
    });
    hb = (*base)->LayerForward(lb, hb);
    ho = (*out)->LayerForward(lo, ho);
  }
  EXPECT_LT(RelErr((*base)->Logits(hb), (*out)->Logits(ho)), 1e-5);
  EXPECT_GT(err_out, 3 * err_base);

  // Bad options are named.
  oo.channels = 0;
  auto bad = MakeOutlierModel(tmp.path() + "/base", tmp.path() + "/bad", oo);
  QAAS_EXPECT_CODE(bad, kInvalidArgument);
  EXPECT_TRUE(MessageHas(bad, "channels"));
}

}  // namespace
}  // namespace qaas::quant
