#include "storage/uri.h"

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "storage/string_view_compat.h"

namespace qaas::storage {
namespace {

constexpr std::string_view kSchemeSeparator = "://";

// Splits `path` on '/' and resolves "", "." and ".." lexically. Returns false
// if a ".." would climb above the first component.
bool ResolveComponents(std::string_view path, std::vector<absl::string_view>* out) {
  for (absl::string_view part : absl::StrSplit(ToAbsl(path), '/')) {
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      if (out->empty()) return false;
      out->pop_back();
      continue;
    }
    out->push_back(part);
  }
  return true;
}

bool IsValidScheme(std::string_view scheme) {
  // RFC 3986 section 3.1: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
  if (scheme.empty() || !absl::ascii_isalpha(static_cast<unsigned char>(scheme[0]))) return false;
  for (char c : scheme) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '+' && c != '-' && c != '.') {
      return false;
    }
  }
  return true;
}

// The subset of the S3 bucket naming rules that can be checked lexically:
// 3 to 63 characters of lower-case letters, digits, '.' and '-', starting and
// ending with a letter or digit.
bool IsValidBucket(std::string_view bucket) {
  if (bucket.size() < 3 || bucket.size() > 63) return false;
  for (char c : bucket) {
    if (!absl::ascii_islower(static_cast<unsigned char>(c)) &&
        !absl::ascii_isdigit(static_cast<unsigned char>(c)) && c != '.' && c != '-') {
      return false;
    }
  }
  auto alnum = [](char c) { return absl::ascii_isalnum(static_cast<unsigned char>(c)); };
  return alnum(bucket.front()) && alnum(bucket.back());
}

absl::StatusOr<Uri> FinishFileUri(std::string_view text, Uri uri) {
  if (!uri.authority.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("uri ", QuoteForMessage(text), " names host ", QuoteForMessage(uri.authority),
                     "; file uris must be local, written file:///absolute/path"));
  }
  if (uri.path.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("uri ", QuoteForMessage(text), " has no path; write file:///absolute/path"));
  }
  absl::StatusOr<std::string> path = NormalizeLocalPath(uri.path);
  if (!path.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("uri ", QuoteForMessage(text), ": ", path.status().message()));
  }
  uri.path = *std::move(path);
  return uri;
}

absl::StatusOr<Uri> FinishS3Uri(std::string_view text, Uri uri) {
  if (!IsValidBucket(uri.authority)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "uri ", QuoteForMessage(text), " has bucket ", QuoteForMessage(uri.authority),
        "; bucket names are 3-63 characters of a-z, 0-9, '.' and '-', written s3://bucket/prefix"));
  }
  std::string_view prefix = uri.path;
  if (!prefix.empty() && prefix.front() == '/') prefix.remove_prefix(1);
  absl::StatusOr<std::string> key = NormalizeKey(prefix);
  if (!key.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("uri ", QuoteForMessage(text), ": ", key.status().message()));
  }
  uri.path = *std::move(key);
  return uri;
}

}  // namespace

absl::StatusOr<Uri> ParseUri(std::string_view text) {
  if (text.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("uri ", QuoteForMessage(text), " contains a NUL byte"));
  }
  const size_t sep = text.find(kSchemeSeparator);
  if (sep == std::string_view::npos || !IsValidScheme(text.substr(0, sep))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "uri ", QuoteForMessage(text),
        " is not of the form scheme://location (e.g. file:///abs/dir or s3://bucket/prefix)"));
  }
  Uri uri;
  uri.scheme = absl::AsciiStrToLower(ToAbsl(text.substr(0, sep)));
  std::string_view rest = text.substr(sep + kSchemeSeparator.size());
  const size_t slash = rest.find('/');
  uri.authority = std::string(rest.substr(0, slash));
  uri.path = slash == std::string_view::npos ? "" : std::string(rest.substr(slash));

  if (uri.scheme == "file") return FinishFileUri(text, std::move(uri));
  if (uri.scheme == "s3") return FinishS3Uri(text, std::move(uri));
  return uri;
}

absl::StatusOr<std::string> NormalizeKey(std::string_view key) {
  if (key.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("key ", QuoteForMessage(key), " contains a NUL byte"));
  }
  if (!key.empty() && key.front() == '/') {
    return absl::InvalidArgumentError(absl::StrCat(
        "key ", QuoteForMessage(key), " is absolute; keys are relative to the store root"));
  }
  std::vector<absl::string_view> parts;
  if (!ResolveComponents(key, &parts)) {
    return absl::InvalidArgumentError(
        absl::StrCat("key ", QuoteForMessage(key), " escapes the store root with '..'"));
  }
  return absl::StrJoin(parts, "/");
}

std::string JoinKey(std::string_view prefix, std::string_view key) {
  while (!prefix.empty() && prefix.back() == '/') prefix.remove_suffix(1);
  while (!key.empty() && key.front() == '/') key.remove_prefix(1);
  if (prefix.empty()) return std::string(key);
  if (key.empty()) return std::string(prefix);
  return absl::StrCat(ToAbsl(prefix), "/", ToAbsl(key));
}

absl::StatusOr<std::string> NormalizeLocalPath(std::string_view abs_path) {
  if (abs_path.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("path ", QuoteForMessage(abs_path), " contains a NUL byte"));
  }
  if (abs_path.empty() || abs_path.front() != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("path ", QuoteForMessage(abs_path), " is not absolute"));
  }
  std::vector<absl::string_view> parts;
  for (absl::string_view part : absl::StrSplit(ToAbsl(abs_path), '/')) {
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      if (!parts.empty()) parts.pop_back();  // "/.." is "/", as for the kernel
      continue;
    }
    parts.push_back(part);
  }
  return absl::StrCat("/", absl::StrJoin(parts, "/"));
}

bool PathIsWithin(std::string_view path, std::string_view root) {
  if (root.size() > 1 && root.back() == '/') root.remove_suffix(1);
  if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  if (path.substr(0, root.size()) != root) return false;
  if (path.size() == root.size()) return true;
  // "/" is a prefix of every absolute path; otherwise the next character
  // must start a new component, so "/a/bc" is not within "/a/b".
  return root == "/" || path[root.size()] == '/';
}

std::string QuoteForMessage(std::string_view text) {
  std::string out = "'";
  for (char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (byte < 0x20 || byte == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      out += {'\\', 'x', kHex[byte >> 4], kHex[byte & 0xf]};
    } else {
      out.push_back(c);
    }
  }
  out.push_back('\'');
  return out;
}

}  // namespace qaas::storage
