#include "storage/s3_flags.h"

#include <fstream>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "quant/util/status_macros.h"

ABSL_FLAG(std::string, s3_endpoint, "",
          "S3 endpoint, http(s)://host[:port] (default: $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL, else AWS)");
ABSL_FLAG(std::string, s3_region, "", "S3 region (default: $AWS_REGION, $AWS_DEFAULT_REGION, else us-east-1)");
ABSL_FLAG(bool, s3_path_style, false,
          "path-style S3 addressing (endpoint/bucket/key) instead of virtual-host (bucket.endpoint/key); "
          "also $QAAS_S3_PATH_STYLE=1");
ABSL_FLAG(std::string, s3_credentials_file, "",
          "file of AWS_ACCESS_KEY_ID=... / AWS_SECRET_ACCESS_KEY=... lines (a mounted Secret); "
          "default: those environment variables");

namespace qaas::storage {

absl::Status LoadS3CredentialsFile(const std::string& path, S3Config* config) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("S3 credentials file ", path, ": cannot be read"));
  S3Config c = *config;
  c.access_key.clear();
  c.secret_key.clear();
  c.session_token.clear();
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    std::string text(absl::StripAsciiWhitespace(line));
    if (text.empty() || text[0] == '#') continue;
    if (text.rfind("export ", 0) == 0) text = text.substr(7);
    const size_t eq = text.find('=');
    const std::string key = eq == std::string::npos ? text : text.substr(0, eq);
    std::string value = eq == std::string::npos ? "" : text.substr(eq + 1);
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'') && value.back() == value.front()) {
      value = value.substr(1, value.size() - 2);
    }
    if (key == "AWS_ACCESS_KEY_ID") c.access_key = value;
    else if (key == "AWS_SECRET_ACCESS_KEY") c.secret_key = value;
    else if (key == "AWS_SESSION_TOKEN") c.session_token = value;
    else {
      return absl::InvalidArgumentError(absl::StrCat("S3 credentials file ", path, " line ", n, ": expected "
                                                     "AWS_ACCESS_KEY_ID=, AWS_SECRET_ACCESS_KEY= or AWS_SESSION_TOKEN="));
    }
  }
  if (c.access_key.empty() || c.secret_key.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("S3 credentials file ", path, " needs both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"));
  }
  *config = c;
  return absl::OkStatus();
}

absl::Status ConfigureS3FromFlags() {
  S3Config c = S3Config::FromEnvironment();
  if (!absl::GetFlag(FLAGS_s3_endpoint).empty()) c.endpoint = absl::GetFlag(FLAGS_s3_endpoint);
  if (!absl::GetFlag(FLAGS_s3_region).empty()) c.region = absl::GetFlag(FLAGS_s3_region);
  if (absl::GetFlag(FLAGS_s3_path_style)) c.path_style = true;
  if (!absl::GetFlag(FLAGS_s3_credentials_file).empty()) {
    QAAS_RETURN_IF_ERROR(LoadS3CredentialsFile(absl::GetFlag(FLAGS_s3_credentials_file), &c));
  }
  SetDefaultS3Config(c);
  return absl::OkStatus();
}

}  // namespace qaas::storage
