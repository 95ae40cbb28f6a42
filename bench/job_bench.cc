// Whole quantization jobs on a synthetic LLaMA-shaped model, against the
// matrix-multiply floor of the same shapes.
//
//   job_bench --work_dir DIR --calib FILE --tokenizer FILE [--eval FILE]
//             [--shape llama7b|small] [--layers N] [--dtype float16]
//             [--samples 128] [--seq_len 2048] [--eval_windows 16]
//             [--jobs gptq:W4A16g128,rtn:W4A16g128,smoothquant+rtn:W8A8]
//             [--device auto]
//
// Writes a random-weight model of the shape to DIR/model once (LLaMA-7B:
// 32 layers of 4096 x 11008, 32 heads, vocabulary 32000, fp16 on disk; the
// tokenizer file is copied, so only its pieces' ids occur), then runs each job
// through RunPipeline exactly as a worker would and prints, per job: total
// time, the per-layer time next to the layer's matmul floor, the report's
// calibration / quantization / evaluation split, peak host and device memory
// (report.json's "memory"), and evaluation throughput in tokens/s next to a
// plain fp16 (bf16 on the CPU) matmul roofline of the same shapes.
//
// The floor of a layer is one pass of its calibration tokens through its
// seven linears and its attention products (QK^T and PV), timed as plain
// at::matmul calls in the pipeline's compute dtype (fp32) on the device; a
// layer's work is at least four such passes (float and quantized forwards
// of the calibration stream, both models' evaluation forwards) plus the
// quantizer. The roofline is the same products per token in fp16, for all
// layers and the LM head.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "quant/model/random_model.h"
#include "quant/pipeline.h"
#include "quant/scheme.h"
#include "quant/util/allocator.h"
#include "quant/util/device.h"

ABSL_FLAG(std::string, work_dir, "/tmp/qaas-job-bench", "model and job outputs go here");
ABSL_FLAG(std::string, calib, "", "calibration text (e.g. ../shared/data/wikitext2/train.txt)");
ABSL_FLAG(std::string, eval, "", "evaluation text (default: none)");
ABSL_FLAG(std::string, tokenizer, "", "tokenizer.model to copy into the synthetic model");
ABSL_FLAG(std::string, shape, "llama7b", "llama7b, or small (a CPU-sized smoke run)");
ABSL_FLAG(int, layers, 0, "decoder layers (default: the shape's)");
ABSL_FLAG(std::string, dtype, "float16", "the checkpoint's dtype on disk");
ABSL_FLAG(int, samples, 128, "calibration windows");
ABSL_FLAG(int, seq_len, 2048, "calibration and evaluation window length");
ABSL_FLAG(int, eval_windows, 16, "evaluation windows per model");
ABSL_FLAG(std::string, jobs, "gptq:W4A16g128,rtn:W4A16g128,smoothquant+rtn:W8A8",
          "comma-separated recipe:scheme pairs; a recipe joins its methods with '+'");
ABSL_FLAG(std::string, device, "auto", "cpu, cuda, cuda:N or auto");
ABSL_FLAG(int, threads, 0, "CPU threads for quantization and evaluation (ATen and OpenBLAS pools; 0 = the cores available to the process)");
ABSL_FLAG(int, batch_size, 8, "windows per forward call");
ABSL_FLAG(bool, keep_outputs, false,
          "keep each job's artifact/ and checkpoints/ (at 7B: ~4 GB and ~27 GB per job); report.json is always kept");

