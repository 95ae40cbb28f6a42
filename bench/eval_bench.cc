// Perplexity evaluation against its FLOP roofline, in one run.
//
//   eval_bench [--model ../shared/models/stories260k] [--text ../shared/data/wikitext-2/test.txt]
//              [--seq_len 0] [--max_windows 0] [--batch_size 8] [--device cpu] [--threads 0]
//
// Runs a job as a worker would (RTN W8A16, no calibration) with one
// evaluation of `text`, so the report's evaluation time covers the float and
// the quantized model's forwards over every window and their scoring. The
// roofline is the work those forwards must do, at the rate of this machine's
// fp32 matrix products (one large GEMM, timed here): per token and layer the
// seven linears (2 x their weights) and causal attention (2 x 2 x hidden x
// the token's position + 1), plus the LM head (2 x hidden x vocab). Prints the
// evaluated tokens per second, the roofline's, and their ratio.
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "quant/model/checkpoint.h"
#include "quant/pipeline.h"
#include "quant/util/allocator.h"
#include "quant/util/device.h"

ABSL_FLAG(std::string, model, "../shared/models/stories260k", "Hugging Face model directory");
ABSL_FLAG(std::string, text, "../shared/data/wikitext-2/test.txt", "evaluation text");
ABSL_FLAG(int, seq_len, 0, "window length (0 = min(2048, context))");
ABSL_FLAG(int, max_windows, 0, "windows (0 = all)");
ABSL_FLAG(int, batch_size, 8, "windows per forward call");
ABSL_FLAG(std::string, device, "cpu", "cpu, cuda");
ABSL_FLAG(int, threads, 0, "CPU threads (ATen and OpenBLAS pools; 0 = the cores available to the process)");
ABSL_FLAG(std::string, work_dir, "/tmp/qaas-eval-bench", "the job's output directory");

namespace q = qaas::quant;

namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// fp32 GEMM rate of this machine: the best of a few 2048^3 products.
double GemmFlops(const at::Device& dev) {
  auto opts = at::TensorOptions().dtype(at::kFloat).device(dev);
  at::Tensor a = at::randn({2048, 2048}, opts), b = at::randn({2048, 2048}, opts), c = at::empty({2048, 2048}, opts);
  double best = 0;
  for (int i = 0; i < 4; ++i) {
    q::Synchronize(dev);
    auto t = Clock::now();
    at::mm_out(c, a, b);
    q::Synchronize(dev);
    best = std::max(best, 2.0 * 2048 * 2048 * 2048 / Seconds(t));
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  q::PrepareCpuRuntime(argv);  // first: may re-execute the process
  absl::ParseCommandLine(argc, argv);
  q::KeepTensorBuffersInTheHeap();
  const int threads = q::ConfigureCpuThreads(absl::GetFlag(FLAGS_threads));
  auto device = q::ResolveDevice(absl::GetFlag(FLAGS_device));
  if (!device.ok()) {
    std::fprintf(stderr, "eval_bench: %s\n", device.status().ToString().c_str());
    return 2;
  }
  auto ck = q::Checkpoint::Open(absl::GetFlag(FLAGS_model));
  if (!ck.ok()) {
    std::fprintf(stderr, "eval_bench: %s\n", ck.status().ToString().c_str());
    return 1;
  }
  const q::ModelConfig& c = (*ck)->config();

  q::PipelineOptions o;
  o.model_dir = absl::GetFlag(FLAGS_model);
  o.output_dir = absl::GetFlag(FLAGS_work_dir);
  std::filesystem::remove_all(o.output_dir);
  o.scheme = *q::ParseScheme("W8A16");
  o.recipe = {q::RecipeStep{"rtn"}};
  o.evaluations = {q::DatasetRef{absl::GetFlag(FLAGS_text), "text", absl::GetFlag(FLAGS_seq_len),
                                 absl::GetFlag(FLAGS_max_windows)}};
  o.device = device->str();
  o.batch_size = absl::GetFlag(FLAGS_batch_size);
  auto report = q::RunPipeline(o);
  if (!report.ok()) {
    std::fprintf(stderr, "eval_bench: %s\n", report.status().ToString().c_str());
    return 1;
  }
  const q::EvaluationReport& e = report->evaluations.at(0);
  const double T = e.seq_len, h = c.hidden_size, m = c.intermediate_size, V = c.vocab_size;
  const double kv = double(c.num_kv_heads) * c.head_dim, qd = double(c.num_heads) * c.head_dim;
  // Per token of a window, averaged over positions 0..T-1.
  const double linears = 2 * (h * qd + 2 * h * kv + qd * h + 3 * h * m);
  const double attention = 2 * 2 * qd * (T + 1) / 2;
  const double per_token = c.num_layers * (linears + attention) + 2 * h * V;
  const double tokens = 2.0 * e.windows * T;  // the float and the quantized model
  const double gemm = GemmFlops(*device);
  const double actual_tok_s = tokens / report->seconds_evaluation;
  const double roof_tok_s = gemm / per_token;
  std::printf("%s, %d threads; %s: %d layers, hidden %d, %d heads of %d, vocab %d\n", device->str().c_str(), threads,
              o.model_dir.c_str(), c.num_layers, c.hidden_size, c.num_heads, c.head_dim, c.vocab_size);
  std::printf("evaluation: %d windows of %d tokens, float and quantized: %.0f tokens in %.2f s = %.0f tokens/s "
              "(perplexity %.4f / %.4f)\n",
              e.windows, e.seq_len, tokens, report->seconds_evaluation, actual_tok_s, e.perplexity_original,
              e.perplexity_quantized);
  std::printf("roofline: %.2f MFLOP per token at the fp32 GEMM rate %.1f GFLOP/s = %.0f tokens/s; ratio %.3f\n",
              per_token / 1e6, gemm / 1e9, roof_tok_s, actual_tok_s / roof_tok_s);
  return 0;
}
