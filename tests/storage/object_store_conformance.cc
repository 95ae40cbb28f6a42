#include "tests/storage/object_store_conformance.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "storage/object_store.h"
#include "tests/test_util.h"

namespace qaas::storage {
namespace {

using ::qaas::storage::KeysOf;
using ::qaas::testing::ListLocalTree;
using ::qaas::testing::PatternData;
using ::qaas::testing::ReadLocalFile;
using ::qaas::testing::WriteLocalFile;
using Keys = std::vector<std::string>;

}  // namespace

void ObjectStoreConformance::SetUp() {
  store_ = GetParam()();
  ASSERT_NE(store_, nullptr) << "the factory returned no store";
  local_dir_ = testing::MakeTempDir();
}

void ObjectStoreConformance::TearDown() {
  std::error_code ec;
  if (!local_dir_.empty()) std::filesystem::remove_all(local_dir_, ec);
}

namespace {

TEST_P(ObjectStoreConformance, StartsEmpty) {
  absl::StatusOr<std::vector<ObjectInfo>> all = store_->List("");
  QAAS_ASSERT_OK(all);
  EXPECT_TRUE(all->empty());
}

TEST_P(ObjectStoreConformance, RoundTripsBinaryData) {
  std::string data("\0a\0b\xff\x80\n\r\0", 9);
  for (int i = 0; i < 256; ++i) data.push_back(static_cast<char>(i));
  QAAS_ASSERT_OK(store_->Write("bin/data", data));
  absl::StatusOr<std::string> got = store_->Read("bin/data");
  QAAS_ASSERT_OK(got);
  EXPECT_EQ(*got, data);
}

TEST_P(ObjectStoreConformance, RoundTripsEmptyObject) {
  QAAS_ASSERT_OK(store_->Write("empty", ""));
  absl::StatusOr<std::string> got = store_->Read("empty");
  QAAS_ASSERT_OK(got);
  EXPECT_EQ(*got, "");
  absl::StatusOr<ObjectInfo> info = store_->Stat("empty");
  QAAS_ASSERT_OK(info);
  EXPECT_EQ(info->size, 0u);
  absl::StatusOr<std::vector<ObjectInfo>> all = store_->List("");
  QAAS_ASSERT_OK(all);
  EXPECT_EQ(KeysOf(*all), Keys({"empty"}));
}

TEST_P(ObjectStoreConformance, RoundTripsFiveMebibyteObject) {
  const std::string data = PatternData(5 << 20, 1);
  QAAS_ASSERT_OK(store_->Write("big/object", data));
  absl::StatusOr<std::string> got = store_->Read("big/object");
  QAAS_ASSERT_OK(got);
  EXPECT_EQ(got->size(), data.size());
  EXPECT_TRUE(*got == data);  // not EXPECT_EQ: a mismatch would print 10 MiB
}

TEST_P(ObjectStoreConformance, OverwriteReplacesWholeValue) {
  QAAS_ASSERT_OK(store_->Write("k", std::string(1000, 'x')));
  QAAS_ASSERT_OK(store_->Write("k", "short"));
  absl::StatusOr<std::string> got = store_->Read("k");
  QAAS_ASSERT_OK(got);
  EXPECT_EQ(*got, "short");
  absl::StatusOr<ObjectInfo> info = store_->Stat("k");
  QAAS_ASSERT_OK(info);
  EXPECT_EQ(info->size, 5u);
}

TEST_P(ObjectStoreConformance, ReadsRanges) {
  const std::string data = "0123456789";
  QAAS_ASSERT_OK(store_->Write("r", data));
  auto range = [&](uint64_t offset, uint64_t length) {
    absl::StatusOr<std::string> got = store_->ReadRange("r", offset, length);
    return got.ok() ? *got : "<" + got.status().ToString() + ">";
  };
  EXPECT_EQ(range(0, 3), "012");
  EXPECT_EQ(range(4, 3), "456");
  EXPECT_EQ(range(7, 100), "789");  // clipped at the end
  EXPECT_EQ(range(0, UINT64_MAX), data);
  EXPECT_EQ(range(3, 0), "");
  EXPECT_EQ(range(10, 5), "");  // offset == size is the empty tail
  QAAS_EXPECT_CODE(store_->ReadRange("r", 11, 1), kOutOfRange);
  QAAS_EXPECT_CODE(store_->ReadRange("r", UINT64_MAX, 1), kOutOfRange);
}

TEST_P(ObjectStoreConformance, StatReportsSizeAndModificationTime) {
  const auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  QAAS_ASSERT_OK(store_->Write("dir/s", std::string(1234, 's')));
  absl::StatusOr<ObjectInfo> info = store_->Stat("dir/s");
  QAAS_ASSERT_OK(info);
  EXPECT_EQ(info->key, "dir/s");
  EXPECT_EQ(info->size, 1234u);
  // Generous bounds: a remote backend's clock may differ from ours a little.
  EXPECT_GT(info->mtime_unix_ms, now_ms - 10 * 60 * 1000);
  EXPECT_LT(info->mtime_unix_ms, now_ms + 10 * 60 * 1000);
}

TEST_P(ObjectStoreConformance, ListsByPrefixSortedAndRecursive) {
  for (const char* key : {"a/x/y/z", "b", "a/b/d", "ab", "a/bc", "a/b/c", "a-c"}) {
    QAAS_ASSERT_OK(store_->Write(key, key));
  }
  auto list = [&](const char* prefix) {
    absl::StatusOr<std::vector<ObjectInfo>> got = store_->List(prefix);
    return got.ok() ? KeysOf(*got) : Keys{"<" + got.status().ToString() + ">"};
  };
  EXPECT_EQ(list(""), Keys({"a-c", "a/b/c", "a/b/d", "a/bc", "a/x/y/z", "ab", "b"}));
  EXPECT_EQ(list("a/"), Keys({"a/b/c", "a/b/d", "a/bc", "a/x/y/z"}));
  EXPECT_EQ(list("a/b"), Keys({"a/b/c", "a/b/d", "a/bc"}));
  EXPECT_EQ(list("a/b/"), Keys({"a/b/c", "a/b/d"}));
  EXPECT_EQ(list("a//b/./"), Keys({"a/b/c", "a/b/d"}));  // normalised like a key
  EXPECT_EQ(list("a"), Keys({"a-c", "a/b/c", "a/b/d", "a/bc", "a/x/y/z", "ab"}));
  EXPECT_EQ(list("a/b/c"), Keys({"a/b/c"}));
  EXPECT_EQ(list("zzz"), Keys{});
  EXPECT_EQ(list("b/"), Keys{});  // "b" is an object, not a directory

  absl::StatusOr<std::vector<ObjectInfo>> infos = store_->List("a/x/");
  QAAS_ASSERT_OK(infos);
  ASSERT_EQ(infos->size(), 1u);
  EXPECT_EQ((*infos)[0].size, std::string("a/x/y/z").size());
}

TEST_P(ObjectStoreConformance, NormalisedKeysNameTheSameObject) {
  QAAS_ASSERT_OK(store_->Write("n//m/./o/../p", "v"));
  absl::StatusOr<std::string> got = store_->Read("n/m/p");
  QAAS_ASSERT_OK(got);
  EXPECT_EQ(*got, "v");
  absl::StatusOr<std::vector<ObjectInfo>> all = store_->List("");
  QAAS_ASSERT_OK(all);
  EXPECT_EQ(KeysOf(*all), Keys({"n/m/p"}));
}

TEST_P(ObjectStoreConformance, DeleteRemovesOnlyThatObject) {
  QAAS_ASSERT_OK(store_->Write("d/one", "1"));
  QAAS_ASSERT_OK(store_->Write("d/two", "2"));
  QAAS_ASSERT_OK(store_->Delete("d/one"));
  QAAS_EXPECT_CODE(store_->Read("d/one"), kNotFound);
  QAAS_EXPECT_CODE(store_->Stat("d/one"), kNotFound);
  QAAS_EXPECT_CODE(store_->Delete("d/one"), kNotFound);
  absl::StatusOr<std::vector<ObjectInfo>> all = store_->List("");
  QAAS_ASSERT_OK(all);
  EXPECT_EQ(KeysOf(*all), Keys({"d/two"}));
  QAAS_ASSERT_OK(store_->Delete("d/two"));
  all = store_->List("");
  QAAS_ASSERT_OK(all);
  EXPECT_TRUE(all->empty());
  // The key can be written again after its directory emptied.
  QAAS_ASSERT_OK(store_->Write("d/one", "again"));
  QAAS_EXPECT_OK(store_->Read("d/one"));
}

TEST_P(ObjectStoreConformance, MissingKeysAreNotFound) {
  QAAS_ASSERT_OK(store_->Write("present/x", "x"));
  for (const char* key : {"missing", "present/missing", "missing/dir/key", "present/x/below"}) {
    SCOPED_TRACE(key);
    QAAS_EXPECT_CODE(store_->Read(key), kNotFound);
    QAAS_EXPECT_CODE(store_->ReadRange(key, 0, 1), kNotFound);
    QAAS_EXPECT_CODE(store_->Stat(key), kNotFound);
    QAAS_EXPECT_CODE(store_->Delete(key), kNotFound);
    QAAS_EXPECT_CODE(store_->ReadToFile(key, local_dir() + "/out"), kNotFound);
  }
  // A "directory" of other objects is not itself an object.
  QAAS_EXPECT_CODE(store_->Read("present"), kNotFound);
  QAAS_EXPECT_CODE(store_->Delete("present"), kNotFound);
  EXPECT_FALSE(testing::LocalPathExists(local_dir() + "/out"));
}

TEST_P(ObjectStoreConformance, NotFoundMessageNamesTheKey) {
  absl::StatusOr<std::string> got = store_->Read("no/such/key");
  ASSERT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(got.status().message().find("no/such/key"), absl::string_view::npos) << got.status();
}

TEST_P(ObjectStoreConformance, RejectsKeysEscapingTheRoot) {
  const std::string local = local_dir() + "/src";
  WriteLocalFile(local, "data");
  const std::string nul_key("a\0b", 3);
  for (const std::string& key :
       {std::string("../x"), std::string("a/../../x"), std::string("/etc/passwd"),
        std::string(".."), std::string("a/b/../../../x"), nul_key}) {
    SCOPED_TRACE(key);
    QAAS_EXPECT_CODE(store_->Write(key, "data"), kInvalidArgument);
    QAAS_EXPECT_CODE(store_->WriteFromFile(key, local), kInvalidArgument);
    QAAS_EXPECT_CODE(store_->Read(key), kInvalidArgument);
    QAAS_EXPECT_CODE(store_->ReadRange(key, 0, 1), kInvalidArgument);
    QAAS_EXPECT_CODE(store_->ReadToFile(key, local_dir() + "/dst"), kInvalidArgument);
    QAAS_EXPECT_CODE(store_->Stat(key), kInvalidArgument);
    QAAS_EXPECT_CODE(store_->Delete(key), kInvalidArgument);
    if (key != nul_key) {
      const absl::Status status = store_->Write(key, "data");
      EXPECT_NE(status.message().find(key), absl::string_view::npos) << status;
    }
  }
  QAAS_EXPECT_CODE(store_->List("../"), kInvalidArgument);
  QAAS_EXPECT_CODE(store_->List("/etc"), kInvalidArgument);
  absl::StatusOr<std::vector<ObjectInfo>> all = store_->List("");
  QAAS_ASSERT_OK(all);
  EXPECT_TRUE(all->empty());
  EXPECT_EQ(ListLocalTree(local_dir()), Keys({"src"}));
}

TEST_P(ObjectStoreConformance, RejectsKeysNamingTheRoot) {
  for (const char* key : {"", ".", "a/..", "./"}) {
    SCOPED_TRACE(key);
    QAAS_EXPECT_CODE(store_->Write(key, "data"), kInvalidArgument);
    QAAS_EXPECT_CODE(store_->Read(key), kInvalidArgument);
    QAAS_EXPECT_CODE(store_->Stat(key), kInvalidArgument);
    QAAS_EXPECT_CODE(store_->Delete(key), kInvalidArgument);
  }
}

TEST_P(ObjectStoreConformance, StreamsLargeFilesBothWays) {
  // Not a multiple of any plausible chunk size.
  const std::string data = PatternData((12 << 20) + 12345, 2);
  const std::string src = local_dir() + "/src.bin";
  const std::string dst = local_dir() + "/dst.bin";
  WriteLocalFile(src, data);
  WriteLocalFile(dst, "old contents, replaced whole");
  QAAS_ASSERT_OK(store_->WriteFromFile("files/large.bin", src));

  absl::StatusOr<ObjectInfo> info = store_->Stat("files/large.bin");
  QAAS_ASSERT_OK(info);
  EXPECT_EQ(info->size, data.size());
  absl::StatusOr<std::string> tail = store_->ReadRange("files/large.bin", data.size() - 100, 1000);
  QAAS_ASSERT_OK(tail);
  EXPECT_TRUE(*tail == data.substr(data.size() - 100));

  QAAS_ASSERT_OK(store_->ReadToFile("files/large.bin", dst));
  EXPECT_TRUE(ReadLocalFile(dst) == data);
  // No temp file is left beside the local destination.
  EXPECT_EQ(ListLocalTree(local_dir()), Keys({"dst.bin", "src.bin"}));
}

TEST_P(ObjectStoreConformance, WriteFromMissingLocalFileStoresNothing) {
  QAAS_EXPECT_CODE(store_->WriteFromFile("k", local_dir() + "/absent"), kNotFound);
  QAAS_EXPECT_CODE(store_->Stat("k"), kNotFound);
}

TEST_P(ObjectStoreConformance, ConcurrentWritersLeaveOneCompleteValue) {
  constexpr int kWriters = 8;
  constexpr int kRounds = 10;
  constexpr size_t kSize = 256 << 10;
  // Every value is kSize copies of its writer's letter, so a torn or
  // truncated value is easy to recognise.
  auto is_complete = [&](const std::string& value) {
    return value.size() == kSize && value.find_first_not_of(value[0]) == std::string::npos &&
           value[0] >= 'A' && value[0] < 'A' + kWriters;
  };
  QAAS_ASSERT_OK(store_->Write("shared/key", std::string(kSize, 'A')));
  std::atomic<bool> done{false};
  std::atomic<int> bad_reads{0};
  std::thread reader([&] {
    while (!done.load()) {
      absl::StatusOr<std::string> got = store_->Read("shared/key");
      if (!got.ok() || !is_complete(*got)) {
        bad_reads.fetch_add(1);
        ADD_FAILURE() << "a read saw " << (got.ok() ? "a torn value of " + std::to_string(got->size()) + " bytes"
                                                    : got.status().ToString());
      }
    }
  });
  std::vector<std::thread> writers;
  std::vector<absl::Status> errors(kWriters);
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      const std::string value(kSize, static_cast<char>('A' + w));
      for (int round = 0; round < kRounds && errors[w].ok(); ++round) {
        errors[w] = store_->Write("shared/key", value);
      }
    });
  }
  for (std::thread& t : writers) t.join();
  done.store(true);
  reader.join();
  for (const absl::Status& error : errors) QAAS_EXPECT_OK(error);
  EXPECT_EQ(bad_reads.load(), 0);
  absl::StatusOr<std::string> final_value = store_->Read("shared/key");
  QAAS_ASSERT_OK(final_value);
  EXPECT_TRUE(is_complete(*final_value));
  absl::StatusOr<std::vector<ObjectInfo>> all = store_->List("");
  QAAS_ASSERT_OK(all);
  EXPECT_EQ(KeysOf(*all), Keys({"shared/key"}));
}

TEST_P(ObjectStoreConformance, ConcurrentWritesAndDeletesInOneDirectory) {
  // A delete may tidy up the directory that a concurrent write is about to
  // use; neither may fail because of the other.
  constexpr int kRounds = 200;
  absl::Status churn_error, steady_error;
  std::thread churn([&] {
    for (int i = 0; i < kRounds && churn_error.ok(); ++i) {
      churn_error = store_->Write("dir/sub/churn", "c");
      if (churn_error.ok()) churn_error = store_->Delete("dir/sub/churn");
    }
  });
  std::thread steady([&] {
    for (int i = 0; i < kRounds && steady_error.ok(); ++i) {
      steady_error = store_->Write("dir/sub/steady", "s");
      if (steady_error.ok() && i + 1 < kRounds) steady_error = store_->Delete("dir/sub/steady");
    }
  });
  churn.join();
  steady.join();
  QAAS_EXPECT_OK(churn_error);
  QAAS_EXPECT_OK(steady_error);
  absl::StatusOr<std::vector<ObjectInfo>> all = store_->List("");
  QAAS_ASSERT_OK(all);
  EXPECT_EQ(KeysOf(*all), Keys({"dir/sub/steady"}));
}

}  // namespace
}  // namespace qaas::storage
