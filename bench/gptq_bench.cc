// GPTQ at LLaMA-7B shapes against its floors, in one run.
//
//   gptq_bench [--samples 128] [--seq_len 2048] [--bits 4] [--group 128]
//              [--device cpu] [--threads 0] [--columns 4096]
//
// 1. Hessian accumulation (calibration, once per distinct linear input) of
//    samples x seq_len tokens of 4096 (--columns) correlated features: HessianAccumulator
//    against the GEMM rate of this machine (X^T X of one window as a plain
//    matmul, timed here). The accumulator's rate counts the flops of the
//    symmetric update it must do, tokens x 4096 x 4097 (what BLAS's syrk
//    does); its ratio to the GEMM rate is the figure to read. The windows are
//    made before the clock starts.
// 2. QuantizeGptq for W of 4096x4096 and 11008x4096 (out x in) against its
//    floor: the matrix work GPTQ cannot avoid, H^-1's upper Cholesky factor
//    (UpperCholeskyOfInverse: one factorisation and one triangular inverse;
//    the three-step way, factor H, invert, factor the inverse, is timed next
//    to it) and the lazy-batch updates W[:, i2:] -= Err1 Hinv[i1:i2, i2:]
//    (plain matmuls of the same shapes).
// --threads sizes ATen's and OpenBLAS's pools (0: the cores available), as
// the worker's --threads does.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "quant/methods/gptq.h"
#include "quant/util/device.h"

namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace

