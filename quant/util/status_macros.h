// The two status macros qaas uses (Debian's Abseil 20220623 has no public
// ones) and Annotate. Header-only, Abseil-only.
#ifndef QAAS_QUANT_UTIL_STATUS_MACROS_H_
#define QAAS_QUANT_UTIL_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

#define QAAS_STATUS_CONCAT_INNER_(a, b) a##b
#define QAAS_STATUS_CONCAT_(a, b) QAAS_STATUS_CONCAT_INNER_(a, b)

// Returns the status from the current function when it is not OK.
#define QAAS_RETURN_IF_ERROR(expr)                      \
  do {                                                  \
    const ::absl::Status qaas_status_ = (expr);         \
    if (!qaas_status_.ok()) return qaas_status_;        \
  } while (0)

// `QAAS_ASSIGN_OR_RETURN(auto x, StatusOrExpr());`
#define QAAS_ASSIGN_OR_RETURN(lhs, expr) \
  QAAS_ASSIGN_OR_RETURN_IMPL_(QAAS_STATUS_CONCAT_(qaas_statusor_, __LINE__), lhs, expr)
#define QAAS_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(*tmp)

namespace qaas {

// `status` with "<context>: " before its message and the same code (OK stays
// OK): says where an error from below happened, e.g. Annotate(s, path).
inline absl::Status Annotate(const absl::Status& status, absl::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

}  // namespace qaas

#endif  // QAAS_QUANT_UTIL_STATUS_MACROS_H_
