// The s3:// driver against a real S3 implementation on 127.0.0.1: OpenStack
// Swift with its s3api middleware, which checks SigV4 signatures and payload
// hashes. ctest starts one Swift for the whole run (fixture S3Swift, its
// directory in $QAAS_TEST_SWIFT_DIR); run alone, this binary starts its own.
// Without Swift installed every test skips, saying so.
#include "storage/s3_store.h"

#include <curl/curl.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "gtest/gtest.h"
#include "storage/sha256.h"
#include "tests/storage/object_store_conformance.h"
#include "tests/test_util.h"

namespace qaas::storage {
namespace {

using ::qaas::testing::PatternData;
using ::qaas::testing::ReadLocalFile;
using ::qaas::testing::WriteLocalFile;

const std::string kScript = std::string(QAAS_SOURCE_DIR) + "/tests/storage/swift_s3";

// The Swift all tests of this process use.
class Swift : public ::testing::Environment {
 public:
  static Swift* Get() { return instance_; }
  void SetUp() override {
    if (const char* dir = std::getenv("QAAS_TEST_SWIFT_DIR")) {
      dir_ = dir;
    } else {
      dir_ = testing::MakeTempDir();
      owned_ = true;
      const int rc = std::system((kScript + " start " + dir_ + " > /dev/null").c_str());
      if (rc != 0) why_ = "could not start Swift with s3api (tests/storage/swift_s3 exit " + std::to_string(rc) + ")";
    }
    if (why_.empty()) {
      const std::string port = testing::LocalPathExists(dir_ + "/port") ? ReadLocalFile(dir_ + "/port") : "";
      port_ = std::atoi(port.c_str());
      if (port_ == 0) why_ = "no Swift port in " + dir_ + " (was the S3Swift fixture able to start it?)";
    }
  }
  void TearDown() override {
    if (owned_) {
      (void)std::system((kScript + " stop " + dir_).c_str());
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }
  const std::string& why_not() const { return why_; }
  int port() const { return port_; }
  void Run(const std::string& command) { ASSERT_EQ(std::system((kScript + " " + command + " " + dir_).c_str()), 0); }

  S3Config Config(bool path_style = true) const {
    S3Config c;
    c.endpoint = (path_style ? "http://127.0.0.1:" : "http://localhost:") + std::to_string(port_);
    c.path_style = path_style;
    c.access_key = "test:tester";
    c.secret_key = "testing";
    c.part_size = 5 << 20;            // S3's minimum, so the suite's 12 MiB file goes in 3 parts
    c.multipart_threshold = 5 << 20;
    c.base_backoff_ms = 50;
    c.max_backoff_ms = 500;
    return c;
  }
  // A store on a new bucket, under a key prefix (so prefix handling is tested too).
  std::unique_ptr<S3Store> NewStore(S3Config c, const std::string& prefix = "root/dir") {
    const std::string bucket = "qaas-" + std::to_string(++buckets_) + "-" + std::to_string(::getpid());
    auto s = S3Store::Create(bucket, prefix, c);
    if (!s.ok()) {
      ADD_FAILURE() << s.status();
      return nullptr;
    }
    if (auto st = (*s)->CreateBucket(); !st.ok()) {
      ADD_FAILURE() << st;
      return nullptr;
    }
    return *std::move(s);
  }

 private:
  static inline Swift* instance_ = nullptr;
  std::string dir_, why_;
  bool owned_ = false;
  int port_ = 0;
  std::atomic<int> buckets_{0};

 public:
  Swift() { instance_ = this; }
};
::testing::Environment* const kSwift = ::testing::AddGlobalTestEnvironment(new Swift);

std::unique_ptr<ObjectStore> NewS3Store() {
  Swift* s = Swift::Get();
  if (!s->why_not().empty()) {
    ADD_FAILURE() << "S3 driver not tested: " << s->why_not();
    return nullptr;
  }
  return s->NewStore(s->Config());
}

INSTANTIATE_TEST_SUITE_P(S3Store, ObjectStoreConformance, ::testing::Values(ObjectStoreFactory(NewS3Store)));

class S3StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!Swift::Get()->why_not().empty()) GTEST_SKIP() << "S3 driver not tested: " << Swift::Get()->why_not();
    local_ = testing::MakeTempDir();
  }
  void TearDown() override {
    std::error_code ec;
    if (!local_.empty()) std::filesystem::remove_all(local_, ec);
  }
  std::string local_;
};