namespace {

namespace q = qaas::quant;
using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

struct Shape {
  int hidden = 4096, intermediate = 11008, layers = 32, heads = 32, kv_heads = 32, vocab = 32000;
};

// Seconds of `fn` per call: one warm-up, then enough calls for ~0.2 s.
template <typename Fn>
double TimeCall(const at::Device& dev, Fn fn) {
  fn();
  q::Synchronize(dev);
  int calls = 0;
  auto t0 = Clock::now();
  do {
    fn();
    ++calls;
    q::Synchronize(dev);
  } while (Seconds(t0) < 0.2 && calls < 1000);
  return Seconds(t0) / calls;
}

struct PerToken {
  double layer_linears = 0;  // seconds per token through one layer's seven linears
  double layer_attention = 0;
  double head = 0;  // the LM head
  double layer() const { return layer_linears + layer_attention; }
};

// Plain products of the model's shapes, `rows` tokens at a time.
PerToken MatmulFloor(const Shape& s, at::ScalarType dtype, const at::Device& dev, int seq_len) {
  const int64_t rows = std::min<int64_t>(seq_len, 2048), hd = s.hidden / s.heads, kv = int64_t{s.kv_heads} * hd;
  auto opts = at::TensorOptions().dtype(dtype).device(dev);
  PerToken t;
  const std::vector<std::pair<int64_t, int64_t>> linears = {
      {s.hidden, s.hidden}, {kv, s.hidden},       {kv, s.hidden},      {s.hidden, s.hidden},
      {s.intermediate, s.hidden}, {s.intermediate, s.hidden}, {s.hidden, s.intermediate}};
  for (const auto& [out, in] : linears) {
    at::Tensor x = at::randn({rows, in}, opts), w = at::randn({out, in}, opts);
    t.layer_linears += TimeCall(dev, [&] { at::matmul(x, w.t()); }) / rows;
  }
  // Causal attention does half the square's work; plain products do all of it.
  at::Tensor qh = at::randn({s.heads, seq_len, hd}, opts), kh = at::randn({s.heads, seq_len, hd}, opts);
  at::Tensor p = at::randn({s.heads, seq_len, seq_len}, opts);
  t.layer_attention = TimeCall(dev, [&] {
                        at::matmul(qh, kh.transpose(1, 2));
                        at::matmul(p, kh);
                      }) / (2.0 * seq_len);
  at::Tensor x = at::randn({rows, s.hidden}, opts), head = at::randn({s.vocab, s.hidden}, opts);
  t.head = TimeCall(dev, [&] { at::matmul(x, head.t()); }) / rows;
  return t;
}

double LayerFlopsPerToken(const Shape& s, int seq_len) {
  const double h = s.hidden, kv = double(s.kv_heads) * (s.hidden / s.heads), m = s.intermediate;
  return 2 * (2 * h * h + 2 * kv * h + 3 * h * m) + 2 * seq_len * h;  // + causal attention's half square
}

std::string Mib(std::optional<uint64_t> b) {
  return b ? std::to_string(static_cast<long long>(*b / (1024 * 1024))) + " MiB" : std::string("n/a");
}

}  // namespace

