#include "server/auth.h"

#include <openssl/rand.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "quant/util/status_macros.h"
#include "storage/sha256.h"

namespace qaas::server {
namespace {

bool IsHex64(absl::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

bool ValidName(absl::string_view s) {
  return !s.empty() && s.size() <= 63 && std::all_of(s.begin(), s.end(), [](char c) {
           return absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.';
         });
}

// Parses one file's lines into `table`.
absl::Status ParseFile(const std::string& file, std::map<std::string, Principal>* table) {
  std::ifstream in(file);
  if (!in) return absl::NotFoundError(absl::StrCat("tokens file ", file, ": cannot be read"));
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    absl::string_view text = absl::StripAsciiWhitespace(line);
    if (text.empty() || text[0] == '#') continue;
    std::vector<absl::string_view> fields = absl::StrSplit(text, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    const std::string where = absl::StrCat("tokens file ", file, " line ", n);
    if (fields.size() != 2) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": expected '<sha256 hex> <principal>', got ",
                                                     fields.size(), " fields"));
    }
    std::string hash = absl::AsciiStrToLower(fields[0]);
    if (absl::StartsWith(hash, "sha256:")) hash = hash.substr(7);
    if (!IsHex64(hash)) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": the first field must be a token's SHA-256 (64 hex digits), not a token"));
    }
    auto principal = ParsePrincipal(fields[1]);
    if (!principal.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", principal.status().message()));
    if (!table->emplace(hash, *principal).second) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": this token hash is listed twice"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Principal> ParsePrincipal(absl::string_view text) {
  Principal p;
  std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(text, absl::MaxSplits(':', 1));
  if (kv.first == "tenant") {
    p.kind = Principal::Kind::kTenant;
    if (!ValidName(kv.second)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "principal '", text, "': a tenant name is 1-63 characters of letters, digits, '-', '_' or '.'"));
    }
  } else if (kv.first == "worker") {
    p.kind = Principal::Kind::kWorker;
    if (kv.second.empty()) kv.second = "worker";
    if (!ValidName(kv.second)) {
      return absl::InvalidArgumentError(absl::StrCat("principal '", text, "': bad worker credential name"));
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("principal '", text, "': expected tenant:<name> or worker[:<name>]"));
  }
  p.name = std::string(kv.second);
  return p;
}

std::string PrincipalString(const Principal& p) {
  return absl::StrCat(p.kind == Principal::Kind::kTenant ? "tenant:" : "worker:", p.name);
}

absl::StatusOr<TokenAuthenticator::Table> TokenAuthenticator::ReadTable(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) return absl::NotFoundError(absl::StrCat("tokens file ", path, " does not exist"));
  std::vector<std::string> files;
  if (fs::is_directory(path, ec)) {
    for (const auto& e : fs::directory_iterator(path, ec)) {
      const std::string name = e.path().filename().string();
      if (!name.empty() && name[0] != '.' && fs::is_regular_file(e.path(), ec)) files.push_back(e.path().string());
    }
    std::sort(files.begin(), files.end());
  } else {
    files.push_back(path);
  }
  Table table;
  for (const auto& f : files) {
    QAAS_RETURN_IF_ERROR(ParseFile(f, &table));
  }
  if (table.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("tokens file ", path, " lists no token: nobody could call"));
  }
  return table;
}

absl::StatusOr<std::unique_ptr<TokenAuthenticator>> TokenAuthenticator::Load(const std::string& path) {
  QAAS_ASSIGN_OR_RETURN(auto table, ReadTable(path));
  std::unique_ptr<TokenAuthenticator> a(new TokenAuthenticator());
  a->path_ = path;
  a->table_ = std::move(table);
  return a;
}

std::unique_ptr<TokenAuthenticator> TokenAuthenticator::InMemory() {
  return std::unique_ptr<TokenAuthenticator>(new TokenAuthenticator());
}

absl::Status TokenAuthenticator::Reload(bool* changed) {
  if (changed) *changed = false;
  if (path_.empty()) return absl::OkStatus();
  QAAS_ASSIGN_OR_RETURN(auto table, ReadTable(path_));
  std::lock_guard<std::mutex> lock(mu_);
  const bool differs = table.size() != table_.size() ||
                       !std::equal(table.begin(), table.end(), table_.begin(), [](const auto& a, const auto& b) {
                         return a.first == b.first && a.second.kind == b.second.kind && a.second.name == b.second.name;
                       });
  if (differs) table_ = std::move(table);
  if (changed) *changed = differs;
  return absl::OkStatus();
}

void TokenAuthenticator::AddToken(const std::string& token, const Principal& principal) {
  std::lock_guard<std::mutex> lock(mu_);
  fixed_[storage::Sha256Hex(token)] = principal;
}

absl::StatusOr<Principal> TokenAuthenticator::Authenticate(absl::string_view authorization) const {
  if (authorization.empty()) {
    return absl::UnauthenticatedError("missing credentials: send the header 'authorization: Bearer <token>'");
  }
  absl::string_view token = absl::StripAsciiWhitespace(authorization);
  if (!absl::ConsumePrefix(&token, "Bearer ") && !absl::ConsumePrefix(&token, "bearer ")) {
    return absl::UnauthenticatedError("the authorization header must be 'Bearer <token>'");
  }
  token = absl::StripAsciiWhitespace(token);
  const std::string hash = storage::Sha256Hex(std::string_view(token.data(), token.size()));
  std::lock_guard<std::mutex> lock(mu_);
  for (const Table* t : {&fixed_, &table_}) {
    if (auto it = t->find(hash); it != t->end()) return it->second;
  }
  return absl::UnauthenticatedError("unknown or revoked token");
}

size_t TokenAuthenticator::size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return table_.size() + fixed_.size();
}

absl::StatusOr<std::string> NewToken() {
  unsigned char bytes[32];
  if (RAND_bytes(bytes, sizeof bytes) != 1) return absl::InternalError("no randomness from OpenSSL's RAND_bytes");
  return absl::StrCat("qaas_", absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(bytes), sizeof bytes)));
}

std::string TokenLine(const std::string& token, const Principal& principal) {
  return absl::StrCat(storage::Sha256Hex(token), " ", PrincipalString(principal));
}

}  // namespace qaas::server
