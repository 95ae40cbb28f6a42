// Helpers for the quant/ tests: status-message checks and paths of the
// reference data. Header-only and torch-free.
#ifndef QAAS_TESTS_QUANT_QUANT_TEST_UTIL_H_
#define QAAS_TESTS_QUANT_QUANT_TEST_UTIL_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace qaas::quant {

// Passes when the status is an error whose message contains `needle`.
inline ::testing::AssertionResult MessageHas(const absl::Status& status, absl::string_view needle) {
  if (status.ok()) return ::testing::AssertionFailure() << "status is OK, wanted an error naming '" << needle << "'";
  if (absl::StrContains(status.message(), needle)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "message of " << status << " does not contain '" << needle << "'";
}
template <typename T>
::testing::AssertionResult MessageHas(const absl::StatusOr<T>& s, absl::string_view needle) {
  return MessageHas(s.status(), needle);
}

inline std::string ReferencePath(absl::string_view name) {
  return std::string(QAAS_SOURCE_DIR) + "/tests/data/" + std::string(name);
}

inline std::string Stories260kDir() { return ::qaas::testing::SharedDir() + "/models/stories260k"; }
inline std::string TinyStoriesPath() {
  return ::qaas::testing::SharedDir() + "/data/tinystories/valid-sample.txt";
}

// Text for training the tokenizers of random test models.
inline const char* kTinyText =
    "Once upon a time there was a little girl named Lily. She liked to play in the park with her "
    "dog. One day the sun was hot and Lily was happy. The dog ran to the tree and Lily ran after "
    "him. They played all day and then they went home to eat cake with mom and dad.\n";

}  // namespace qaas::quant

#endif  // QAAS_TESTS_QUANT_QUANT_TEST_UTIL_H_
