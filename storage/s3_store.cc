#include "storage/s3_store.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/match.h"
#include "quant/util/status_macros.h"
#include "storage/atomic_file.h"
#include "storage/posix_io.h"
#include "storage/string_view_compat.h"
#include "storage/uri.h"

namespace qaas::storage {
namespace {

constexpr char kEmptySha256[] = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
constexpr char kShaHeader[] = "x-amz-meta-qaas-sha256";

// Incremental SHA-256, hex out.
class Sha256 {
 public:
  Sha256() : ctx_(EVP_MD_CTX_new()) { Reset(); }
  ~Sha256() { EVP_MD_CTX_free(ctx_); }
  void Reset() { EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr); }
  void Update(const void* p, size_t n) { EVP_DigestUpdate(ctx_, p, n); }
  std::string Hex() {
    unsigned char md[32];
    unsigned int n = 0;
    EVP_DigestFinal_ex(ctx_, md, &n);
    static const char* kHex = "0123456789abcdef";
    std::string out;
    for (unsigned i = 0; i < n; ++i) {
      out.push_back(kHex[md[i] >> 4]);
      out.push_back(kHex[md[i] & 15]);
    }
    return out;
  }

 private:
  EVP_MD_CTX* ctx_;
};

std::string Sha256Of(std::string_view data) {
  Sha256 h;
  h.Update(data.data(), data.size());
  return h.Hex();
}

// The SHA-256 of a local file and, when part_size > 0, of each part_size
// slice of it, in one pass (the whole-file digest goes into the object's
// metadata before the first part is sent, each part's into its request).
}  // namespace

struct S3Store::FileDigests {
  std::string whole;
  std::vector<std::string> parts;
};

namespace {

using FileDigests = S3Store::FileDigests;

absl::StatusOr<FileDigests> DigestFile(int fd, uint64_t size, uint64_t part_size, const std::string& path) {
  FileDigests d;
  Sha256 whole, part;
  std::string buf(1 << 20, '\0');
  uint64_t offset = 0, part_left = part_size > 0 ? std::min(part_size, size) : size;
  while (offset < size) {
    const uint64_t want = std::min<uint64_t>(buf.size(), part_left);
    const ssize_t n = ::pread(fd, buf.data(), want, static_cast<off_t>(offset));
    if (n < 0) return ErrnoStatus(errno, absl::StrCat("read local file '", path, "'"));
    if (n == 0) return absl::DataLossError(absl::StrCat("local file '", path, "' shrank while being uploaded"));
    whole.Update(buf.data(), static_cast<size_t>(n));
    if (part_size > 0) part.Update(buf.data(), static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
    part_left -= static_cast<uint64_t>(n);
    if (part_left == 0) {
      if (part_size > 0) {
        d.parts.push_back(part.Hex());
        part.Reset();
      }
      part_left = part_size > 0 ? std::min(part_size, size - offset) : size - offset;
    }
  }
  d.whole = whole.Hex();
  return d;
}

// AWS's URI encoding: unreserved characters stay, the rest is %XX
// (upper case); '/' stays in paths.
std::string UriEncode(std::string_view s, bool keep_slash) {
  std::string out;
  for (unsigned char c : s) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
      out.push_back(static_cast<char>(c));
    } else {
      out += absl::StrFormat("%%%02X", c);
    }
  }
  return out;
}

// Query string with parameters sorted by name, as SigV4's canonical form
// wants them (so signer and server agree whatever the signer sorts).
std::string Query(std::map<std::string, std::string> params) {
  std::string q;
  for (const auto& [k, v] : params) absl::StrAppend(&q, q.empty() ? "" : "&", UriEncode(k, false), "=", UriEncode(v, false));
  return q;
}

