#ifndef QAAS_QUANT_UTIL_FINITE_H_
#define QAAS_QUANT_UTIL_FINITE_H_

#include <ATen/ATen.h>

#include <string>

#include "absl/status/status.h"

namespace qaas::quant {

// A non-finite value (NaN or Inf) anywhere in `t`: an error with `code`
// saying how many and what `what` is. A wrong number is never a result.
// Integer and undefined tensors are fine. One read of `t` when it is finite.
absl::Status CheckFinite(const at::Tensor& t, absl::StatusCode code, const std::string& what);

}  // namespace qaas::quant

#endif  // QAAS_QUANT_UTIL_FINITE_H_
