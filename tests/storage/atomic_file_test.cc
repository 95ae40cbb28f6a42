#include "storage/atomic_file.h"

#include <cerrno>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "storage/posix_io.h"
#include "tests/test_util.h"

namespace qaas::storage {
namespace {

using ::qaas::testing::ListLocalTree;
using ::qaas::testing::ReadLocalFile;
using ::qaas::testing::ScopedTempDir;
using ::qaas::testing::WriteLocalFile;
using Names = std::vector<std::string>;

TEST(AtomicFileWriterTest, FileAppearsOnlyOnCommit) {
  ScopedTempDir dir;
  const std::string path = dir.path() + "/out";
  WriteLocalFile(path, "old");
  absl::StatusOr<std::unique_ptr<AtomicFileWriter>> writer =
      AtomicFileWriter::Create(path, "test file");
  QAAS_ASSERT_OK(writer);
  QAAS_ASSERT_OK((*writer)->Append("new "));
  QAAS_ASSERT_OK((*writer)->Append("data"));
  EXPECT_EQ(ReadLocalFile(path), "old");
  EXPECT_EQ(ListLocalTree(dir.path()).size(), 2u);  // "out" and the temp file
  for (const auto& name : ListLocalTree(dir.path())) EXPECT_TRUE(name == "out" || IsTempFileName(name)) << name;
  QAAS_ASSERT_OK((*writer)->Commit());
  EXPECT_EQ(ReadLocalFile(path), "new data");
  EXPECT_EQ(ListLocalTree(dir.path()), Names({"out"}));
  QAAS_EXPECT_CODE((*writer)->Append("more"), kFailedPrecondition);
}

TEST(AtomicFileWriterTest, AbandonedWriteLeavesNothing) {
  ScopedTempDir dir;
  {
    absl::StatusOr<std::unique_ptr<AtomicFileWriter>> writer =
        AtomicFileWriter::Create(dir.path() + "/out", "test file");
    QAAS_ASSERT_OK(writer);
    QAAS_ASSERT_OK((*writer)->Append("partial"));
  }
  EXPECT_EQ(ListLocalTree(dir.path()), Names{});
}

TEST(AtomicFileWriterTest, MissingDirectoryIsNotFound) {
  ScopedTempDir dir;
  QAAS_EXPECT_CODE(AtomicFileWriter::Create(dir.path() + "/no/such/out", "test file"), kNotFound);
}

TEST(ErrnoStatusTest, MapsCodesAndSaysWhatFailed) {
  const absl::Status full = ErrnoStatus(ENOSPC, "writing key 'k'");
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(full.message(), "writing key 'k': the disk is full (No space left on device)");
  EXPECT_EQ(ErrnoStatus(EDQUOT, "w").code(), absl::StatusCode::kResourceExhausted);
  const absl::Status missing = ErrnoStatus(ENOENT, "opening 'x'");
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.message(), "opening 'x': No such file or directory");
  EXPECT_EQ(ErrnoStatus(EACCES, "w").code(), absl::StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace qaas::storage
