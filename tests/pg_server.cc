#include "tests/pg_server.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "quant/util/status_macros.h"
#include "tests/test_util.h"

namespace qaas::testing {
namespace {

int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  close(fd);
  return port;
}

std::string FindBindir() {
  namespace fs = std::filesystem;
  if (const char* env = std::getenv("QAAS_PG_BINDIR")) return env;
  std::vector<std::string> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/usr/lib/postgresql", ec)) {
    if (fs::exists(e.path() / "bin" / "initdb")) found.push_back((e.path() / "bin").string());
  }
  std::sort(found.begin(), found.end(), [](const std::string& a, const std::string& b) {
    return a.size() != b.size() ? a.size() < b.size() : a < b;  // "9" < "15"
  });
  return found.empty() ? "" : found.back();
}

}  // namespace

absl::StatusOr<std::unique_ptr<PgServer>> PgServer::Start() {
  std::unique_ptr<PgServer> s(new PgServer());
  s->bindir_ = FindBindir();
  if (s->bindir_.empty()) {
    return absl::NotFoundError("no PostgreSQL server (/usr/lib/postgresql/*/bin/initdb): run scripts/setup");
  }
  s->dir_ = MakeTempDir();
  if (geteuid() == 0) {
    s->as_user_ = "setpriv --reuid=nobody --regid=nogroup --clear-groups ";
    if (std::system(("chown nobody:nogroup '" + s->dir_ + "'").c_str()) != 0) {
      return absl::InternalError("cannot hand " + s->dir_ + " to nobody");
    }
  }
  QAAS_RETURN_IF_ERROR(s->Run(absl::StrCat("'", s->bindir_, "/initdb' -D '", s->dir_,
                                           "/data' -A trust -U qaas --no-sync -E UTF8 > '", s->dir_,
                                           "/initdb.log' 2>&1")));
  s->port_ = FreePort();
  QAAS_RETURN_IF_ERROR(s->Restart());
  return s;
}

PgServer::~PgServer() {
  if (running_) (void)Stop(true);
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

absl::Status PgServer::Run(const std::string& command) const {
  if (std::system((as_user_ + "sh -c \"" + command + "\"").c_str()) != 0) {
    std::ifstream log(dir_ + "/server.log");
    std::stringstream ss;
    ss << log.rdbuf();
    return absl::InternalError(absl::StrCat("PostgreSQL: '", command, "' failed; server log:\n", ss.str()));
  }
  return absl::OkStatus();
}

absl::Status PgServer::Restart() {
  // fsync off: these databases are thrown away; durability is not under test.
  auto st = Run(absl::StrCat("'", bindir_, "/pg_ctl' -D '", dir_, "/data' -l '", dir_, "/server.log' -w -t 60 -o '-h 127.0.0.1 -p ",
                             port_, " -k ", dir_, " -c fsync=off -c max_connections=300' start > /dev/null"));
  running_ = st.ok();
  return st;
}

absl::Status PgServer::Stop(bool crash) {
  running_ = false;
  return Run(absl::StrCat("'", bindir_, "/pg_ctl' -D '", dir_, "/data' -w -m ", crash ? "immediate" : "fast",
                          " stop > /dev/null"));
}

absl::StatusOr<std::string> PgServer::NewDatabase(const std::string& name) {
  QAAS_RETURN_IF_ERROR(Run(absl::StrCat("'", bindir_, "/createdb' -h 127.0.0.1 -p ", port_, " -U qaas ", name)));
  return absl::StrCat("postgresql://qaas@127.0.0.1:", port_, "/", name);
}

}  // namespace qaas::testing
