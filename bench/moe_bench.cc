// One mixture-of-experts layer of Mixtral-8x7B's shape (hidden 4096, 8
// experts of 14336, top-2, 32 heads over 8 KV heads), quantized by the
// pipeline exactly as a job runs it, on a reduced calibration set.
//
//   moe_bench --work_dir DIR --tokenizer FILE --calib FILE
//             [--hidden 4096 --intermediate 14336 --experts 8 --top_k 2]
//             [--samples 8 --seq_len 256] [--recipe gptq --scheme W4A16g128]
//             [--dtype bfloat16] [--device auto]
//
// Writes a random one-layer Mixtral of the shape to DIR/model, runs the job
// and prints, per routed expert: the calibration tokens routed to it, its
// wall time (its two true-sequential groups: gathering their inputs, then
// quantizing), the quantizer's share of that, and the matmul floor of the
// same work, which is what calibrating an expert cannot do without: one
// pass of its routed tokens through its three linears plus its two Hessian
// products (X^T X of gate/up's input and of down's), as plain fp32 at::matmul
// calls on the device, and, for GPTQ, its factorisations and lazy-batch
// updates (the same for every expert; quant/gf compares the quantizer's
// seconds with it). Then the layer's wall time against the sum of those
// floors plus one pass of every token through attention's four linears, and
// the job's peak host (device) memory against the layer's float weights and
// against one expert's weights plus its two Hessians: experts are quantized
// one after another, so the Hessians held at once are one expert's.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "quant/model/random_model.h"
#include "quant/pipeline.h"
#include "quant/scheme.h"
#include "quant/util/allocator.h"
#include "quant/util/device.h"

ABSL_FLAG(std::string, work_dir, "/tmp/qaas-moe-bench", "model and job output go here");
ABSL_FLAG(std::string, calib, "", "calibration text (e.g. ../shared/data/wikitext2/train.txt)");
ABSL_FLAG(std::string, tokenizer, "", "tokenizer.model to copy into the synthetic model");
ABSL_FLAG(int, hidden, 4096, "hidden_size");
ABSL_FLAG(int, intermediate, 14336, "each expert's intermediate size");
ABSL_FLAG(int, experts, 8, "experts per layer");
ABSL_FLAG(int, top_k, 2, "experts per token");
ABSL_FLAG(int, heads, 32, "attention heads");
ABSL_FLAG(int, kv_heads, 8, "KV heads");
ABSL_FLAG(int, vocab, 32000, "vocabulary (at least the tokenizer's)");
ABSL_FLAG(std::string, dtype, "bfloat16", "the checkpoint's dtype on disk");
ABSL_FLAG(int, samples, 8, "calibration windows");
ABSL_FLAG(int, seq_len, 256, "calibration window length");
ABSL_FLAG(std::string, recipe, "gptq", "recipe, methods joined with '+'");
ABSL_FLAG(std::string, scheme, "W4A16g128", "scheme");
ABSL_FLAG(std::string, device, "auto", "cpu, cuda, cuda:N or auto");
ABSL_FLAG(int, threads, 0, "CPU threads for quantization and evaluation (ATen and OpenBLAS pools; 0 = the cores available to the process)");

