#include "storage/file_store.h"
#include "storage/s3_store.h"

#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "storage/beneath.h"
#include "storage/object_store.h"
#include "tests/storage/object_store_conformance.h"
#include "tests/test_util.h"

namespace qaas::storage {
namespace {

using ::qaas::storage::KeysOf;
using ::qaas::testing::ListLocalTree;
using ::qaas::testing::LocalPathExists;
using ::qaas::testing::MakeTempDir;
using ::qaas::testing::PatternData;
using ::qaas::testing::ReadLocalFile;
using ::qaas::testing::ScopedTempDir;
using ::qaas::testing::WriteLocalFile;
using Keys = std::vector<std::string>;

bool Contains(const absl::Status& status, const std::string& text) {
  return status.message().find(text) != absl::string_view::npos;
}

// The conformance suite's stores live in directories removed after the last
// test of the process.
class RemoveConformanceDirs : public ::testing::Environment {
 public:
  static void Add(std::string dir) {
    std::lock_guard<std::mutex> lock(mu_);
    dirs_.push_back(std::move(dir));
  }
  void TearDown() override {
    std::lock_guard<std::mutex> lock(mu_);
    for (const std::string& dir : dirs_) {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
    dirs_.clear();
  }

 private:
  static inline std::mutex mu_;
  static inline std::vector<std::string> dirs_;
};
::testing::Environment* const kRemoveConformanceDirs =
    ::testing::AddGlobalTestEnvironment(new RemoveConformanceDirs);

std::unique_ptr<ObjectStore> NewFileStore() {
  const std::string dir = MakeTempDir();
  RemoveConformanceDirs::Add(dir);
  // The root is one level down so that "outside the root" is a directory the
  // test owns.
  absl::StatusOr<std::unique_ptr<FileStore>> store = FileStore::Create(dir + "/root");
  if (!store.ok()) {
    ADD_FAILURE() << store.status();
    return nullptr;
  }
  return *std::move(store);
}

INSTANTIATE_TEST_SUITE_P(FileStore, ObjectStoreConformance,
                         ::testing::Values(ObjectStoreFactory(NewFileStore)));

class FileStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = dir_.path() + "/root";
    absl::StatusOr<std::unique_ptr<FileStore>> store = FileStore::Create(root_);
    QAAS_ASSERT_OK(store);
    store_ = *std::move(store);
  }

  // Every name below the root that is a temp file.
  std::vector<std::string> TempFilesUnder(const std::string& dir) {
    std::vector<std::string> temps;
    for (const std::string& path : ListLocalTree(dir)) {
      if (std::filesystem::path(path).filename().string().rfind(".qaas-tmp-", 0) == 0) {
        temps.push_back(path);
      }
    }
    return temps;
  }

