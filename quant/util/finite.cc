#include "quant/util/finite.h"

#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"

namespace qaas::quant {

absl::Status CheckFinite(const at::Tensor& t, absl::StatusCode code, const std::string& what) {
  if (!t.defined() || !at::is_floating_point(t)) return absl::OkStatus();
  // A NaN or an infinity anywhere makes the sum NaN or infinite, so a finite
  // sum clears the tensor in one read. A sum that overflowed from finite
  // values is told apart by the exact count below.
  if (std::isfinite(t.sum().item<double>())) return absl::OkStatus();
  const int64_t finite = at::isfinite(t).sum().item<int64_t>();
  if (finite == t.numel()) return absl::OkStatus();
  return absl::Status(code, absl::StrCat(what, " has ", t.numel() - finite, " non-finite values (NaN or Inf) of ",
                                         t.numel()));
}

}  // namespace qaas::quant
