// GPTQ time per layer at LLaMA-7B shapes against its floor.
//
//   gptq_bench [--samples 128] [--seq_len 2048] [--bits 4] [--group 128] [--device cpu]
//
// For W of 4096x4096 and 11008x4096 (out x in) it accumulates the Hessian
// from samples x seq_len random correlated tokens (timed on its own: that is
// calibration, not GPTQ), then times QuantizeGptq and, as its floor, the
// matrix work GPTQ cannot avoid: the Cholesky factorisations of H and H^-1
// and the lazy-batch updates W[:, i2:] -= Err1 Hinv[i1:i2, i2:] (as plain
// matmuls of the same shapes). Prints one line per shape with the ratio.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "quant/methods/gptq.h"

namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

void Sync(const at::Device& d) {
  if (d.is_cuda()) at::zeros({1}, at::TensorOptions().device(d)).cpu();  // waits for queued work
}

}  // namespace

int main(int argc, char** argv) {
  int samples = 128, seq_len = 2048, bits = 4, group = 128;
  std::string device = "cpu";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--samples") samples = std::atoi(argv[i + 1]);
    else if (flag == "--seq_len") seq_len = std::atoi(argv[i + 1]);
    else if (flag == "--bits") bits = std::atoi(argv[i + 1]);
    else if (flag == "--group") group = std::atoi(argv[i + 1]);
    else if (flag == "--device") device = argv[i + 1];
    else {
      std::fprintf(stderr, "unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  const at::Device dev(device);
  auto opts = at::TensorOptions().dtype(at::kFloat).device(dev);
  at::Generator gen = at::detail::createCPUGenerator(0);
  qaas::quant::TensorQuant spec;
  spec.format = qaas::quant::NumberFormat::kInt;
  spec.bits = bits;
  spec.granularity = group > 0 ? qaas::quant::Granularity::kPerGroup : qaas::quant::Granularity::kPerChannel;
  spec.group_size = group;
  std::printf("device %s, threads %d, Hessian from %d x %d tokens, W%dA16%s\n", device.c_str(),
              at::get_num_threads(), samples, seq_len, bits, group > 0 ? ("g" + std::to_string(group)).c_str() : "");
  const int64_t in = 4096;
  // Correlated inputs: a fixed random mixing of independent features.
  at::Tensor mix = (at::randn({in, in}, gen, at::TensorOptions().dtype(at::kFloat)) / 64.0 + at::eye(in)).to(dev);
  auto t0 = Clock::now();
  qaas::quant::HessianAccumulator acc(in, dev);
  for (int s = 0; s < samples; ++s) {
    acc.Add(at::matmul(at::randn({seq_len, in}, gen, at::TensorOptions().dtype(at::kFloat)).to(dev), mix));
  }
  Sync(dev);
  const double hessian_s = Seconds(t0);
  std::printf("hessian accumulation (calibration, once per input): %.2f s\n", hessian_s);

  for (int64_t out : {int64_t{4096}, int64_t{11008}}) {
    at::Tensor W = (at::randn({out, in}, gen, at::TensorOptions().dtype(at::kFloat)) * 0.02).to(dev);
    qaas::quant::GptqOptions o;
    Sync(dev);
    t0 = Clock::now();
    auto q = qaas::quant::QuantizeGptq(W, acc.H(), spec, o);
    Sync(dev);
    const double gptq_s = Seconds(t0);
    if (!q.ok()) {
      std::fprintf(stderr, "gptq failed: %s\n", std::string(q.status().message()).c_str());
      return 1;
    }
    // Floor: the factorisations and the lazy-batch matmuls, nothing else.
    at::Tensor H = acc.H().clone();
    H.diagonal().add_(0.01 * H.diagonal().mean().item<double>());
    Sync(dev);
    t0 = Clock::now();
    at::Tensor L = at::linalg_cholesky(H);
    at::Tensor Hinv = at::linalg_cholesky(at::cholesky_inverse(L), /*upper=*/true);
    for (int64_t i1 = 0; i1 < in; i1 += o.blocksize) {
      const int64_t i2 = std::min<int64_t>(i1 + o.blocksize, in);
      if (i2 < in) {
        at::Tensor err = at::randn({out, i2 - i1}, opts);
        W.narrow(1, i2, in - i2).sub_(at::matmul(err, Hinv.narrow(0, i1, i2 - i1).narrow(1, i2, in - i2)));
      }
    }
    Sync(dev);
    const double floor_s = Seconds(t0);
    std::printf("layer %5ldx%ld: gptq %.2f s, floor (cholesky + lazy-batch matmuls) %.2f s, ratio %.2fx\n",
                static_cast<long>(out), static_cast<long>(in), gptq_s, floor_s, gptq_s / floor_s);
  }
  return 0;
}