std::string XmlUnescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      out.push_back(s[i]);
      continue;
    }
    const size_t semi = s.find(';', i);
    if (semi == std::string_view::npos) {
      out.push_back('&');
      continue;
    }
    const std::string_view ent = s.substr(i + 1, semi - i - 1);
    if (ent == "amp") out.push_back('&');
    else if (ent == "lt") out.push_back('<');
    else if (ent == "gt") out.push_back('>');
    else if (ent == "quot") out.push_back('"');
    else if (ent == "apos") out.push_back('\'');
    else if (!ent.empty() && ent[0] == '#') {
      uint32_t cp = 0;
      const bool hex = ent.size() > 1 && (ent[1] == 'x' || ent[1] == 'X');
      std::string digits(ent.substr(hex ? 2 : 1));
      cp = static_cast<uint32_t>(std::strtoul(digits.c_str(), nullptr, hex ? 16 : 10));
      if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
      } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      } else {
        out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
      }
    } else {
      out.append(s.substr(i, semi - i + 1));
    }
    i = semi;
  }
  return out;
}

// The text of every <tag>...</tag> in `xml` from `from`, in order.
std::vector<std::string_view> XmlAll(std::string_view xml, std::string_view tag) {
  std::vector<std::string_view> out;
  const std::string open = absl::StrCat("<", ToAbsl(tag), ">"), close = absl::StrCat("</", ToAbsl(tag), ">");
  for (size_t pos = 0;;) {
    const size_t a = xml.find(open, pos);
    if (a == std::string_view::npos) break;
    const size_t b = xml.find(close, a + open.size());
    if (b == std::string_view::npos) break;
    out.push_back(xml.substr(a + open.size(), b - a - open.size()));
    pos = b + close.size();
  }
  return out;
}
std::string XmlFirst(std::string_view xml, std::string_view tag) {
  auto all = XmlAll(xml, tag);
  return all.empty() ? "" : XmlUnescape(all.front());
}

int64_t ParseIso8601Ms(const std::string& s) {  // 2026-11-23T02:51:16.000Z
  std::tm tm{};
  if (!strptime(s.c_str(), "%Y-%m-%dT%H:%M:%S", &tm)) return 0;
  return static_cast<int64_t>(timegm(&tm)) * 1000;
}
int64_t ParseHttpDateMs(const std::string& s) {  // Sat, 23 Nov 2026 02:51:16 GMT
  std::tm tm{};
  if (!strptime(s.c_str(), "%a, %d %b %Y %H:%M:%S", &tm)) return 0;
  return static_cast<int64_t>(timegm(&tm)) * 1000;
}

bool TransientCurlError(CURLcode rc) {
  switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_SSL_CONNECT_ERROR:
      return true;
    default:
      return false;
  }
}

std::once_flag g_curl_init;
std::mutex g_config_mu;
std::unique_ptr<S3Config> g_config;

}  // namespace

struct S3Store::Request {
  std::string method = "GET";
  std::string key;    // full object key; "" for the bucket
  std::string query;  // from Query()
  std::string what;   // for messages: "key 'a/b'"
  std::vector<std::string> headers;
  // Body: `body` or a range of the local file `file_fd`.
  std::string_view body;
  int file_fd = -1;
  uint64_t file_offset = 0, file_length = 0;
  std::string payload_sha256 = kEmptySha256;
  // Response.
  long status = 0;
  std::string response;                       // body (error bodies always)
  std::map<std::string, std::string> response_headers;  // lower-case names
  // Streaming download: 2xx body bytes go here instead (false aborts).
  std::function<bool(const char*, size_t)> sink;
  // Before a retry (a sink restarts from scratch).
  std::function<absl::Status()> restart;
  // Whether the body read position is rewound for a retry (set internally).
  uint64_t sent = 0;
};

S3Store::Request S3Store::ObjectRequest(const std::string& key, const char* method) const {
  Request r;
  r.method = method;
  r.key = FullKey(key);
  r.what = absl::StrCat("key ", QuoteForMessage(key));
  return r;
}

