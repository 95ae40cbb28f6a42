// Causal attention on the CPU: the small-head kernel against chunked matrix
// products, by head dimension, in one run.
//
//   attention_bench [--heads 64] [--seq_len 512] [--head_dims 4,8,16,32,64] [--reps 5] [--threads 0]
//
// For each head dimension: the best of `reps` calls of each form on the same
// random q, k, v [heads, seq_len, hd], their ratio (chunked / kernel: above 1
// the kernel is faster; CausalAttention takes it up to kSmallHeadMaxDim),
// and their largest difference relative to the output's largest value. Above
// kSmallHeadMaxDim, the chunked form's rate in GFLOP/s of the causal
// triangle's products (2 x 2 x hd per query-key pair).
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "quant/model/llama.h"
#include "quant/model/small_head_attention.h"
#include "quant/util/device.h"

ABSL_FLAG(int, heads, 64, "heads times windows (the batch of heads)");
ABSL_FLAG(int, seq_len, 512, "tokens per window");
ABSL_FLAG(std::string, head_dims, "4,8,16,32,64", "head dimensions to time");
ABSL_FLAG(int, reps, 5, "calls of each form; the best counts");
ABSL_FLAG(int, threads, 0, "CPU threads (0 = the cores available to the process)");

namespace q = qaas::quant;

namespace {

using Clock = std::chrono::steady_clock;

template <typename F>
double BestSeconds(int reps, F f) {
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t = Clock::now();
    f();
    best = std::min(best, std::chrono::duration<double>(Clock::now() - t).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  q::PrepareCpuRuntime(argv);  // first: may re-execute the process
  absl::ParseCommandLine(argc, argv);
  const int threads = q::ConfigureCpuThreads(absl::GetFlag(FLAGS_threads));
  const int64_t BH = absl::GetFlag(FLAGS_heads), T = absl::GetFlag(FLAGS_seq_len);
  const int reps = std::max(1, absl::GetFlag(FLAGS_reps));
  if (!q::SmallHeadAttentionAvailable()) {
    std::printf("this CPU lacks AVX2/FMA: the small-head kernel does not run here\n");
    return 0;
  }
  std::printf("cpu, %d threads; %lld heads x %lld tokens, causal\n", threads, static_cast<long long>(BH),
              static_cast<long long>(T));
  std::printf("%6s %12s %12s %10s %14s\n", "hd", "chunked ms", "kernel ms", "ratio", "max rel diff");
  for (const auto& part : absl::StrSplit(absl::GetFlag(FLAGS_head_dims), ',')) {
    int hd = 0;
    if (!absl::SimpleAtoi(part, &hd) || hd <= 0) {
      std::fprintf(stderr, "attention_bench: head dimension '%s' is not a positive integer\n",
                   std::string(part).c_str());
      return 2;
    }
    at::manual_seed(hd);
    const at::Tensor qt = at::randn({BH, T, hd}), kt = at::randn({BH, T, hd}), vt = at::randn({BH, T, hd});
    const float inf = std::numeric_limits<float>::infinity();
    const at::Tensor mask = at::full({T, T}, -inf).triu(1);
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    at::Tensor a, b;
    const double chunked = BestSeconds(reps, [&] { a = q::ChunkedCausalAttention(qt, kt, vt, mask, 0, scale); });
    const double flops = 2.0 * 2.0 * BH * hd * T * (T + 1) / 2;  // the causal triangle's products
    if (hd > q::kSmallHeadMaxDim) {
      std::printf("%6d %12.2f %12s %10s %14s   (chunked: %.0f GFLOP/s of causal work; above kSmallHeadMaxDim)\n", hd,
                  chunked * 1e3, "-", "-", "-", flops / chunked / 1e9);
      continue;
    }
    const double kernel = BestSeconds(reps, [&] { b = q::SmallHeadCausalAttention(qt, kt, vt, 0, scale); });
    const double diff = ((a - b).abs().max() / a.abs().max()).item<double>();
    std::printf("%6d %12.2f %12.2f %10.2f %14.2e\n", hd, chunked * 1e3, kernel * 1e3, chunked / kernel, diff);
  }
  return 0;
}
