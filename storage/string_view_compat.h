// Debian's Abseil 20220623 is built with ABSL_OPTION_USE_STD_STRING_VIEW=0:
// absl::string_view is its own class and converts neither to nor from
// std::string_view. The storage interfaces take std::string_view; these two
// functions cross over explicitly. With an Abseil that aliases
// std::string_view they are identity functions.
#ifndef QAAS_STORAGE_STRING_VIEW_COMPAT_H_
#define QAAS_STORAGE_STRING_VIEW_COMPAT_H_

#include <string_view>

#include "absl/strings/string_view.h"

namespace qaas::storage {

inline absl::string_view ToAbsl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}
inline std::string_view ToStd(absl::string_view s) { return std::string_view(s.data(), s.size()); }

}  // namespace qaas::storage

#endif  // QAAS_STORAGE_STRING_VIEW_COMPAT_H_