namespace {

size_t OnHeader(char* data, size_t size, size_t n, void* user) {
  auto* r = static_cast<S3Store::Request*>(user);
  std::string_view line(data, size * n);
  if (line.substr(0, 5) == "HTTP/") r->response_headers.clear();  // a new response (after 100-continue)
  const size_t colon = line.find(':');
  if (colon != std::string_view::npos) {
    std::string name = absl::AsciiStrToLower(ToAbsl(line.substr(0, colon)));
    r->response_headers[name] = std::string(absl::StripAsciiWhitespace(ToAbsl(line.substr(colon + 1))));
  }
  return size * n;
}

struct WriteCtx {
  S3Store::Request* r;
  CURL* curl;
};

size_t OnBody(char* data, size_t size, size_t n, void* user) {
  auto* w = static_cast<WriteCtx*>(user);
  long status = 0;
  curl_easy_getinfo(w->curl, CURLINFO_RESPONSE_CODE, &status);
  if (w->r->sink && status >= 200 && status < 300) return w->r->sink(data, size * n) ? size * n : 0;
  w->r->response.append(data, size * n);
  return size * n;
}

size_t OnRead(char* buffer, size_t size, size_t n, void* user) {
  auto* r = static_cast<S3Store::Request*>(user);
  const uint64_t total = r->file_fd >= 0 ? r->file_length : r->body.size();
  const size_t want = static_cast<size_t>(std::min<uint64_t>(size * n, total - r->sent));
  if (want == 0) return 0;
  if (r->file_fd >= 0) {
    const ssize_t got = ::pread(r->file_fd, buffer, want, static_cast<off_t>(r->file_offset + r->sent));
    if (got <= 0) return CURL_READFUNC_ABORT;
    r->sent += static_cast<uint64_t>(got);
    return static_cast<size_t>(got);
  }
  std::memcpy(buffer, r->body.data() + r->sent, want);
  r->sent += want;
  return want;
}

}  // namespace

S3Config S3Config::FromEnvironment() {
  S3Config c;
  auto env = [](const char* name) -> std::string {
    const char* v = std::getenv(name);
    return v ? v : "";
  };
  c.access_key = env("AWS_ACCESS_KEY_ID");
  c.secret_key = env("AWS_SECRET_ACCESS_KEY");
  c.session_token = env("AWS_SESSION_TOKEN");
  if (!env("AWS_REGION").empty()) c.region = env("AWS_REGION");
  else if (!env("AWS_DEFAULT_REGION").empty()) c.region = env("AWS_DEFAULT_REGION");
  c.endpoint = !env("AWS_ENDPOINT_URL_S3").empty() ? env("AWS_ENDPOINT_URL_S3") : env("AWS_ENDPOINT_URL");
  const std::string path_style = env("QAAS_S3_PATH_STYLE");
  c.path_style = path_style == "1" || path_style == "true";
  return c;
}

void SetDefaultS3Config(const S3Config& config) {
  std::lock_guard<std::mutex> lock(g_config_mu);
  g_config = std::make_unique<S3Config>(config);
}

S3Config DefaultS3Config() {
  std::lock_guard<std::mutex> lock(g_config_mu);
  if (!g_config) g_config = std::make_unique<S3Config>(S3Config::FromEnvironment());
  return *g_config;
}

absl::StatusOr<std::unique_ptr<S3Store>> S3Store::Create(const std::string& bucket, const std::string& prefix,
                                                         const S3Config& config) {
  std::call_once(g_curl_init, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  if (bucket.empty()) return absl::InvalidArgumentError("s3: the uri names no bucket");
  if (config.access_key.empty() || config.secret_key.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "s3://", bucket, ": no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or --s3_credentials)"));
  }
  if (config.part_size < (5ull << 20)) {
    return absl::InvalidArgumentError("s3: part_size must be at least 5 MiB (S3's minimum part)");
  }
  std::unique_ptr<S3Store> s(new S3Store());
  s->bucket_ = bucket;
  s->prefix_ = prefix;
  s->config_ = config;
  std::string endpoint = config.endpoint.empty() ? absl::StrCat("https://s3.", config.region, ".amazonaws.com")
                                                 : config.endpoint;
  while (!endpoint.empty() && endpoint.back() == '/') endpoint.pop_back();
  const size_t scheme_end = endpoint.find("://");
  if (scheme_end == std::string::npos || endpoint.find('/', scheme_end + 3) != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("s3: endpoint '", endpoint, "' must be http(s)://host[:port]"));
  }
  if (config.path_style) {
    s->scheme_host_ = endpoint;
  } else {
    s->scheme_host_ = absl::StrCat(endpoint.substr(0, scheme_end + 3), bucket, ".", endpoint.substr(scheme_end + 3));
  }
  return s;
}

S3Store::~S3Store() {
  for (void* h : idle_handles_) curl_easy_cleanup(static_cast<CURL*>(h));
}