  ScopedTempDir dir_;
  std::string root_;
  std::unique_ptr<FileStore> store_;
};

TEST_F(FileStoreTest, CreateRequiresAnAbsoluteRoot) {
  absl::StatusOr<std::unique_ptr<FileStore>> store = FileStore::Create("relative/dir");
  QAAS_EXPECT_CODE(store, kInvalidArgument);
  EXPECT_TRUE(Contains(store.status(), "relative/dir")) << store.status();
}

TEST_F(FileStoreTest, CreateMakesTheRootAndItsParents) {
  const std::string nested = dir_.path() + "/x/y/z";
  absl::StatusOr<std::unique_ptr<FileStore>> store = FileStore::Create(nested + "/");
  QAAS_ASSERT_OK(store);
  EXPECT_TRUE(std::filesystem::is_directory(nested));
  EXPECT_EQ((*store)->uri(), "file://" + nested);
}

TEST_F(FileStoreTest, CreateRejectsARootThatIsAFile) {
  WriteLocalFile(dir_.path() + "/file", "x");
  QAAS_EXPECT_CODE(FileStore::Create(dir_.path() + "/file"), kFailedPrecondition);
}

TEST_F(FileStoreTest, ObjectsArePlainFilesUnderTheRoot) {
  QAAS_ASSERT_OK(store_->Write("a/b/c.txt", "hello"));
  EXPECT_EQ(ReadLocalFile(root_ + "/a/b/c.txt"), "hello");
}

TEST_F(FileStoreTest, WritesLeaveNoTempFiles) {
  for (int i = 0; i < 5; ++i) {
    QAAS_ASSERT_OK(store_->Write("k", PatternData(1000 + i, i)));
    QAAS_ASSERT_OK(store_->Write("d/e/k", "v"));
  }
  const std::string src = dir_.path() + "/src";
  WriteLocalFile(src, PatternData(3 << 20, 7));
  QAAS_ASSERT_OK(store_->WriteFromFile("d/from_file", src));
  QAAS_ASSERT_OK(store_->ReadToFile("d/from_file", dir_.path() + "/copy"));
  EXPECT_EQ(ListLocalTree(root_), Keys({"d", "d/e", "d/e/k", "d/from_file", "k"}));
  EXPECT_EQ(TempFilesUnder(dir_.path()), Keys{});
}

TEST_F(FileStoreTest, FailedWriteLeavesOldValueAndNoTempFile) {
  QAAS_ASSERT_OK(store_->Write("k", "old"));
  // Reading a directory fails (EISDIR) after the temp file was created.
  std::filesystem::create_directory(dir_.path() + "/a_dir");
  const absl::Status status = store_->WriteFromFile("k", dir_.path() + "/a_dir");
  EXPECT_FALSE(status.ok());
  EXPECT_TRUE(Contains(status, "a_dir")) << status;
  absl::StatusOr<std::string> got = store_->Read("k");
  QAAS_ASSERT_OK(got);
  EXPECT_EQ(*got, "old");
  EXPECT_EQ(TempFilesUnder(root_), Keys{});
}

TEST_F(FileStoreTest, TempNamesAreHiddenAndReserved) {
  QAAS_ASSERT_OK(store_->Write("d/real", "r"));
  WriteLocalFile(root_ + "/.qaas-tmp-leftover", "partial");
  WriteLocalFile(root_ + "/d/.qaas-tmp-abc", "partial");
  absl::StatusOr<std::vector<ObjectInfo>> all = store_->List("");
  QAAS_ASSERT_OK(all);
  EXPECT_EQ(KeysOf(*all), Keys({"d/real"}));
  QAAS_EXPECT_CODE(store_->Read(".qaas-tmp-leftover"), kInvalidArgument);
  QAAS_EXPECT_CODE(store_->Write("d/.qaas-tmp-abc", "x"), kInvalidArgument);
  QAAS_EXPECT_CODE(store_->Delete(".qaas-tmp-leftover/x"), kInvalidArgument);
  // Ordinary hidden names are fine.
  QAAS_EXPECT_OK(store_->Write(".hidden", "h"));
}

TEST_F(FileStoreTest, EscapingKeysWriteNothingOutsideTheRoot) {
  const std::string src = dir_.path() + "/src";
  WriteLocalFile(src, "data");
  for (const char* key : {"../outside", "a/../../outside", "../root2/x"}) {
    QAAS_EXPECT_CODE(store_->Write(key, "data"), kInvalidArgument);
    QAAS_EXPECT_CODE(store_->WriteFromFile(key, src), kInvalidArgument);
  }
  EXPECT_EQ(ListLocalTree(dir_.path()), Keys({"root", "src"}));
}

TEST_F(FileStoreTest, RefusesSymlinkedDirectoryLeadingOutside) {
  const std::string outside = dir_.path() + "/outside";
  std::filesystem::create_directory(outside);
  WriteLocalFile(outside + "/secret", "secret");
  std::filesystem::create_directory_symlink(outside, root_ + "/link");

  const absl::Status write = store_->Write("link/x", "data");
  QAAS_EXPECT_CODE(write, kPermissionDenied);
  EXPECT_TRUE(Contains(write, "link/x")) << write;
  QAAS_EXPECT_CODE(store_->Write("link/sub/x", "data"), kPermissionDenied);
  QAAS_EXPECT_CODE(store_->Read("link/secret"), kPermissionDenied);
  QAAS_EXPECT_CODE(store_->ReadRange("link/secret", 0, 1), kPermissionDenied);
  QAAS_EXPECT_CODE(store_->Stat("link/secret"), kPermissionDenied);
  QAAS_EXPECT_CODE(store_->Delete("link/secret"), kPermissionDenied);
  QAAS_EXPECT_CODE(store_->ReadToFile("link/secret", dir_.path() + "/copy"), kPermissionDenied);
  QAAS_EXPECT_CODE(store_->List("link/"), kPermissionDenied);
  absl::StatusOr<std::vector<ObjectInfo>> all = store_->List("");
  QAAS_ASSERT_OK(all);
  EXPECT_EQ(KeysOf(*all), Keys{});
  // Nothing was created or removed outside.
  EXPECT_EQ(ListLocalTree(outside), Keys({"secret"}));
  EXPECT_FALSE(LocalPathExists(dir_.path() + "/copy"));
}

TEST_F(FileStoreTest, RefusesSymlinkedFileLeadingOutside) {
  WriteLocalFile(dir_.path() + "/secret", "secret");
  std::filesystem::create_symlink(dir_.path() + "/secret", root_ + "/leak");
  QAAS_EXPECT_CODE(store_->Read("leak"), kPermissionDenied);
  QAAS_EXPECT_CODE(store_->Stat("leak"), kPermissionDenied);
  absl::StatusOr<std::vector<ObjectInfo>> all = store_->List("");
  QAAS_ASSERT_OK(all);
  EXPECT_EQ(KeysOf(*all), Keys{});
}

TEST_F(FileStoreTest, FollowsSymlinksThatStayInside) {
  QAAS_ASSERT_OK(store_->Write("real/x", "x"));
  std::filesystem::create_directory_symlink("real", root_ + "/alias");
  std::filesystem::create_symlink("real/x", root_ + "/xlink");
  absl::StatusOr<std::string> got = store_->Read("alias/x");
  QAAS_ASSERT_OK(got);
  EXPECT_EQ(*got, "x");
  got = store_->Read("xlink");
  QAAS_ASSERT_OK(got);
  EXPECT_EQ(*got, "x");
  QAAS_ASSERT_OK(store_->Write("alias/y", "y"));
  EXPECT_EQ(ReadLocalFile(root_ + "/real/y"), "y");
  // Symlinked directories are not walked (they could form cycles); a
  // symlinked file inside the root is listed.
  absl::StatusOr<std::vector<ObjectInfo>> all = store_->List("");
  QAAS_ASSERT_OK(all);
  EXPECT_EQ(KeysOf(*all), Keys({"real/x", "real/y", "xlink"}));
}

// A directory the store has used is swapped for a symlink to outside (as an
// attacker with write access inside the root would, between a job's submit
// and its run): every later access through it is refused.
TEST_F(FileStoreTest, DirectorySwappedForASymlinkCannotRedirectAnyAccess) {
  QAAS_ASSERT_OK(store_->Write("models/m/config.json", "inside"));
  const std::string outside = dir_.path() + "/outside";
  std::filesystem::create_directories(outside + "/m");
  WriteLocalFile(outside + "/m/config.json", "outside");
  std::filesystem::rename(root_ + "/models", root_ + "/models.orig");
  std::filesystem::create_directory_symlink(outside, root_ + "/models");
  QAAS_EXPECT_CODE(store_->Read("models/m/config.json"), kPermissionDenied);
  QAAS_EXPECT_CODE(store_->Stat("models/m/config.json"), kPermissionDenied);
  QAAS_EXPECT_CODE(store_->List("models/m/"), kPermissionDenied);
  QAAS_EXPECT_CODE(store_->Write("models/m/config.json", "evil"), kPermissionDenied);
  QAAS_EXPECT_CODE(store_->Write("models/new/report.json", "evil"), kPermissionDenied);
  QAAS_EXPECT_CODE(store_->Delete("models/m/config.json"), kPermissionDenied);
  EXPECT_EQ(ListLocalTree(outside), Keys({"m", "m/config.json"}));
  EXPECT_EQ(ReadLocalFile(outside + "/m/config.json"), "outside");
}

// Without openat2 (old kernels, some seccomp policies) the walk refuses
// every symlink below the root, inside or not, and plain keys still work.
TEST_F(FileStoreTest, NoFollowWalkConfinesAndRefusesEverySymlink) {
  struct Restore {
    ~Restore() { ForceNoFollowWalkForTesting(false); }
  } restore;
  ForceNoFollowWalkForTesting(true);
  QAAS_ASSERT_OK(store_->Write("real/x", "x"));
  absl::StatusOr<std::string> got = store_->Read("real/x");
  QAAS_ASSERT_OK(got);
  EXPECT_EQ(*got, "x");
  std::filesystem::create_directory_symlink("real", root_ + "/alias");
  std::filesystem::create_directory_symlink(dir_.path(), root_ + "/up");
  const absl::Status inside = store_->Read("alias/x").status();
  QAAS_EXPECT_CODE(inside, kPermissionDenied);
  EXPECT_TRUE(Contains(inside, "symlink")) << inside;
  QAAS_EXPECT_CODE(store_->Write("alias/y", "y"), kPermissionDenied);
  QAAS_EXPECT_CODE(store_->Write("up/escaped", "y"), kPermissionDenied);
  EXPECT_FALSE(LocalPathExists(dir_.path() + "/escaped"));
  absl::StatusOr<std::vector<ObjectInfo>> all = store_->List("");
  QAAS_ASSERT_OK(all);
  EXPECT_EQ(KeysOf(*all), Keys({"real/x"}));
  QAAS_ASSERT_OK(store_->Delete("real/x"));
}

TEST_F(FileStoreTest, SpecialFilesAreRefusedNamingWhatTheyAre) {
  ASSERT_EQ(::mkfifo((root_ + "/pipe").c_str(), 0600), 0) << std::strerror(errno);
  const absl::Status read = store_->Read("pipe").status();
  QAAS_EXPECT_CODE(read, kFailedPrecondition);
  EXPECT_TRUE(Contains(read, "is a fifo, not a regular file")) << read;
  absl::StatusOr<std::vector<ObjectInfo>> all = store_->List("");
  QAAS_ASSERT_OK(all);
  EXPECT_EQ(KeysOf(*all), Keys{});
}

TEST_F(FileStoreTest, KeyCannotBeBothObjectAndDirectory) {
  QAAS_ASSERT_OK(store_->Write("a/b", "1"));
  QAAS_EXPECT_CODE(store_->Write("a", "2"), kFailedPrecondition);
  const absl::Status nested = store_->Write("a/b/c", "3");
  QAAS_EXPECT_CODE(nested, kFailedPrecondition);
  EXPECT_TRUE(Contains(nested, "a/b/c")) << nested;
  absl::StatusOr<std::string> got = store_->Read("a/b");
  QAAS_ASSERT_OK(got);
  EXPECT_EQ(*got, "1");
}

TEST_F(FileStoreTest, EmptyDirectoryInTheWayGivesWay) {
  // An empty directory, as a crash between mkdir and write could leave.
  std::filesystem::create_directories(root_ + "/a/b");
  QAAS_ASSERT_OK(store_->Write("a/b", "now an object"));
  EXPECT_EQ(ReadLocalFile(root_ + "/a/b"), "now an object");
}

TEST_F(FileStoreTest, FailedWriteRemovesTheDirectoriesItCreated) {
  const absl::Status status = store_->WriteFromFile("new/dirs/k", dir_.path() + "/missing");
  QAAS_EXPECT_CODE(status, kNotFound);
  QAAS_ASSERT_OK(store_->Write("x/y", "1"));
  const std::string src_dir = dir_.path() + "/a_dir";
  std::filesystem::create_directory(src_dir);
  EXPECT_FALSE(store_->WriteFromFile("x/new/deeper/k", src_dir).ok());  // read fails: EISDIR
  EXPECT_EQ(ListLocalTree(root_), Keys({"x", "x/y"}));
}

TEST_F(FileStoreTest, DeleteRemovesEmptyParentDirectories) {
  QAAS_ASSERT_OK(store_->Write("x/y/z", "1"));
  QAAS_ASSERT_OK(store_->Write("x/keep", "2"));
  QAAS_ASSERT_OK(store_->Delete("x/y/z"));
  EXPECT_EQ(ListLocalTree(root_), Keys({"x", "x/keep"}));
  QAAS_ASSERT_OK(store_->Delete("x/keep"));
  EXPECT_EQ(ListLocalTree(root_), Keys{});
  EXPECT_TRUE(std::filesystem::is_directory(root_));
  // A key whose directory was removed can be written again.
  QAAS_ASSERT_OK(store_->Write("x/y", "ok"));
}

TEST_F(FileStoreTest, ErrorsNameTheKeyAndTheErrnoText) {
  QAAS_ASSERT_OK(store_->Write("a/b", "1"));
  const absl::Status status = store_->Write("a/b/c", "x");
  EXPECT_TRUE(Contains(status, "a/b/c")) << status;
  const absl::Status missing = store_->WriteFromFile("k", dir_.path() + "/nope");
  EXPECT_TRUE(Contains(missing, "nope")) << missing;
  EXPECT_TRUE(Contains(missing, std::strerror(ENOENT))) << missing;
}

// A full disk, on a 1 MiB tmpfs. Mounting needs CAP_SYS_ADMIN; without it the
// test is skipped.
class FileStoreDiskFullTest : public FileStoreTest {
 protected:
  void SetUp() override {
    FileStoreTest::SetUp();
    small_ = dir_.path() + "/small";
    std::filesystem::create_directory(small_);
    if (::mount("tmpfs", small_.c_str(), "tmpfs", 0, "size=1m") != 0) {
      GTEST_SKIP() << "cannot mount a 1 MiB tmpfs (" << std::strerror(errno)
                   << "); run as root to test a full disk";
    }
    mounted_ = true;
    absl::StatusOr<std::unique_ptr<FileStore>> store = FileStore::Create(small_);
    QAAS_ASSERT_OK(store);
    small_store_ = *std::move(store);
  }
  void TearDown() override {
    if (mounted_) ::umount2(small_.c_str(), MNT_DETACH);
  }