namespace {

namespace q = qaas::quant;
using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
constexpr double kMiB = 1024.0 * 1024.0;

// Seconds of `fn`: one warm-up call, then the best of three.
template <typename Fn>
double TimeCall(const at::Device& dev, Fn fn) {
  fn();
  q::Synchronize(dev);
  double best = 1e30;
  for (int i = 0; i < 3; ++i) {
    auto t0 = Clock::now();
    fn();
    q::Synchronize(dev);
    best = std::min(best, Seconds(t0));
  }
  return best;
}

// The matmuls calibrating one expert cannot avoid, for `tokens` routed tokens.
double ExpertFloor(int64_t tokens, int64_t h, int64_t m, const at::Device& dev) {
  if (tokens == 0) return 0;
  auto opts = at::TensorOptions().dtype(at::kFloat).device(dev);
  at::Tensor x = at::randn({tokens, h}, opts), hidden = at::randn({tokens, m}, opts);
  at::Tensor w_in = at::randn({m, h}, opts), w_out = at::randn({h, m}, opts);
  return TimeCall(dev, [&] {
    at::matmul(x, w_in.t());       // gate
    at::matmul(x, w_in.t());       // up
    at::matmul(hidden, w_out.t());  // down
    at::matmul(x.t(), x);           // gate/up's Hessian
    at::matmul(hidden.t(), hidden);  // down's Hessian
  });
}

// GPTQ's own work on one expert, which no token count changes: factorising
// its two Hessians (gate/up's [h, h], down's [m, m]: Cholesky, inverse, and
// the upper factor of the inverse) and the lazy-batch updates of its three
// weights, blocks of 128 columns. Timed once: it is seconds at full size.
double GptqFloor(int64_t h, int64_t m, const at::Device& dev) {
  auto opts = at::TensorOptions().dtype(at::kFloat).device(dev);
  auto factor = [&](int64_t in) {
    at::Tensor x = at::randn({2 * in, in}, opts);
    at::Tensor H = at::matmul(x.t(), x) / (2.0 * in);
    H.diagonal().add_(0.01);
    q::Synchronize(dev);
    const auto t0 = Clock::now();
    at::Tensor hinv = at::linalg_cholesky(at::cholesky_inverse(at::linalg_cholesky(H)), /*upper=*/true);
    q::Synchronize(dev);
    return std::make_pair(Seconds(t0), hinv);
  };
  auto updates = [&](int64_t out, int64_t in, const at::Tensor& hinv) {
    at::Tensor w = at::randn({out, in}, opts);
    q::Synchronize(dev);
    const auto t0 = Clock::now();
    for (int64_t i1 = 0; i1 + 128 < in; i1 += 128) {
      at::Tensor err = at::randn({out, 128}, opts);
      w.narrow(1, i1 + 128, in - i1 - 128).sub_(at::matmul(err, hinv.narrow(0, i1, 128).narrow(1, i1 + 128, in - i1 - 128)));
    }
    q::Synchronize(dev);
    return Seconds(t0);
  };
  auto [f_h, hinv_h] = factor(h);
  double s = f_h + 2 * updates(m, h, hinv_h);  // gate, up
  hinv_h = at::Tensor();
  auto [f_m, hinv_m] = factor(m);
  return s + f_m + updates(h, m, hinv_m);  // down
}

}  // namespace

