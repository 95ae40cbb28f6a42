// Helpers shared by all qaas tests: status assertions, scratch
// directories and whole-file local I/O.
#ifndef QAAS_TESTS_TEST_UTIL_H_
#define QAAS_TESTS_TEST_UTIL_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"

namespace qaas::testing {

inline const absl::Status& ToStatus(const absl::Status& status) { return status; }

// A config.json that submit-time validation parses (a small LLaMA, context
// 512), for tests whose model directory holds nothing else.
inline constexpr char kTestModelConfig[] =
    R"({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, )"
    R"("num_attention_heads": 4, "vocab_size": 256, "max_position_embeddings": 512})";
template <typename T>
const absl::Status& ToStatus(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

// Abseil 20220623 ships no status matchers. These evaluate `expr` once (a
// Status or StatusOr) and print the status on failure.
#define QAAS_STATUS_CHECK_(check, expr, want_code)                                \
  do {                                                                            \
    const ::absl::Status qaas_status_ = ::qaas::testing::ToStatus(expr); \
    check(qaas_status_.code(), want_code) << qaas_status_;                        \
  } while (false)
#define QAAS_EXPECT_OK(expr) QAAS_STATUS_CHECK_(EXPECT_EQ, expr, ::absl::StatusCode::kOk)
#define QAAS_ASSERT_OK(expr) QAAS_STATUS_CHECK_(ASSERT_EQ, expr, ::absl::StatusCode::kOk)
#define QAAS_EXPECT_CODE(expr, code_name) \
  QAAS_STATUS_CHECK_(EXPECT_EQ, expr, ::absl::StatusCode::code_name)

// A new empty directory under the test temp dir; the caller removes it.
std::string MakeTempDir();

// Owns a MakeTempDir() directory and removes it, recursively, on destruction.
class ScopedTempDir {
 public:
  ScopedTempDir() : path_(MakeTempDir()) {}
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;
  ~ScopedTempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Whole-file local I/O; failures are reported as test failures.
void WriteLocalFile(const std::string& path, const std::string& data);
std::string ReadLocalFile(const std::string& path);
bool LocalPathExists(const std::string& path);

// Every path below `dir` (files, directories and symlinks), relative to it,
// sorted.
std::vector<std::string> ListLocalTree(const std::string& dir);

// `size` pseudo-random bytes, the same for the same seed.
std::string PatternData(size_t size, unsigned seed);

// ../shared beside the checkout (real model and data), or "" when absent.
std::string SharedDir();
#define QAAS_REQUIRE_SHARED()                                                   \
  if (::qaas::testing::SharedDir().empty()) {                                   \
    GTEST_SKIP() << "../shared is absent beside the checkout: test needs its data"; \
  }

}  // namespace qaas::testing

#endif  // QAAS_TESTS_TEST_UTIL_H_