std::string S3Store::uri() const { return prefix_.empty() ? "s3://" + bucket_ : "s3://" + bucket_ + "/" + prefix_; }

std::string S3Store::Url(const std::string& object_key, const std::string& query) const {
  std::string url = scheme_host_;
  if (config_.path_style) absl::StrAppend(&url, "/", UriEncode(bucket_, false));
  absl::StrAppend(&url, "/", UriEncode(object_key, true));
  if (!query.empty()) absl::StrAppend(&url, "?", query);
  return url;
}

absl::Status S3Store::Perform(Request& r) {
  std::mt19937_64 rng(std::random_device{}());
  absl::Status last;
  for (int attempt = 1; attempt <= std::max(1, config_.max_attempts); ++attempt) {
    if (attempt > 1) {
      ++retries_;
      // Full jitter: a random wait up to the exponential bound.
      const int64_t bound = std::min<int64_t>(config_.max_backoff_ms, config_.base_backoff_ms << (attempt - 2));
      std::this_thread::sleep_for(std::chrono::milliseconds(std::uniform_int_distribution<int64_t>(0, bound)(rng)));
      if (r.restart) {
        QAAS_RETURN_IF_ERROR(r.restart());
      }
    }
    r.status = 0;
    r.sent = 0;
    r.response.clear();
    r.response_headers.clear();
    CURL* curl = nullptr;
    {
      std::lock_guard<std::mutex> lock(handles_mu_);
      if (!idle_handles_.empty()) {
        curl = static_cast<CURL*>(idle_handles_.back());
        idle_handles_.pop_back();
      }
    }
    if (curl) {
      curl_easy_reset(curl);  // options cleared; connections and DNS cache kept
    } else if (!(curl = curl_easy_init())) {
      return absl::InternalError("s3: curl_easy_init failed");
    }
    curl_slist* headers = nullptr;
    headers = curl_slist_append(headers, absl::StrCat("x-amz-content-sha256: ", r.payload_sha256).c_str());
    if (!config_.session_token.empty()) {
      headers = curl_slist_append(headers, absl::StrCat("x-amz-security-token: ", config_.session_token).c_str());
    }
    for (const auto& h : r.headers) headers = curl_slist_append(headers, h.c_str());
    // No "Expect:" override here: libcurl 7.88's SigV4 would sign the header
    // it then leaves out, and every upload would fail its signature check.
    const std::string url = Url(r.key, r.query);
    const std::string sigv4 = absl::StrCat("aws:amz:", config_.region, ":s3");
    WriteCtx wctx{&r, curl};
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_AWS_SIGV4, sigv4.c_str());
    curl_easy_setopt(curl, CURLOPT_USERNAME, config_.access_key.c_str());
    curl_easy_setopt(curl, CURLOPT_PASSWORD, config_.secret_key.c_str());
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(config_.connect_timeout_ms));
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1024L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, static_cast<long>(std::max<int64_t>(1, config_.stall_timeout_ms / 1000)));
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, OnHeader);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, &r);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, OnBody);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &wctx);
    const bool has_body = r.file_fd >= 0 || !r.body.empty();
    if (r.method == "PUT") {
      curl_easy_setopt(curl, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(curl, CURLOPT_READFUNCTION, OnRead);
      curl_easy_setopt(curl, CURLOPT_READDATA, &r);
      curl_easy_setopt(curl, CURLOPT_INFILESIZE_LARGE,
                       static_cast<curl_off_t>(r.file_fd >= 0 ? r.file_length : r.body.size()));
    } else if (r.method == "POST") {
      curl_easy_setopt(curl, CURLOPT_POST, 1L);
      curl_easy_setopt(curl, CURLOPT_POSTFIELDS, has_body ? r.body.data() : "");
      curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(r.body.size()));
    } else if (r.method == "HEAD") {
      curl_easy_setopt(curl, CURLOPT_NOBODY, 1L);
    } else if (r.method != "GET") {
      curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, r.method.c_str());
    }
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    const CURLcode rc = curl_easy_perform(curl);
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &r.status);
    curl_slist_free_all(headers);
    {
      std::lock_guard<std::mutex> lock(handles_mu_);
      idle_handles_.push_back(curl);
    }

    if (rc != CURLE_OK && !(rc == CURLE_WRITE_ERROR && r.status >= 200 && r.status < 300)) {
      last = absl::UnavailableError(absl::StrCat("s3 ", r.method, " ", r.what, ": ", curl_easy_strerror(rc)));
      if (TransientCurlError(rc)) continue;
      return last;
    }
    if (rc == CURLE_WRITE_ERROR) return absl::AbortedError(absl::StrCat("s3 ", r.method, " ", r.what, ": aborted"));
    if (r.status >= 200 && r.status < 300) return absl::OkStatus();
    const std::string code = XmlFirst(r.response, "Code");
    const std::string message = XmlFirst(r.response, "Message");
    const std::string detail = absl::StrCat("s3 ", r.method, " ", r.what, ": HTTP ", r.status,
                                            code.empty() ? "" : " " + code, message.empty() ? "" : ": " + message);
    if (r.status >= 500 || r.status == 429 || code == "SlowDown" || code == "Throttling" ||
        code == "RequestTimeout" || code == "InternalError") {
      last = absl::UnavailableError(detail);
      continue;
    }
    if (r.status == 404) return absl::NotFoundError(detail);
    if (r.status == 403) return absl::PermissionDeniedError(detail);
    if (r.status == 416) return absl::OutOfRangeError(detail);
    if (code == "EntityTooLarge" || code == "QuotaExceeded") return absl::ResourceExhaustedError(detail);
    return absl::InvalidArgumentError(detail);
  }
  return absl::UnavailableError(absl::StrCat(last.message(), " (after ", config_.max_attempts, " attempts)"));
}

