// Negative log-likelihood of token windows from final hidden states.
#ifndef QAAS_QUANT_EVAL_PERPLEXITY_H_
#define QAAS_QUANT_EVAL_PERPLEXITY_H_

#include <ATen/ATen.h>

#include <functional>

namespace qaas::quant {

struct NllSum {
  double nll = 0;      // summed over predicted positions
  int64_t tokens = 0;  // predicted positions
  double perplexity() const;
};

// hidden: [windows, seq, hidden] after the last decoder layer; windows: the
// token ids [windows, seq]. Every position but the last predicts the next
// token of its window. `logits` maps final hidden states [positions, hidden]
// to float32 logits [positions, vocab] (the model's final norm and head).
// Computed a window at a time in float64 log-softmax.
NllSum WindowsNll(const at::Tensor& hidden, const at::Tensor& windows,
                  const std::function<at::Tensor(const at::Tensor&)>& logits);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_EVAL_PERPLEXITY_H_
