// One decoder layer of each architecture, for layer-level tests: a random
// LLaMA with grouped-query attention (4 heads, 2 KV heads), the tiny OPT
// checkpoint (LayerNorm and biases), and the families' tiny models
// (Llama 3, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3, Phi-3). Header-only.
#ifndef QAAS_TESTS_QUANT_LAYER_FIXTURE_H_
#define QAAS_TESTS_QUANT_LAYER_FIXTURE_H_

#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "quant/model/checkpoint.h"
#include "quant/model/decoder.h"
#include "quant/model/random_model.h"
#include "tests/quant/quant_test_util.h"
#include "tests/test_util.h"

namespace qaas::quant {

// Parameterised by "llama", "opt" or a family case name (tests/data/families):
// layer 0 of the model (a family's last layer), and inputs x_
// [4 windows, 16 tokens, hidden].
class ArchitectureLayerTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    std::string dir = TinyOptDir();
    if (family()) dir = ReferencePath("families/" + GetParam());
    if (GetParam() == "llama") {
      RandomModelOptions m;
      m.hidden_size = 64;
      m.intermediate_size = 96;
      m.num_heads = 4;
      m.num_kv_heads = 2;
      m.tokenizer_text = kTinyText;
      m.seed = 5;
      dir = tmp_.path() + "/llama";
      QAAS_ASSERT_OK(WriteRandomLlama(m, dir));
    }
    auto ck = Checkpoint::Open(dir);
    QAAS_ASSERT_OK(ck);
    ck_ = *std::move(ck);
    auto model = DecoderModel::Create(*ck_, at::kCPU, 64);
    QAAS_ASSERT_OK(model);
    model_ = *std::move(model);
    // The families' last layer: the one with a sliding window (8, shorter
    // than x_'s 16 tokens) where the family has one.
    auto layer = model_->LoadLayer(family() ? ck_->config().num_layers - 1 : 0);
    QAAS_ASSERT_OK(layer);
    layer_ = *std::move(layer);
    at::manual_seed(0);
    x_ = at::randn({4, 16, ck_->config().hidden_size});
  }
  const ModelConfig& config() const { return ck_->config(); }
  // A checked-in model of a LLaMA-like family (tests/data/families), made by
  // Transformers with the family's features on.
  bool family() const { return GetParam() != "llama" && GetParam() != "opt"; }

  ::qaas::testing::ScopedTempDir tmp_;
  std::unique_ptr<Checkpoint> ck_;
  std::unique_ptr<DecoderModel> model_;
  DecoderLayer layer_;
  at::Tensor x_;
};

}  // namespace qaas::quant

#endif  // QAAS_TESTS_QUANT_LAYER_FIXTURE_H_