absl::StatusOr<std::string> S3Store::Read(std::string_view key) {
  QAAS_ASSIGN_OR_RETURN(auto k, NormalizeObjectKey(key));
  Request r = ObjectRequest(k, "GET");
  QAAS_RETURN_IF_ERROR(Perform(r));
  auto sha = r.response_headers.find(kShaHeader);
  if (sha != r.response_headers.end() && sha->second != Sha256Of(r.response)) {
    return absl::DataLossError(absl::StrCat("s3: key ", QuoteForMessage(k), ": content does not match its sha256 ",
                                            sha->second));
  }
  return std::move(r.response);
}

absl::StatusOr<std::string> S3Store::ReadRange(std::string_view key, uint64_t offset, uint64_t length) {
  QAAS_ASSIGN_OR_RETURN(auto k, NormalizeObjectKey(key));
  const std::string what = absl::StrCat("key ", QuoteForMessage(k));
  // The clipping rules at and past the end, from the object's size.
  auto clip = [&](uint64_t size) -> absl::StatusOr<std::string> {
    if (offset > size) {
      return absl::OutOfRangeError(
          absl::StrCat("s3: ", what, ": offset ", offset, " is past its end (", size, " bytes)"));
    }
    return std::string();
  };
  if (length == 0) {  // nothing to fetch; the key must exist all the same
    QAAS_ASSIGN_OR_RETURN(auto info, Stat(k));
    return clip(info.size);
  }
  Request r = ObjectRequest(k, "GET");
  // One request: the range is clipped by the server; an offset at or past
  // the end is 416, and only then is the size asked for.
  r.headers.push_back(length > UINT64_MAX - offset ? absl::StrCat("Range: bytes=", offset, "-")
                                                   : absl::StrCat("Range: bytes=", offset, "-", offset + length - 1));
  absl::Status st = Perform(r);
  if (absl::IsOutOfRange(st)) {
    QAAS_ASSIGN_OR_RETURN(auto info, Stat(k));
    return clip(info.size);
  }
  if (!st.ok()) return st;
  if (r.status == 206) return std::move(r.response);
  // 200: the server ignored the range and sent the whole object.
  if (offset > r.response.size()) return clip(r.response.size());
  return r.response.substr(offset, std::min<uint64_t>(length, r.response.size() - offset));
}

absl::Status S3Store::Write(std::string_view key, std::string_view data) {
  QAAS_ASSIGN_OR_RETURN(auto k, NormalizeObjectKey(key));
  Request r = ObjectRequest(k, "PUT");
  r.body = data;
  r.payload_sha256 = Sha256Of(data);
  r.headers.push_back(absl::StrCat(kShaHeader, ": ", r.payload_sha256));
  r.headers.push_back("Content-Type: application/octet-stream");
  return Perform(r);
}