int main(int argc, char** argv) {
  qaas::quant::PrepareCpuRuntime(argv);  // first: may re-execute the process
  int samples = 128, seq_len = 2048, bits = 4, group = 128, threads = 0, columns = 4096;
  std::string device = "cpu";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--samples") samples = std::atoi(argv[i + 1]);
    else if (flag == "--seq_len") seq_len = std::atoi(argv[i + 1]);
    else if (flag == "--bits") bits = std::atoi(argv[i + 1]);
    else if (flag == "--group") group = std::atoi(argv[i + 1]);
    else if (flag == "--device") device = argv[i + 1];
    else if (flag == "--threads") threads = std::atoi(argv[i + 1]);
    else if (flag == "--columns") columns = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  threads = qaas::quant::ConfigureCpuThreads(threads);
  const at::Device dev(device);
  auto sync = [&] { qaas::quant::Synchronize(dev); };
  auto opts = at::TensorOptions().dtype(at::kFloat).device(dev);
  at::Generator gen = at::detail::createCPUGenerator(0);
  qaas::quant::TensorQuant spec;
  spec.format = qaas::quant::NumberFormat::kInt;
  spec.bits = bits;
  spec.granularity = group > 0 ? qaas::quant::Granularity::kPerGroup : qaas::quant::Granularity::kPerChannel;
  spec.group_size = group;
  std::printf("device %s, %d threads, Hessian from %d x %d tokens, W%dA16%s\n", device.c_str(), threads, samples,
              seq_len, bits, group > 0 ? ("g" + std::to_string(group)).c_str() : "");
  const int64_t in = columns;
  // Correlated inputs: a fixed random mixing of independent features. Four
  // distinct windows, cycled (the accumulator's cost does not depend on the
  // values).
  at::Tensor mix = (at::randn({in, in}, gen, at::TensorOptions().dtype(at::kFloat)) / 64.0 + at::eye(in)).to(dev);
  std::vector<at::Tensor> windows;
  for (int s = 0; s < std::min(samples, 4); ++s) {
    windows.push_back(at::matmul(at::randn({seq_len, in}, gen, at::TensorOptions().dtype(at::kFloat)).to(dev), mix));
  }

  // The GEMM rate: X^T X of one window, full product.
  at::Tensor G = at::empty({in, in}, opts);
  at::mm_out(G, windows[0].t(), windows[0]);  // warm-up
  sync();
  const int gemm_reps = 3;
  auto t0 = Clock::now();
  for (int r = 0; r < gemm_reps; ++r) at::mm_out(G, windows[r % windows.size()].t(), windows[r % windows.size()]);
  sync();
  const double gemm_gflops = gemm_reps * 2.0 * seq_len * in * in / Seconds(t0) / 1e9;

  t0 = Clock::now();
  qaas::quant::HessianAccumulator acc(in, dev);
  for (int s = 0; s < samples; ++s) acc.Add(windows[s % windows.size()]);
  const at::Tensor& H_acc = acc.H();
  sync();
  const double hessian_s = Seconds(t0);
  const double hessian_gflops = static_cast<double>(samples) * seq_len * in * (in + 1) / hessian_s / 1e9;
  std::printf("hessian (%s): %.2f s, %.1f GFLOP/s (symmetric-update flops); GEMM %.1f GFLOP/s; ratio %.2f\n",
              dev.is_cpu() && qaas::quant::HessianAccumulator::UsesBlasSyrk() ? "BLAS ssyrk" : "ATen panels",
              hessian_s, hessian_gflops, gemm_gflops, hessian_gflops / gemm_gflops);
  windows.clear();

  for (int64_t out : {int64_t{4096}, int64_t{11008}}) {
    at::Tensor W = (at::randn({out, in}, gen, at::TensorOptions().dtype(at::kFloat)) * 0.02).to(dev);
    qaas::quant::GptqOptions o;
    sync();
    t0 = Clock::now();
    auto q = qaas::quant::QuantizeGptq(W, H_acc, spec, o);
    sync();
    const double gptq_s = Seconds(t0);
    if (!q.ok()) {
      std::fprintf(stderr, "gptq failed: %s\n", std::string(q.status().message()).c_str());
      return 1;
    }
    // Floor: the factorisation and the lazy-batch matmuls, nothing else.
    at::Tensor H = H_acc.clone();
    H.diagonal().add_(0.01 * H.diagonal().mean().item<double>());
    // H^-1's upper factor as GPTQ's reference code gets it (factor H,
    // invert, factor the inverse) and as QuantizeGptq does (UpperCholeskyOfInverse).
    sync();
    t0 = Clock::now();
    const at::Tensor U_three = at::linalg_cholesky(at::cholesky_inverse(at::linalg_cholesky(H)), /*upper=*/true);
    sync();
    const double three_s = Seconds(t0);
    t0 = Clock::now();
    const at::Tensor Hinv = *qaas::quant::UpperCholeskyOfInverse(H);
    sync();
    const double reversed_s = Seconds(t0);
    std::printf("H^-1 factor %ldx%ld: cholesky, inverse, cholesky %.2f s; reversed cholesky + %s %.2f s (%.2fx); "
                "max |difference| / max |U| %.1e\n",
                static_cast<long>(in), static_cast<long>(in), three_s,
                dev.is_cpu() && qaas::quant::HasLapackTrtri() ? "LAPACK strtri" : "triangular solve", reversed_s,
                three_s / reversed_s, ((U_three - Hinv).abs().max() / U_three.abs().max()).item<double>());
    // The block errors' values do not matter to the time: made once, before
    // the clock (made inside it, their generation counted as floor).
    const at::Tensor errors = at::randn({out, o.blocksize}, opts);
    sync();
    t0 = Clock::now();
    for (int64_t i1 = 0; i1 < in; i1 += o.blocksize) {
      const int64_t i2 = std::min<int64_t>(i1 + o.blocksize, in);
      if (i2 < in) {
        const at::Tensor err = errors.narrow(1, 0, i2 - i1);
        W.narrow(1, i2, in - i2).sub_(at::matmul(err, Hinv.narrow(0, i1, i2 - i1).narrow(1, i2, in - i2)));
      }
    }
    sync();
    const double floor_s = reversed_s + Seconds(t0);
    std::printf("layer %5ldx%ld: gptq %.2f s, floor (H^-1 factor + lazy-batch matmuls) %.2f s, ratio %.2fx\n",
                static_cast<long>(out), static_cast<long>(in), gptq_s, floor_s, gptq_s / floor_s);
  }
  return 0;
}