int main(int argc, char** argv) {
  q::PrepareCpuRuntime(argv);  // first: may re-execute the process
  absl::ParseCommandLine(argc, argv);
  q::KeepTensorBuffersInTheHeap();
  q::ConfigureCpuThreads(absl::GetFlag(FLAGS_threads));
  auto device = q::ResolveDevice(absl::GetFlag(FLAGS_device));
  if (!device.ok()) {
    std::fprintf(stderr, "job_bench: %s\n", device.status().ToString().c_str());
    return 2;
  }
  if (absl::GetFlag(FLAGS_calib).empty() || absl::GetFlag(FLAGS_tokenizer).empty()) {
    std::fprintf(stderr, "job_bench: --calib and --tokenizer are required\n");
    return 2;
  }
  Shape shape;
  if (absl::GetFlag(FLAGS_shape) == "small") {
    shape = {512, 1376, 2, 8, 8, 32000};
  } else if (absl::GetFlag(FLAGS_shape) != "llama7b") {
    std::fprintf(stderr, "job_bench: --shape must be llama7b or small\n");
    return 2;
  }
  if (absl::GetFlag(FLAGS_layers) > 0) shape.layers = absl::GetFlag(FLAGS_layers);
  const int seq_len = absl::GetFlag(FLAGS_seq_len), samples = absl::GetFlag(FLAGS_samples);
  const std::string work = absl::GetFlag(FLAGS_work_dir), model_dir = work + "/model";

  std::printf("device %s (%s libtorch), %d CPU threads; model %d x (%d, %d), %d heads, vocab %d, %s\n",
              device->str().c_str(), q::BuiltWithCuda() ? "CUDA" : "CPU-only", at::get_num_threads(),
              shape.layers, shape.hidden, shape.intermediate, shape.heads, shape.vocab,
              absl::GetFlag(FLAGS_dtype).c_str());
  std::filesystem::remove_all(model_dir);
  q::RandomModelOptions mo;
  mo.hidden_size = shape.hidden;
  mo.intermediate_size = shape.intermediate;
  mo.num_layers = shape.layers;
  mo.num_heads = shape.heads;
  mo.num_kv_heads = shape.kv_heads;
  mo.vocab_size = shape.vocab;
  mo.max_position_embeddings = std::max(2048, seq_len);
  mo.tie_word_embeddings = false;
  mo.dtype = absl::GetFlag(FLAGS_dtype);
  mo.shards = std::max(1, shape.layers / 4);
  mo.tokenizer_model = absl::GetFlag(FLAGS_tokenizer);
  auto t0 = Clock::now();
  if (auto st = q::WriteRandomLlama(mo, model_dir); !st.ok()) {
    std::fprintf(stderr, "job_bench: %s\n", st.ToString().c_str());
    return 1;
  }
  std::printf("wrote the model in %.1f s\n", Seconds(t0));

  const PerToken fp32 = MatmulFloor(shape, at::kFloat, *device, seq_len);
  const at::ScalarType half = device->is_cuda() ? at::kHalf : at::kBFloat16;
  const PerToken roof = MatmulFloor(shape, half, *device, seq_len);
  const double calib_tokens = double(samples) * seq_len;
  const double flops = LayerFlopsPerToken(shape, seq_len);
  std::printf("matmul floor per layer, one pass of %.0f calibration tokens: fp32 %.3f s (%.1f TFLOP/s), %s %.3f s "
              "(%.1f TFLOP/s)\n",
              calib_tokens, fp32.layer() * calib_tokens, flops / fp32.layer() / 1e12, c10::toString(half),
              roof.layer() * calib_tokens, flops / roof.layer() / 1e12);
  const double roof_tokens_s = 1.0 / (shape.layers * roof.layer() + roof.head);
  std::printf("%s roofline of a whole forward: %.0f tokens/s\n\n", c10::toString(half), roof_tokens_s);
  std::printf("%-22s %9s %9s %9s %10s %9s %9s %9s %11s %12s %12s\n", "job", "total s", "layer s", "/floor",
              "calib s", "quant s", "eval s", "eval tok/s", "/roofline", "peak host", "peak device");

  for (auto job : absl::StrSplit(absl::GetFlag(FLAGS_jobs), ',', absl::SkipEmpty())) {
    std::vector<std::string> parts = absl::StrSplit(job, ':');
    auto scheme = parts.size() == 2 ? q::ParseScheme(parts[1]) : absl::InvalidArgumentError("want recipe:scheme");
    if (!scheme.ok()) {
      std::fprintf(stderr, "job_bench: %s: %s\n", std::string(job).c_str(), scheme.status().ToString().c_str());
      return 2;
    }
    q::PipelineOptions o;
    o.model_dir = model_dir;
    o.output_dir = absl::StrCat(work, "/", absl::StrReplaceAll(parts[0], {{"+", "-"}}), "-", parts[1]);
    std::filesystem::remove_all(o.output_dir);
    o.scheme = *scheme;
    o.recipe.clear();
    for (auto m : absl::StrSplit(parts[0], '+')) o.recipe.push_back({std::string(m)});
    o.calibration = q::DatasetRef{absl::GetFlag(FLAGS_calib), "calibration", seq_len, 0};
    o.num_samples = samples;
    if (!absl::GetFlag(FLAGS_eval).empty()) {
      o.evaluations.push_back({absl::GetFlag(FLAGS_eval), "evaluation", seq_len, absl::GetFlag(FLAGS_eval_windows)});
    }
    o.device = device->str();
    o.batch_size = absl::GetFlag(FLAGS_batch_size);
    std::vector<double> layer_s;
    Clock::time_point last = Clock::now();
    o.on_progress = [&](const q::PipelineProgress& p) {
      if (p.step == "layer done") {
        layer_s.push_back(Seconds(last));
        last = Clock::now();
      } else if (p.layer == 0 && p.step == "loading" && layer_s.empty()) {
        last = Clock::now();
      }
    };
    auto report = q::RunPipeline(o);
    if (!report.ok()) {
      std::fprintf(stderr, "job_bench: %s: %s\n", std::string(job).c_str(), report.status().ToString().c_str());
      return 1;
    }
    if (!absl::GetFlag(FLAGS_keep_outputs)) {
      std::filesystem::remove_all(o.output_dir + "/artifact");
      std::filesystem::remove_all(o.output_dir + "/checkpoints");
    }
    std::sort(layer_s.begin(), layer_s.end());
    const double median = layer_s.empty() ? 0 : layer_s[layer_s.size() / 2];
    double eval_tokens = 0;
    for (const q::EvaluationReport& e : report->evaluations) eval_tokens += 2.0 * e.windows * seq_len;
    const double eval_s = report->seconds_evaluation;
    const double eval_tok_s = eval_s > 0 ? eval_tokens / eval_s : 0;
    std::printf("%-22s %9.1f %9.2f %8.1fx %10.1f %9.1f %9.1f %10.0f %10.2fx %12s %12s\n",
                std::string(job).c_str(), report->seconds_total, median, median / (fp32.layer() * calib_tokens),
                report->seconds_calibration, report->seconds_quantization, eval_s, eval_tok_s,
                eval_tok_s / roof_tokens_s, Mib(report->peak_host_memory_bytes).c_str(),
                Mib(report->peak_device_reserved_bytes).c_str());
    std::fflush(stdout);
  }
  std::printf("\nlayer s: median per decoder layer; /floor: that over one fp32 pass of the calibration tokens "
              "through the layer's products (%.1f GiB of fp32 activations per pass)\n",
              calib_tokens * shape.hidden * 4 / kGiB);
  return 0;
}