absl::Status S3Store::WriteFromFile(std::string_view key, const std::string& local_path) {
  QAAS_ASSIGN_OR_RETURN(auto k, NormalizeObjectKey(key));
  ScopedFd fd(::open(local_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return ErrnoStatus(errno, absl::StrCat("open local file '", local_path, "'"));
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat local file '", local_path, "'"));
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  const bool multipart = size > config_.multipart_threshold;
  QAAS_ASSIGN_OR_RETURN(auto digests, DigestFile(fd.get(), size, multipart ? config_.part_size : 0, local_path));
  if (multipart) return MultipartUpload(k, fd.get(), size, digests);
  const std::string& sha = digests.whole;
  Request r = ObjectRequest(k, "PUT");
  r.file_fd = fd.get();
  r.file_length = size;
  r.payload_sha256 = sha;
  r.headers.push_back(absl::StrCat(kShaHeader, ": ", sha));
  r.headers.push_back("Content-Type: application/octet-stream");
  return Perform(r);
}

absl::Status S3Store::MultipartUpload(const std::string& key, int fd, uint64_t size,
                                      const FileDigests& digests) {
  Request create = ObjectRequest(key, "POST");
  const std::string what = create.what;
  create.query = Query({{"uploads", ""}});
  create.headers.push_back(absl::StrCat(kShaHeader, ": ", digests.whole));
  create.headers.push_back("Content-Type: application/octet-stream");
  QAAS_RETURN_IF_ERROR(Perform(create));
  const std::string upload_id = XmlFirst(create.response, "UploadId");
  if (upload_id.empty()) return absl::InternalError(absl::StrCat("s3 ", what, ": CreateMultipartUpload gave no UploadId"));
  auto abort = [&](absl::Status why) {
    Request a = ObjectRequest(key, "DELETE");
    a.query = Query({{"uploadId", upload_id}});
    (void)Perform(a);  // best effort; an abandoned upload is never visible
    return why;
  };
  std::string complete = "<CompleteMultipartUpload>";
  int part = 1;
  for (uint64_t offset = 0; offset < size; offset += config_.part_size, ++part) {
    const uint64_t length = std::min(config_.part_size, size - offset);
    Request up = ObjectRequest(key, "PUT");
    up.query = Query({{"partNumber", std::to_string(part)}, {"uploadId", upload_id}});
    absl::StrAppend(&up.what, " part ", part);
    up.file_fd = fd;
    up.file_offset = offset;
    up.file_length = length;
    up.payload_sha256 = digests.parts[part - 1];
    if (auto st = Perform(up); !st.ok()) return abort(st);
    auto etag = up.response_headers.find("etag");
    if (etag == up.response_headers.end()) return abort(absl::InternalError(absl::StrCat("s3 ", up.what, ": no ETag")));
    absl::StrAppend(&complete, "<Part><PartNumber>", part, "</PartNumber><ETag>", etag->second, "</ETag></Part>");
    if (config_.on_part_uploaded) {
      config_.on_part_uploaded(part, static_cast<int>(digests.parts.size()));
    }
  }
  complete += "</CompleteMultipartUpload>";
  Request done = ObjectRequest(key, "POST");
  done.query = Query({{"uploadId", upload_id}});
  done.body = complete;
  done.payload_sha256 = Sha256Of(complete);
  done.headers.push_back("Content-Type: application/xml");
  if (auto st = Perform(done); !st.ok()) return abort(st);
  // S3 may answer 200 with an error in the body.
  if (absl::StrContains(done.response, "<Error>")) {
    return abort(absl::UnavailableError(absl::StrCat("s3 ", what, ": CompleteMultipartUpload failed: ",
                                                     XmlFirst(done.response, "Code"), " ",
                                                     XmlFirst(done.response, "Message"))));
  }
  return absl::OkStatus();
}

absl::Status S3Store::ReadToFile(std::string_view key, const std::string& local_path) {
  QAAS_ASSIGN_OR_RETURN(auto k, NormalizeObjectKey(key));
  std::unique_ptr<AtomicFileWriter> writer;
  Sha256 hash;
  absl::Status write_error;
  auto start = [&]() -> absl::Status {
    QAAS_ASSIGN_OR_RETURN(writer, AtomicFileWriter::Create(local_path, absl::StrCat("local file '", local_path, "'")));
    hash.Reset();
    write_error = absl::OkStatus();
    return absl::OkStatus();
  };
  QAAS_RETURN_IF_ERROR(start());
  Request r = ObjectRequest(k, "GET");
  r.sink = [&](const char* p, size_t n) {
    hash.Update(p, n);
    write_error = writer->Append(std::string_view(p, n));
    return write_error.ok();
  };
  r.restart = start;
  absl::Status st = Perform(r);
  if (!write_error.ok()) return write_error;
  if (!st.ok()) return st;
  auto sha = r.response_headers.find(kShaHeader);
  if (sha != r.response_headers.end() && sha->second != hash.Hex()) {
    return absl::DataLossError(absl::StrCat("s3: key ", QuoteForMessage(k),
                                            ": downloaded content does not match its sha256 ", sha->second));
  }
  return writer->Commit();
}

absl::StatusOr<ObjectInfo> S3Store::Stat(std::string_view key) {
  QAAS_ASSIGN_OR_RETURN(auto k, NormalizeObjectKey(key));
  Request r = ObjectRequest(k, "HEAD");
  QAAS_RETURN_IF_ERROR(Perform(r));
  ObjectInfo info;
  info.key = k;
  (void)absl::SimpleAtoi(r.response_headers["content-length"], &info.size);
  info.mtime_unix_ms = ParseHttpDateMs(r.response_headers["last-modified"]);
  return info;
}

absl::StatusOr<std::vector<ObjectInfo>> S3Store::List(std::string_view prefix) {
  QAAS_ASSIGN_OR_RETURN(auto p, NormalizeListPrefix(prefix));
  const std::string full = prefix_.empty() ? p : prefix_ + "/" + p;
  std::vector<ObjectInfo> out;
  std::string token;
  do {
    std::map<std::string, std::string> params = {
        {"list-type", "2"}, {"prefix", full}, {"max-keys", std::to_string(config_.list_page_size)}};
    if (!token.empty()) params["continuation-token"] = token;
    Request r;
    r.key = "";
    r.query = Query(params);
    r.what = absl::StrCat("list ", QuoteForMessage(p));
    QAAS_RETURN_IF_ERROR(Perform(r));
    for (std::string_view contents : XmlAll(r.response, "Contents")) {
      ObjectInfo info;
      std::string key = XmlFirst(contents, "Key");
      if (!prefix_.empty()) {
        if (key.rfind(prefix_ + "/", 0) != 0) continue;
        key = key.substr(prefix_.size() + 1);
      }
      info.key = std::move(key);
      (void)absl::SimpleAtoi(XmlFirst(contents, "Size"), &info.size);
      info.mtime_unix_ms = ParseIso8601Ms(XmlFirst(contents, "LastModified"));
      out.push_back(std::move(info));
    }
    token = XmlFirst(r.response, "IsTruncated") == "true" ? XmlFirst(r.response, "NextContinuationToken") : "";
  } while (!token.empty());
  std::sort(out.begin(), out.end(), [](const ObjectInfo& a, const ObjectInfo& b) { return a.key < b.key; });
  return out;
}

absl::Status S3Store::Delete(std::string_view key) {
  QAAS_ASSIGN_OR_RETURN(auto k, NormalizeObjectKey(key));
  // S3 answers a DELETE of a missing key with success: look first.
  if (auto info = Stat(k); !info.ok()) return info.status();
  Request r = ObjectRequest(k, "DELETE");
  return Perform(r);
}

absl::Status S3Store::CreateBucket() {
  Request r;
  r.method = "PUT";
  r.key = "";
  r.what = absl::StrCat("bucket '", bucket_, "'");
  absl::Status st = Perform(r);
  if (absl::IsInvalidArgument(st) && (absl::StrContains(st.message(), "BucketAlreadyOwnedByYou") ||
                                      absl::StrContains(st.message(), "BucketAlreadyExists"))) {
    return absl::OkStatus();
  }
  return st;
}

}  // namespace qaas::storage