TEST_F(S3StoreTest, VirtualHostAddressingWorksToo) {
  auto store = Swift::Get()->NewStore(Swift::Get()->Config(/*path_style=*/true));
  ASSERT_NE(store, nullptr);
  QAAS_ASSERT_OK(store->Write("k", "through path style"));
  // The same bucket through bucket.localhost.
  auto vhost = S3Store::Create(store->uri().substr(5, store->uri().find('/', 5) - 5), "root/dir",
                               Swift::Get()->Config(/*path_style=*/false));
  QAAS_ASSERT_OK(vhost);
  auto got = (*vhost)->Read("k");
  QAAS_ASSERT_OK(got);
  EXPECT_EQ(*got, "through path style");
}

TEST_F(S3StoreTest, AWrongSecretIsRefusedByTheSignatureCheck) {
  auto store = Swift::Get()->NewStore(Swift::Get()->Config());
  ASSERT_NE(store, nullptr);
  S3Config bad = Swift::Get()->Config();
  bad.secret_key = "not-the-secret";
  auto other = S3Store::Create(store->uri().substr(5, store->uri().find('/', 5) - 5), "root/dir", bad);
  QAAS_ASSERT_OK(other);
  absl::Status st = (*other)->Write("k", "v");
  QAAS_EXPECT_CODE(st, kPermissionDenied);
  EXPECT_NE(st.message().find("SignatureDoesNotMatch"), absl::string_view::npos) << st;
}

TEST_F(S3StoreTest, ListFollowsContinuationTokens) {
  S3Config c = Swift::Get()->Config();
  c.list_page_size = 3;
  auto store = Swift::Get()->NewStore(c);
  ASSERT_NE(store, nullptr);
  std::vector<std::string> want;
  for (int i = 0; i < 10; ++i) {
    want.push_back("p/" + std::to_string(i));
    QAAS_ASSERT_OK(store->Write(want.back(), "x"));
  }
  auto all = store->List("p/");
  QAAS_ASSERT_OK(all);
  EXPECT_EQ(KeysOf(*all), want);
}

TEST_F(S3StoreTest, KeysWithSpecialCharactersRoundTrip) {
  auto store = Swift::Get()->NewStore(Swift::Get()->Config());
  ASSERT_NE(store, nullptr);
  for (const std::string key : {"a b/c+d", "ü/ñ&x=y", "q?r#s", "t%20u"}) {
    SCOPED_TRACE(key);
    QAAS_ASSERT_OK(store->Write(key, key));
    auto got = store->Read(key);
    QAAS_ASSERT_OK(got);
    EXPECT_EQ(*got, key);
  }
  auto all = store->List("");
  QAAS_ASSERT_OK(all);
  EXPECT_EQ(all->size(), 4u);
}

// An object whose content does not match the sha256 it carries (written
// here with a hand-signed PUT): reads say DataLoss and write no local file.
TEST_F(S3StoreTest, DownloadsVerifyTheContentChecksum) {
  auto store = Swift::Get()->NewStore(Swift::Get()->Config());
  ASSERT_NE(store, nullptr);
  const std::string uri = store->uri();  // s3://bucket/root/dir
  const std::string bucket = uri.substr(5, uri.find('/', 5) - 5);
  CURL* curl = curl_easy_init();
  ASSERT_NE(curl, nullptr);
  const std::string url = "http://127.0.0.1:" + std::to_string(Swift::Get()->port()) + "/" + bucket + "/root/dir/bad";
  const std::string body = "the content";
  curl_slist* h = nullptr;
  h = curl_slist_append(h, ("x-amz-content-sha256: " + Sha256Hex(body)).c_str());
  h = curl_slist_append(h, ("x-amz-meta-qaas-sha256: " + Sha256Hex("other content")).c_str());
  curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
  curl_easy_setopt(curl, CURLOPT_AWS_SIGV4, "aws:amz:us-east-1:s3");
  curl_easy_setopt(curl, CURLOPT_USERNAME, "test:tester");
  curl_easy_setopt(curl, CURLOPT_PASSWORD, "testing");
  curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, "PUT");
  curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.c_str());
  curl_easy_setopt(curl, CURLOPT_HTTPHEADER, h);
  ASSERT_EQ(curl_easy_perform(curl), CURLE_OK);
  long status = 0;
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
  curl_slist_free_all(h);
  curl_easy_cleanup(curl);
  ASSERT_EQ(status, 200);
  QAAS_EXPECT_CODE(store->Read("bad"), kDataLoss);
  QAAS_EXPECT_CODE(store->ReadToFile("bad", local_ + "/bad"), kDataLoss);
  EXPECT_FALSE(testing::LocalPathExists(local_ + "/bad"));
  EXPECT_TRUE(testing::ListLocalTree(local_).empty()) << "a temp file was left";
}

