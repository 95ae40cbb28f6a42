#include "storage/sha256.h"

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace qaas::storage {
namespace {

using ::qaas::testing::PatternData;
using ::qaas::testing::ScopedTempDir;
using ::qaas::testing::WriteLocalFile;

// Test vectors from FIPS 180-4 examples (NIST CSRC "SHA256.pdf") and the
// well-known digest of the empty string.
constexpr char kEmpty[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
constexpr char kAbc[] = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
constexpr char kTwoBlock[] = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";
constexpr char kMillionA[] = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";

TEST(Sha256HexTest, MatchesKnownVectors) {
  EXPECT_EQ(Sha256Hex(""), kEmpty);
  EXPECT_EQ(Sha256Hex("abc"), kAbc);
  EXPECT_EQ(Sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"), kTwoBlock);
  EXPECT_EQ(Sha256Hex(std::string(1000000, 'a')), kMillionA);
}

TEST(Sha256HexTest, HashesEveryByte) {
  EXPECT_NE(Sha256Hex(std::string("a\0b", 3)), Sha256Hex(std::string("a\0c", 3)));
  EXPECT_NE(Sha256Hex(std::string("a\0b", 3)), Sha256Hex("a"));
}

TEST(Sha256FileTest, MatchesInMemoryDigest) {
  ScopedTempDir dir;
  WriteLocalFile(dir.path() + "/empty", "");
  WriteLocalFile(dir.path() + "/abc", "abc");
  absl::StatusOr<std::string> empty = Sha256File(dir.path() + "/empty");
  QAAS_ASSERT_OK(empty);
  EXPECT_EQ(*empty, kEmpty);
  absl::StatusOr<std::string> abc = Sha256File(dir.path() + "/abc");
  QAAS_ASSERT_OK(abc);
  EXPECT_EQ(*abc, kAbc);
  // Several read chunks, the last one partial, and one exactly a chunk.
  for (size_t size : {size_t{(3 << 20) + 7}, size_t{1 << 20}}) {
    const std::string data = PatternData(size, 5);
    WriteLocalFile(dir.path() + "/big", data);
    absl::StatusOr<std::string> big = Sha256File(dir.path() + "/big");
    QAAS_ASSERT_OK(big);
    EXPECT_EQ(*big, Sha256Hex(data)) << size;
  }
}

TEST(Sha256FileTest, MissingFileIsNotFoundNamingThePath) {
  absl::StatusOr<std::string> got = Sha256File("/nonexistent/qaas/file");
  QAAS_EXPECT_CODE(got, kNotFound);
  EXPECT_NE(got.status().message().find("/nonexistent/qaas/file"), absl::string_view::npos)
      << got.status();
}

}  // namespace
}  // namespace qaas::storage
