// Overhead of simulated activation / KV-cache quantization over the float
// forward of one LLaMA decoder layer.
//
//   act_quant_bench [--hidden 1024] [--intermediate 2816] [--heads 16] [--kv_heads 16]
//                   [--batch 4] [--seq_len 512] [--repeats 5] [--device cpu]
//
// Times LlamaLayerForward on [batch, seq_len, hidden] random inputs with
// random weights, float and under each activation scheme (the weights stay
// float: fake-quantized weights cost the same as float ones), and prints
// tokens/s and the ratio to the float forward, measured in one run; then
// per-token fake quantization alone, the fused kernel against the ATen
// formula. Each figure is the best of `repeats` after one warm-up.
#include <ATen/ATen.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "quant/formats/act_quant.h"
#include "quant/model/llama.h"
#include "quant/scheme.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace q = qaas::quant;

void Sync(const at::Device& d) {
  if (d.is_cuda()) at::zeros({1}, at::TensorOptions().device(d)).cpu();
}

std::shared_ptr<const q::LayerActQuant> Dynamic(const std::string& scheme) {
  q::Scheme s = *q::ParseScheme(scheme);
  q::LayerActQuant act;
  for (auto& a : act.inputs) a = q::DynamicQuantizer(s.activations);
  act.kv = q::DynamicQuantizer(s.kv_cache);
  return std::make_shared<const q::LayerActQuant>(act);
}

}  // namespace

int main(int argc, char** argv) {
  int hidden = 1024, intermediate = 2816, heads = 16, kv_heads = 16, batch = 4, seq_len = 512, repeats = 5;
  std::string device = "cpu";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (flag == "--hidden") hidden = v;
    else if (flag == "--intermediate") intermediate = v;
    else if (flag == "--heads") heads = v;
    else if (flag == "--kv_heads") kv_heads = v;
    else if (flag == "--batch") batch = v;
    else if (flag == "--seq_len") seq_len = v;
    else if (flag == "--repeats") repeats = v;
    else if (flag == "--device") device = argv[i + 1];
    else {
      std::fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  const at::Device dev(device);
  auto opts = at::TensorOptions().dtype(at::kFloat).device(dev);
  q::ModelConfig c;
  c.architecture = "llama";
  c.hidden_size = hidden;
  c.intermediate_size = intermediate;
  c.num_heads = heads;
  c.num_kv_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.max_position_embeddings = seq_len;
  const int64_t hd = c.head_dim;
  at::manual_seed(0);
  q::LlamaLayer layer;
  layer.input_norm = at::ones({hidden}, opts);
  layer.post_norm = at::ones({hidden}, opts);
  const std::vector<std::pair<int64_t, int64_t>> shapes = {
      {heads * hd, hidden}, {kv_heads * hd, hidden}, {kv_heads * hd, hidden}, {hidden, heads * hd},
      {intermediate, hidden}, {intermediate, hidden}, {hidden, intermediate}};
  for (const auto& [out, in] : shapes) layer.linears.push_back({at::randn({out, in}, opts) / std::sqrt(in), {}});
  q::Rope rope(c, seq_len, dev);
  const at::Tensor x = at::randn({batch, seq_len, hidden}, opts);

  // RPTQ-like static per-channel parameters (the cost of a broadcast scale/zero).
  q::TensorQuant a4 = q::ParseScheme("W4A4")->activations;
  q::LayerActQuant per_channel;
  const std::vector<int64_t> widths = {hidden, heads * hd, hidden, intermediate};
  for (int p = 0; p < q::kNumActPoints; ++p) {
    per_channel.inputs[p] = q::StaticPerChannelQuantizer(a4, -at::ones({widths[p]}, opts) * 3, at::ones({widths[p]}, opts) * 3);
  }
  per_channel.kv = q::DynamicQuantizer(q::ParseScheme("W4A4KV4")->kv_cache);

  struct Case {
    std::string name;
    std::shared_ptr<const q::LayerActQuant> act;
  };
  const std::vector<Case> cases = {
      {"float", nullptr},
      {"A8 per-token", Dynamic("W4A8")},
      {"A4 KV4 per-token", Dynamic("W4A4KV4")},
      {"A4 static per-channel (RPTQ) KV4", std::make_shared<const q::LayerActQuant>(per_channel)},
      {"A fp8 e4m3 per-tensor", Dynamic("W4Afp8")},
      {"A mxint8", Dynamic("Wmxint4Amxint8")},
      {"A mxfp4", Dynamic("Wmxfp4Amxfp4")},
      {"A mxfp6 e3m2 KV mxfp8", Dynamic("Wmxfp6Amxfp6KVmxfp8")},
  };
  std::printf("layer hidden=%d intermediate=%d heads=%d/%d tokens=%d (batch %d x %d) device=%s\n", hidden,
              intermediate, heads, kv_heads, batch * seq_len, batch, seq_len, device.c_str());
  std::printf("%-36s %12s %10s\n", "activations", "tokens/s", "vs float");
  // The best of `repeats` timings of f() after one warm-up.
  auto best_of = [&](auto&& f) {
    double best = 1e30;
    for (int r = 0; r <= repeats; ++r) {
      Sync(dev);
      auto t0 = Clock::now();
      at::Tensor y = f();
      Sync(dev);
      const double s = std::chrono::duration<double>(Clock::now() - t0).count();
      if (r > 0 && s < best) best = s;  // r == 0 warms up
    }
    return best;
  };
  double float_seconds = 0;
  for (const auto& k : cases) {
    layer.act = k.act;
    const double best = best_of([&] { return q::LlamaLayerForward(layer, c, rope, x); });
    if (!k.act) float_seconds = best;
    std::printf("%-36s %12.0f %9.2fx\n", k.name.c_str(), batch * seq_len / best, best / float_seconds);
  }

  // Per-token integer fake quantization alone, on the MLP's hidden state
  // [tokens, intermediate]: FakeQuantizePerToken (the fused CPU kernel where
  // it applies) against the ATen formula it replaces. Same bits; the ratio is
  // the figure to read.
  const at::Tensor h = at::randn({batch * seq_len, intermediate}, opts);
  for (const bool symmetric : {true, false}) {
    const double fused = best_of([&] { return q::FakeQuantizePerToken(h, 8, symmetric); });
    const double formula = best_of([&] { return q::FakeQuantizePerTokenFormula(h, 8, symmetric); });
    std::printf("per-token 8-bit %s on [%d, %d]: %.2f ms, formula %.2f ms: %.1fx faster\n",
                symmetric ? "symmetric" : "asymmetric", batch * seq_len, intermediate, fused * 1e3, formula * 1e3,
                formula / fused);
  }
  return 0;
}