// The S3 server goes away after the first part of a multipart upload and
// comes back 1.5 s (plus its start-up) later: the upload is retried and completes; what is read back is
// exactly what was written. An outage longer than the retries fails with
// Unavailable and leaves no object.
TEST_F(S3StoreTest, OutagesAreRetriedAndNeverLeaveACorruptObject) {
  S3Config c = Swift::Get()->Config();
  c.max_attempts = 12;  // waits average about 5 s: the proxy is down for 1.5 s plus its restart
  c.max_backoff_ms = 1500;
  c.connect_timeout_ms = 1000;
  c.stall_timeout_ms = 2000;
  std::thread restart;
  c.on_part_uploaded = [&](int part, int parts) {
    if (part != 1) return;
    EXPECT_EQ(parts, 4);
    Swift::Get()->Run("kill-proxy");  // gone before part 2
    restart = std::thread([] {
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      Swift::Get()->Run("start-proxy");
    });
  };
  auto store = Swift::Get()->NewStore(c);
  ASSERT_NE(store, nullptr);
  const std::string data = PatternData((16 << 20) + 777, 9);
  WriteLocalFile(local_ + "/src", data);
  absl::Status st = store->WriteFromFile("big", local_ + "/src");
  if (restart.joinable()) restart.join();
  QAAS_ASSERT_OK(st);
  EXPECT_GT(store->retries(), 0u) << "the outage was not met";
  std::printf("outage mid-upload: %llu retries, then completed\n", static_cast<unsigned long long>(store->retries()));
  QAAS_ASSERT_OK(store->ReadToFile("big", local_ + "/dst"));
  EXPECT_TRUE(ReadLocalFile(local_ + "/dst") == data);

  // Down for longer than 3 attempts.
  S3Config impatient = c;
  impatient.max_attempts = 3;
  impatient.on_part_uploaded = nullptr;
  auto short_store = S3Store::Create(store->uri().substr(5, store->uri().find('/', 5) - 5), "root/dir", impatient);
  QAAS_ASSERT_OK(short_store);
  Swift::Get()->Run("kill-proxy");
  absl::Status down = (*short_store)->WriteFromFile("never", local_ + "/src");
  Swift::Get()->Run("start-proxy");
  QAAS_EXPECT_CODE(down, kUnavailable);
  EXPECT_NE(down.message().find("after 3 attempts"), absl::string_view::npos) << down;
  QAAS_EXPECT_CODE(store->Stat("never"), kNotFound);
}

TEST(S3ConfigTest, ComesFromTheStandardEnvironment) {
  setenv("AWS_ACCESS_KEY_ID", "AK", 1);
  setenv("AWS_SECRET_ACCESS_KEY", "SK", 1);
  setenv("AWS_REGION", "eu-west-3", 1);
  setenv("AWS_ENDPOINT_URL", "http://minio:9000", 1);
  setenv("QAAS_S3_PATH_STYLE", "1", 1);
  S3Config c = S3Config::FromEnvironment();
  EXPECT_EQ(c.access_key, "AK");
  EXPECT_EQ(c.secret_key, "SK");
  EXPECT_EQ(c.region, "eu-west-3");
  EXPECT_EQ(c.endpoint, "http://minio:9000");
  EXPECT_TRUE(c.path_style);
  for (const char* v : {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL",
                        "QAAS_S3_PATH_STYLE"}) {
    unsetenv(v);
  }
  S3Config none;
  auto s = S3Store::Create("b", "", none);
  QAAS_EXPECT_CODE(s, kInvalidArgument);
  EXPECT_NE(s.status().message().find("AWS_ACCESS_KEY_ID"), absl::string_view::npos);
}

}  // namespace
}  // namespace qaas::storage