  std::string small_;
  bool mounted_ = false;
  std::unique_ptr<FileStore> small_store_;
};

TEST_F(FileStoreDiskFullTest, WriteIsResourceExhaustedAndLeavesNothingPartial) {
  QAAS_ASSERT_OK(small_store_->Write("keep", "old"));
  const std::string big = PatternData(2 << 20, 3);

  const absl::Status status = small_store_->Write("keep", big);
  QAAS_EXPECT_CODE(status, kResourceExhausted);
  EXPECT_TRUE(Contains(status, "disk is full")) << status;
  EXPECT_TRUE(Contains(status, "keep")) << status;
  QAAS_EXPECT_CODE(small_store_->Write("d/new", big), kResourceExhausted);

  const std::string src = dir_.path() + "/big";
  WriteLocalFile(src, big);
  QAAS_EXPECT_CODE(small_store_->WriteFromFile("from_file", src), kResourceExhausted);

  absl::StatusOr<std::string> kept = small_store_->Read("keep");
  QAAS_ASSERT_OK(kept);
  EXPECT_EQ(*kept, "old");
  QAAS_EXPECT_CODE(small_store_->Stat("d/new"), kNotFound);
  EXPECT_EQ(ListLocalTree(small_), Keys({"keep"}));
}

TEST_F(FileStoreDiskFullTest, ReadToFullDiskLeavesNoPartialLocalFile) {
  QAAS_ASSERT_OK(store_->Write("big", PatternData(2 << 20, 4)));
  const absl::Status status = store_->ReadToFile("big", small_ + "/copy");
  QAAS_EXPECT_CODE(status, kResourceExhausted);
  EXPECT_TRUE(Contains(status, "copy")) << status;
  EXPECT_EQ(ListLocalTree(small_), Keys{});
}

TEST(OpenObjectStoreTest, OpensFileUris) {
  ScopedTempDir dir;
  absl::StatusOr<std::unique_ptr<ObjectStore>> store =
      OpenObjectStore("file://" + dir.path() + "//store/./");
  QAAS_ASSERT_OK(store);
  EXPECT_EQ((*store)->uri(), "file://" + dir.path() + "/store");
  QAAS_ASSERT_OK((*store)->Write("k", "v"));
  EXPECT_EQ(ReadLocalFile(dir.path() + "/store/k"), "v");
}

TEST(OpenObjectStoreTest, OpensS3UrisWithTheDefaultConfiguration) {
  S3Config config;
  SetDefaultS3Config(config);  // no credentials
  absl::StatusOr<std::unique_ptr<ObjectStore>> none = OpenObjectStore("s3://bucket/prefix");
  QAAS_EXPECT_CODE(none, kInvalidArgument);
  EXPECT_TRUE(Contains(none.status(), "no credentials")) << none.status();
  config.access_key = "AK";
  config.secret_key = "SK";
  SetDefaultS3Config(config);
  absl::StatusOr<std::unique_ptr<ObjectStore>> s3 = OpenObjectStore("s3://bucket/prefix/sub");
  QAAS_ASSERT_OK(s3);  // nothing contacted yet
  EXPECT_EQ((*s3)->uri(), "s3://bucket/prefix/sub");
}

TEST(OpenObjectStoreTest, RejectsOtherSchemesNamingThem) {
  absl::StatusOr<std::unique_ptr<ObjectStore>> gs = OpenObjectStore("gs://bucket/prefix");
  QAAS_EXPECT_CODE(gs, kInvalidArgument);
  EXPECT_TRUE(Contains(gs.status(), "'gs'")) << gs.status();

  absl::StatusOr<std::unique_ptr<ObjectStore>> host = OpenObjectStore("file://host/dir");
  QAAS_EXPECT_CODE(host, kInvalidArgument);
  EXPECT_TRUE(Contains(host.status(), "host")) << host.status();

  QAAS_EXPECT_CODE(OpenObjectStore("/just/a/path"), kInvalidArgument);
  QAAS_EXPECT_CODE(OpenObjectStore(""), kInvalidArgument);
}

}  // namespace
}  // namespace qaas::storage
