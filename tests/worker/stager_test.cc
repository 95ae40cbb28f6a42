// The worker's access to job uris: every file:// uri is opened beneath the
// allowed root that holds it, so a directory swapped for a symlink between
// submit and run cannot lead a read or a write outside the roots.
#include "worker/stager.h"

#include <filesystem>
#include <string>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace qaas::worker {
namespace {

namespace fs = std::filesystem;
using ::qaas::testing::ListLocalTree;
using ::qaas::testing::ReadLocalFile;
using ::qaas::testing::ScopedTempDir;
using ::qaas::testing::WriteLocalFile;

class StagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = dir_.path() + "/root";
    outside_ = dir_.path() + "/outside";
    cache_ = dir_.path() + "/cache";
    fs::create_directories(root_ + "/models/m");
    fs::create_directories(outside_ + "/m");
    fs::create_directories(cache_);
    WriteLocalFile(root_ + "/models/m/config.json", "inside");
    WriteLocalFile(outside_ + "/m/config.json", "outside");
    WriteLocalFile(outside_ + "/data.txt", "outside");
    WriteLocalFile(root_ + "/models/data.txt", "inside");
    roots_ = {root_};
  }

  // What an attacker with write access inside the root does after submit:
  // the directory the job names becomes a symlink to somewhere else.
  void SwapModelsForLinkOutside() {
    fs::rename(root_ + "/models", root_ + "/models.orig");
    fs::create_directory_symlink(outside_, root_ + "/models");
  }

  ScopedTempDir dir_;
  std::string root_, outside_, cache_;
  FileRoots roots_;
};

TEST_F(StagerTest, OpensFileUrisBeneathTheRootThatHoldsThem) {
  auto loc = OpenLocation("file://" + root_ + "/models/m", roots_);
  QAAS_ASSERT_OK(loc);
  EXPECT_EQ(loc->prefix, "models/m");
  EXPECT_EQ(loc->Key("config.json"), "models/m/config.json");
  auto whole = OpenLocation("file://" + root_, roots_);
  QAAS_ASSERT_OK(whole);
  EXPECT_EQ(whole->prefix, "");
  auto staged = StageDirectory("file://" + root_ + "/models/m", roots_, cache_);
  QAAS_ASSERT_OK(staged);
  EXPECT_EQ(ReadLocalFile(*staged + "/config.json"), "inside");
  auto file = StageFile("file://" + root_ + "/models/data.txt", roots_, cache_);
  QAAS_ASSERT_OK(file);
  EXPECT_EQ(ReadLocalFile(*file), "inside");
}

TEST_F(StagerTest, UrisUnderNoRootAreRefusedNamingThem) {
  auto loc = OpenLocation("file://" + outside_ + "/m", roots_);
  QAAS_EXPECT_CODE(loc, kPermissionDenied);
  EXPECT_TRUE(absl::StrContains(loc.status().message(), outside_)) << loc.status();
  QAAS_EXPECT_CODE(OpenLocation("file://" + root_ + "/m", {}), kPermissionDenied);
}

TEST_F(StagerTest, ARootGivenThroughASymlinkWorks) {
  fs::create_directory_symlink(root_, dir_.path() + "/root-link");
  // The uri through the link, the root resolved (as the server sends it).
  auto staged = StageDirectory("file://" + dir_.path() + "/root-link/models/m", roots_, cache_);
  QAAS_ASSERT_OK(staged);
  EXPECT_EQ(ReadLocalFile(*staged + "/config.json"), "inside");
  // The root given as the link, the uri through the real path.
  staged = StageDirectory("file://" + root_ + "/models/m", {dir_.path() + "/root-link"}, cache_);
  QAAS_ASSERT_OK(staged);
}

TEST_F(StagerTest, ADirectorySwappedAfterSubmitCannotRedirectReads) {
  SwapModelsForLinkOutside();
  auto staged = StageDirectory("file://" + root_ + "/models/m", roots_, cache_);
  QAAS_EXPECT_CODE(staged, kPermissionDenied);
  auto file = StageFile("file://" + root_ + "/models/data.txt", roots_, cache_);
  QAAS_EXPECT_CODE(file, kPermissionDenied);
  auto checkpoints = DownloadPrefix("file://" + root_ + "/models/m", roots_, "", dir_.path() + "/dl");
  QAAS_EXPECT_CODE(checkpoints, kPermissionDenied);
  // Nothing from outside reached the worker's cache.
  for (const auto& f : ListLocalTree(cache_)) EXPECT_EQ(f.find("config.json"), std::string::npos) << f;
}

TEST_F(StagerTest, ADirectorySwappedAfterSubmitCannotRedirectWrites) {
  const std::string local = dir_.path() + "/out";
  fs::create_directories(local + "/artifact");
  WriteLocalFile(local + "/artifact/model.safetensors", "weights");
  WriteLocalFile(local + "/report.json", "{}");
  SwapModelsForLinkOutside();
  const std::string uri = "file://" + root_ + "/models/job-output";
  QAAS_EXPECT_CODE(UploadDirectory(local, uri, roots_, {"report.json"}), kPermissionDenied);
  QAAS_EXPECT_CODE(UploadFiles(local, uri, roots_, {"report.json"}), kPermissionDenied);
  EXPECT_FALSE(fs::exists(outside_ + "/job-output"));
  EXPECT_EQ(ReadLocalFile(outside_ + "/m/config.json"), "outside");
}

TEST_F(StagerTest, SymlinksThatStayInsideARootKeepWorking) {
  fs::create_directory_symlink("models/m", root_ + "/current");
  auto staged = StageDirectory("file://" + root_ + "/current", roots_, cache_);
  QAAS_ASSERT_OK(staged);
  EXPECT_EQ(ReadLocalFile(*staged + "/config.json"), "inside");
}

// overwrite: once the job's files are up, what an earlier job left goes.
TEST_F(StagerTest, RemoveStaleLeavesExactlyTheJobsFiles) {
  const std::string local = dir_.path() + "/out";
  fs::create_directories(local + "/artifact");
  WriteLocalFile(local + "/artifact/model.safetensors", "new");
  WriteLocalFile(local + "/report.json", "{}");
  fs::create_directories(root_ + "/results/artifact");
  WriteLocalFile(root_ + "/results/artifact/stale.bin", "old");
  WriteLocalFile(root_ + "/results/report.md", "old");
  const std::string uri = "file://" + root_ + "/results";
  QAAS_ASSERT_OK(UploadDirectory(local, uri, roots_, {"report.json"}));
  auto removed = RemoveStale(local, uri, roots_);
  QAAS_ASSERT_OK(removed);
  EXPECT_EQ(*removed, 2);
  EXPECT_EQ(ListLocalTree(root_ + "/results"),
            (std::vector<std::string>{"artifact", "artifact/model.safetensors", "report.json"}));
}

}  // namespace
}  // namespace qaas::worker
