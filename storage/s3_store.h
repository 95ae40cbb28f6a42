// The s3:// driver: S3's REST API over libcurl, signed with libcurl's AWS
// Signature Version 4 (CURLOPT_AWS_SIGV4) and a SHA-256 payload hash on every
// request (x-amz-content-sha256), so servers that check payloads can.
//
//   - Objects up to multipart_threshold go in one PUT; larger files stream in
//     parts of part_size (CreateMultipartUpload, UploadPart, Complete; the
//     upload is aborted on failure), never held in memory whole.
//   - Every object carries the SHA-256 of its content in metadata
//     (x-amz-meta-qaas-sha256); whole-object reads verify it (DataLoss on a
//     mismatch: nothing is written locally).
//   - Reads of a range use Range; List follows ListObjectsV2 continuation
//     tokens.
//   - Retries: 5xx, 429, throttling codes and network errors/timeouts are
//     retried up to max_attempts with exponential backoff and full jitter; a
//     failed upload leaves no object (a PUT is atomic, an aborted multipart
//     upload is never visible).
//
// Configuration: S3Config, usually from FromEnvironment() (the standard AWS
// variables) overridden by flags.
#ifndef QAAS_STORAGE_S3_STORE_H_
#define QAAS_STORAGE_S3_STORE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "storage/object_store.h"

namespace qaas::storage {

struct S3Config {
  // "http(s)://host[:port]"; "" = https://s3.<region>.amazonaws.com.
  std::string endpoint;
  std::string region = "us-east-1";
  // Path-style (endpoint/bucket/key) or virtual-host (bucket.endpoint/key)
  // addressing. Buckets with dots or upper case need path style.
  bool path_style = false;
  std::string access_key;
  std::string secret_key;
  std::string session_token;  // temporary credentials
  uint64_t multipart_threshold = 64ull << 20;
  uint64_t part_size = 16ull << 20;  // at least 5 MiB, as S3 requires for all but the last part
  int list_page_size = 1000;  // ListObjectsV2 max-keys
  // Attempts per request; waits before retries are uniform in
  // [0, min(max_backoff, base_backoff * 2^(retry-1))] ("full jitter"): with
  // these defaults about 11 s in all on average, up to 22 s.
  int max_attempts = 8;
  int64_t base_backoff_ms = 200;
  int64_t max_backoff_ms = 10000;
  int64_t connect_timeout_ms = 5000;
  // A transfer slower than 1 KiB/s for this long is a timeout (and retried).
  int64_t stall_timeout_ms = 30000;

  // Called after each part of a multipart upload (progress; tests use it to
  // cut the server off mid-upload).
  std::function<void(int part, int parts)> on_part_uploaded;

  // AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION
  // (or AWS_DEFAULT_REGION), AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL), and
  // QAAS_S3_PATH_STYLE=1.
  static S3Config FromEnvironment();
};

// The configuration OpenObjectStore uses for s3:// uris (default:
// S3Config::FromEnvironment() at first use). Thread-safe.
void SetDefaultS3Config(const S3Config& config);
S3Config DefaultS3Config();

class S3Store : public ObjectStore {
 public:
  // The store for s3://<bucket>/<prefix>. Nothing is contacted yet.
  // InvalidArgument for a missing bucket or credentials, or a bad endpoint.
  static absl::StatusOr<std::unique_ptr<S3Store>> Create(const std::string& bucket, const std::string& prefix,
                                                         const S3Config& config);
  ~S3Store() override;

  std::string uri() const override;
  absl::StatusOr<std::string> Read(std::string_view key) override;
  absl::StatusOr<std::string> ReadRange(std::string_view key, uint64_t offset, uint64_t length) override;
  absl::Status Write(std::string_view key, std::string_view data) override;
  absl::Status WriteFromFile(std::string_view key, const std::string& local_path) override;
  absl::Status ReadToFile(std::string_view key, const std::string& local_path) override;
  absl::StatusOr<ObjectInfo> Stat(std::string_view key) override;
  absl::StatusOr<std::vector<ObjectInfo>> List(std::string_view prefix) override;
  absl::Status Delete(std::string_view key) override;

  // Requests retried so far (after a 5xx, throttling or a network error).
  uint64_t retries() const { return retries_.load(); }

  // Creates the bucket (tests and first-time setup); OK if it exists and is ours.
  absl::Status CreateBucket();

  struct Request;      // one HTTP exchange (s3_store.cc)
  struct FileDigests;  // a local file's SHA-256, whole and per part (s3_store.cc)

 private:
  S3Store() = default;
  absl::Status Perform(Request& r);  // with retries
  std::string Url(const std::string& object_key, const std::string& query) const;
  std::string FullKey(const std::string& key) const { return prefix_.empty() ? key : prefix_ + "/" + key; }
  // A request for the object at `key` (normalized, relative to the prefix):
  // its full key, and "key '<key>'" for messages.
  Request ObjectRequest(const std::string& key, const char* method) const;
  // `fd` is the open local file; `digests` its DigestFile (s3_store.cc).
  absl::Status MultipartUpload(const std::string& key, int fd, uint64_t size, const FileDigests& digests);

  std::string bucket_;
  std::string prefix_;
  S3Config config_;
  std::string scheme_host_;  // "http://127.0.0.1:9000"
  std::atomic<uint64_t> retries_{0};
  // Idle libcurl easy handles (CURL*): a reused handle keeps its connection
  // to the endpoint, so requests do not pay a new TCP/TLS handshake each.
  std::mutex handles_mu_;
  std::vector<void*> idle_handles_;
};

}  // namespace qaas::storage

#endif  // QAAS_STORAGE_S3_STORE_H_
