#include "quant/eval/perplexity.h"

#include <cmath>

namespace qaas::quant {

double NllSum::perplexity() const { return tokens > 0 ? std::exp(nll / static_cast<double>(tokens)) : 0; }

NllSum WindowsNll(const at::Tensor& hidden, const at::Tensor& windows,
                  const std::function<at::Tensor(const at::Tensor&)>& logits) {
  NllSum out;
  const int64_t n = hidden.size(0), T = hidden.size(1);
  at::Tensor ids = windows.to(hidden.device());
  for (int64_t i = 0; i < n; ++i) {
    at::Tensor logp = at::log_softmax(logits(hidden[i].narrow(0, 0, T - 1)).to(at::kDouble), -1);
    at::Tensor target = ids[i].narrow(0, 1, T - 1).unsqueeze(1);
    out.nll -= logp.gather(1, target).sum().item<double>();
    out.tokens += T - 1;
  }
  return out;
}

}  // namespace qaas::quant