int main(int argc, char** argv) {
  q::PrepareCpuRuntime(argv);  // first: may re-execute the process
  absl::ParseCommandLine(argc, argv);
  std::setvbuf(stdout, nullptr, _IOLBF, 0);  // figures as they come, also into a file
  q::KeepTensorBuffersInTheHeap();
  q::ConfigureCpuThreads(absl::GetFlag(FLAGS_threads));
  auto device = q::ResolveDevice(absl::GetFlag(FLAGS_device));
  if (!device.ok()) {
    std::fprintf(stderr, "moe_bench: %s\n", device.status().ToString().c_str());
    return 2;
  }
  if (absl::GetFlag(FLAGS_calib).empty() || absl::GetFlag(FLAGS_tokenizer).empty()) {
    std::fprintf(stderr, "moe_bench: --calib and --tokenizer are required\n");
    return 2;
  }
  auto scheme = q::ParseScheme(absl::GetFlag(FLAGS_scheme));
  if (!scheme.ok()) {
    std::fprintf(stderr, "moe_bench: %s\n", scheme.status().ToString().c_str());
    return 2;
  }
  const int64_t h = absl::GetFlag(FLAGS_hidden), m = absl::GetFlag(FLAGS_intermediate);
  const int experts = absl::GetFlag(FLAGS_experts);
  const int samples = absl::GetFlag(FLAGS_samples), seq_len = absl::GetFlag(FLAGS_seq_len);
  const std::string work = absl::GetFlag(FLAGS_work_dir), model_dir = work + "/model";
  std::printf("device %s (%s libtorch), %d CPU threads; one layer: hidden %ld, %d experts of %ld, top-%d, "
              "%d heads / %d KV, %s on disk; calibration %d x %d tokens; %s %s\n",
              device->str().c_str(), q::BuiltWithCuda() ? "CUDA" : "CPU-only", at::get_num_threads(),
              static_cast<long>(h), experts, static_cast<long>(m), absl::GetFlag(FLAGS_top_k),
              absl::GetFlag(FLAGS_heads), absl::GetFlag(FLAGS_kv_heads), absl::GetFlag(FLAGS_dtype).c_str(), samples,
              seq_len, absl::GetFlag(FLAGS_recipe).c_str(), scheme->ToString().c_str());

  std::filesystem::remove_all(work);
  q::RandomModelOptions mo;
  mo.hidden_size = static_cast<int>(h);
  mo.intermediate_size = static_cast<int>(m);
  mo.num_layers = 1;
  mo.num_heads = absl::GetFlag(FLAGS_heads);
  mo.num_kv_heads = absl::GetFlag(FLAGS_kv_heads);
  mo.vocab_size = absl::GetFlag(FLAGS_vocab);
  mo.max_position_embeddings = std::max(2048, seq_len);
  mo.tie_word_embeddings = false;
  mo.dtype = absl::GetFlag(FLAGS_dtype);
  mo.num_experts = experts;
  mo.experts_per_token = absl::GetFlag(FLAGS_top_k);
  mo.tokenizer_model = absl::GetFlag(FLAGS_tokenizer);
  auto t0 = Clock::now();
  if (auto st = q::WriteRandomLlama(mo, model_dir); !st.ok()) {
    std::fprintf(stderr, "moe_bench: %s\n", st.ToString().c_str());
    return 1;
  }
  std::printf("wrote the model in %.1f s\n", Seconds(t0));

  q::PipelineOptions o;
  o.model_dir = model_dir;
  o.output_dir = work + "/job";
  o.scheme = *scheme;
  o.recipe.clear();
  for (auto method : absl::StrSplit(absl::GetFlag(FLAGS_recipe), '+')) o.recipe.push_back({std::string(method)});
  o.calibration = q::DatasetRef{absl::GetFlag(FLAGS_calib), "calibration", seq_len, 0};
  o.num_samples = samples;
  o.device = device->str();
  // Wall time per expert: from its start to the next expert's (the last:
  // to the end of quantizing, when "calibrating" the next layer's inputs begins).
  std::map<int, double> expert_s;
  int current = 0;
  Clock::time_point started = Clock::now(), layer_start = Clock::now();
  double layer_s = 0;
  o.on_progress = [&](const q::PipelineProgress& p) {
    if (p.step == "loading") layer_start = Clock::now();
    if (current > 0 && (p.num_experts > 0 || p.step == "calibrating")) expert_s[current] = Seconds(started);
    if (p.num_experts > 0) {
      std::fprintf(stderr, "expert %d/%d of layer %d/%d: %s\n", p.expert, p.num_experts, p.layer + 1,
                   p.num_layers, p.step.c_str());
      current = p.expert;
      started = Clock::now();
    } else if (p.step == "calibrating") {
      current = 0;
    }
    if (p.step == "layer done") layer_s = Seconds(layer_start);
  };
  auto report = q::RunPipeline(o);
  if (!report.ok()) {
    std::fprintf(stderr, "moe_bench: %s\n", report.status().ToString().c_str());
    return 1;
  }

  // Per expert, from the report: routed tokens and the quantizer's seconds.
  std::map<int, int64_t> tokens;
  std::map<int, double> quant_s;
  for (const q::LayerReport& l : report->layers) {
    const size_t at = l.name.find(".experts.");
    if (at == std::string::npos) continue;
    const int e = std::stoi(l.name.substr(at + 9)) + 1;
    if (l.name.find(".w1") != std::string::npos) tokens[e] = l.calibration_tokens;
    quant_s[e] += l.seconds;
  }
  const bool gptq = absl::StrContains(absl::GetFlag(FLAGS_recipe), "gptq");
  const double gptq_floor = gptq ? GptqFloor(h, m, *device) : 0;
  std::printf("\n%-7s %8s %9s %9s %10s %10s %8s %9s\n", "expert", "tokens", "wall s", "quant s", "tokens fl", "gptq fl",
              "/floor", "quant/gf");
  double floor_sum = 0, wall_sum = 0;
  for (int e = 1; e <= experts; ++e) {
    const double tokens_floor = ExpertFloor(tokens[e], h, m, *device), floor_s = tokens_floor + gptq_floor;
    floor_sum += floor_s;
    wall_sum += expert_s[e];
    std::printf("%-7d %8ld %9.2f %9.2f %10.3f %10.3f %7.1fx %8.2fx\n", e, static_cast<long>(tokens[e]), expert_s[e],
                quant_s[e], tokens_floor, gptq_floor, floor_s > 0 ? expert_s[e] / floor_s : 0.0,
                gptq_floor > 0 ? quant_s[e] / gptq_floor : 0.0);
  }
  // Attention's four linears, one pass of every calibration token.
  const int64_t all = int64_t{samples} * seq_len, kv = h / mo.num_heads * mo.num_kv_heads;
  auto opts = at::TensorOptions().dtype(at::kFloat).device(*device);
  at::Tensor x = at::randn({all, h}, opts), wq = at::randn({h, h}, opts), wkv = at::randn({kv, h}, opts);
  const double attention_floor = TimeCall(*device, [&] {
    at::matmul(x, wq.t());
    at::matmul(x, wkv.t());
    at::matmul(x, wkv.t());
    at::matmul(x, wq.t());
  });
  std::printf("experts: %.1f s wall over %.2f s floor (%.1fx)\n", wall_sum, floor_sum, wall_sum / floor_sum);
  std::printf("layer: %.1f s wall (report: calibration %.1f s, quantization %.1f s) over %.2f s floor (%.1fx; "
              "attention's linears one pass %.2f s)\n",
              layer_s, report->seconds_calibration, report->seconds_quantization, floor_sum + attention_floor,
              layer_s / (floor_sum + attention_floor), attention_floor);
  const double expert_weights = 3.0 * h * m * 4 / kMiB, hessians = (double(h) * h + double(m) * m) * 4 / kMiB;
  const double layer_weights = (experts * 3.0 * h * m + 2.0 * h * h + 2.0 * h * kv) * 4 / kMiB;
  auto mib = [](std::optional<uint64_t> b) { return b ? static_cast<double>(*b) / kMiB : -1.0; };
  std::printf("peak host %.0f MiB, peak device %.0f MiB; the layer's fp32 weights %.0f MiB; one expert's fp32 weights "
              "%.0f MiB + its Hessians %.0f MiB = %.0f MiB\n",
              mib(report->peak_host_memory_bytes), mib(report->peak_device_reserved_bytes), layer_weights,
              expert_weights, hessians, expert_weights + hessians);
  const double peak = device->is_cuda() ? mib(report->peak_device_reserved_bytes) : mib(report->peak_host_memory_bytes);
  std::printf("peak over the layer's weights: %.2fx; what is left above twice the layer's weights (the float and "
              "quantized layers): %.0f MiB = %.2f x (one expert's weights + Hessians)\n",
              peak / layer_weights, peak - 2 * layer_weights,
              (peak - 2 * layer_weights) / (expert_weights + hessians));
  return 0;
}
