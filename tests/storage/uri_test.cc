#include "storage/uri.h"

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace qaas::storage {
namespace {

bool Contains(const absl::Status& status, const std::string& text) {
  return status.message().find(text) != absl::string_view::npos;
}

TEST(ParseUriTest, ParsesFileUris) {
  absl::StatusOr<Uri> uri = ParseUri("file:///var/qaas/store");
  QAAS_ASSERT_OK(uri);
  EXPECT_EQ(*uri, (Uri{"file", "", "/var/qaas/store"}));
  uri = ParseUri("FILE:///a//b/./c/../d/");
  QAAS_ASSERT_OK(uri);
  EXPECT_EQ(*uri, (Uri{"file", "", "/a/b/d"}));
  uri = ParseUri("file:///");
  QAAS_ASSERT_OK(uri);
  EXPECT_EQ(uri->path, "/");
}

TEST(ParseUriTest, RejectsFileUrisWithAHost) {
  absl::StatusOr<Uri> uri = ParseUri("file://server/share/x");
  QAAS_EXPECT_CODE(uri, kInvalidArgument);
  EXPECT_TRUE(Contains(uri.status(), "'server'")) << uri.status();
  EXPECT_TRUE(Contains(uri.status(), "file:///")) << uri.status();
}

TEST(ParseUriTest, RejectsFileUrisWithoutAPath) {
  QAAS_EXPECT_CODE(ParseUri("file://"), kInvalidArgument);
}

TEST(ParseUriTest, ParsesS3Uris) {
  absl::StatusOr<Uri> uri = ParseUri("s3://my-bucket/models//llama/");
  QAAS_ASSERT_OK(uri);
  EXPECT_EQ(*uri, (Uri{"s3", "my-bucket", "models/llama"}));
  uri = ParseUri("s3://my.bucket");
  QAAS_ASSERT_OK(uri);
  EXPECT_EQ(*uri, (Uri{"s3", "my.bucket", ""}));
  uri = ParseUri("s3://bucket/");
  QAAS_ASSERT_OK(uri);
  EXPECT_EQ(uri->path, "");
}

TEST(ParseUriTest, RejectsBadS3Uris) {
  for (const char* text : {"s3://", "s3:///prefix", "s3://Bucket/x", "s3://ab/x", "s3://b_c_d/x",
                           "s3://-bucket/x", "s3://bucket/../x"}) {
    SCOPED_TRACE(text);
    absl::StatusOr<Uri> uri = ParseUri(text);
    QAAS_EXPECT_CODE(uri, kInvalidArgument);
    EXPECT_TRUE(Contains(uri.status(), text)) << uri.status();
  }
}

TEST(ParseUriTest, ParsesOtherSchemesGenerically) {
  absl::StatusOr<Uri> uri = ParseUri("gs://bucket/a/b");
  QAAS_ASSERT_OK(uri);
  EXPECT_EQ(*uri, (Uri{"gs", "bucket", "/a/b"}));
}

TEST(ParseUriTest, RejectsTextThatIsNotAUri) {
  for (const char* text : {"", "/abs/path", "relative", "://x", "1abc://x", "fi le://x"}) {
    SCOPED_TRACE(text);
    QAAS_EXPECT_CODE(ParseUri(text), kInvalidArgument);
  }
  QAAS_EXPECT_CODE(ParseUri(std::string("file:///a\0b", 11)), kInvalidArgument);
}

TEST(NormalizeKeyTest, CollapsesDotsAndSlashes) {
  const std::pair<const char*, const char*> cases[] = {
      {"a/b/c", "a/b/c"},
      {"a//b///c", "a/b/c"},
      {"./a/./b/.", "a/b"},
      {"a/b/../c", "a/c"},
      {"a/b/c/", "a/b/c"},
      {"a/..", ""},
      {"", ""},
      {".", ""},
      {"a/../b/../c", "c"},
      {"..a/b..", "..a/b.."},
      {"a/.../b", "a/.../b"},
  };
  for (const auto& [key, want] : cases) {
    absl::StatusOr<std::string> got = NormalizeKey(key);
    QAAS_ASSERT_OK(got);
    EXPECT_EQ(*got, want) << "key " << key;
  }
}

TEST(NormalizeKeyTest, RejectsKeysNamingTheirProblem) {
  for (const char* key :
       {"/etc/passwd", "/", "..", "../x", "a/../../b", "a/b/../../..", "./../x"}) {
    SCOPED_TRACE(key);
    absl::StatusOr<std::string> got = NormalizeKey(key);
    QAAS_EXPECT_CODE(got, kInvalidArgument);
    EXPECT_TRUE(Contains(got.status(), key)) << got.status();
  }
  absl::StatusOr<std::string> nul = NormalizeKey(std::string("a\0b", 3));
  QAAS_EXPECT_CODE(nul, kInvalidArgument);
  EXPECT_TRUE(Contains(nul.status(), "a\\x00b")) << nul.status();
  EXPECT_TRUE(Contains(nul.status(), "NUL")) << nul.status();
}

TEST(JoinKeyTest, JoinsWithOneSlash) {
  EXPECT_EQ(JoinKey("a/b", "c"), "a/b/c");
  EXPECT_EQ(JoinKey("a/b/", "/c"), "a/b/c");
  EXPECT_EQ(JoinKey("", "c/d"), "c/d");
  EXPECT_EQ(JoinKey("a", ""), "a");
  EXPECT_EQ(JoinKey("", ""), "");
}

TEST(NormalizeLocalPathTest, NormalisesAbsolutePaths) {
  const std::pair<const char*, const char*> cases[] = {
      {"/", "/"},         {"//", "/"},           {"/a/b", "/a/b"}, {"/a//b/", "/a/b"},
      {"/a/./b", "/a/b"}, {"/a/b/../c", "/a/c"}, {"/..", "/"},     {"/../a", "/a"},
  };
  for (const auto& [path, want] : cases) {
    absl::StatusOr<std::string> got = NormalizeLocalPath(path);
    QAAS_ASSERT_OK(got);
    EXPECT_EQ(*got, want) << "path " << path;
  }
  QAAS_EXPECT_CODE(NormalizeLocalPath("a/b"), kInvalidArgument);
  QAAS_EXPECT_CODE(NormalizeLocalPath(""), kInvalidArgument);
}

TEST(PathIsWithinTest, ComparesWholeComponents) {
  EXPECT_TRUE(PathIsWithin("/a/b", "/a/b"));
  EXPECT_TRUE(PathIsWithin("/a/b/c", "/a/b"));
  EXPECT_TRUE(PathIsWithin("/a/b/c/d", "/a/b/"));
  EXPECT_TRUE(PathIsWithin("/a", "/"));
  EXPECT_TRUE(PathIsWithin("/", "/"));
  EXPECT_FALSE(PathIsWithin("/a/bc", "/a/b"));
  EXPECT_FALSE(PathIsWithin("/a", "/a/b"));
  EXPECT_FALSE(PathIsWithin("/x/b", "/a/b"));
  EXPECT_FALSE(PathIsWithin("/a/b-c", "/a/b"));
}

TEST(QuoteForMessageTest, EscapesControlBytesOnly) {
  EXPECT_EQ(QuoteForMessage("a/b c"), "'a/b c'");
  EXPECT_EQ(QuoteForMessage(std::string("a\0\n", 3)), "'a\\x00\\x0a'");
  EXPECT_EQ(QuoteForMessage("caf\xc3\xa9"), "'caf\xc3\xa9'");
}

}  // namespace
}  // namespace qaas::storage
