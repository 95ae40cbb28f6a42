#include "server/auth.h"

#include <filesystem>

#include "gtest/gtest.h"
#include "storage/sha256.h"
#include "tests/test_util.h"

namespace qaas::server {
namespace {

using qaas::testing::ScopedTempDir;
using qaas::testing::WriteLocalFile;

std::string Line(const std::string& token, const std::string& principal) {
  return storage::Sha256Hex(token) + " " + principal + "\n";
}

TEST(Principal, ParsesTenantsAndWorkers) {
  auto t = ParsePrincipal("tenant:acme-1");
  QAAS_ASSERT_OK(t);
  EXPECT_EQ(t->kind, Principal::Kind::kTenant);
  EXPECT_EQ(t->name, "acme-1");
  auto w = ParsePrincipal("worker");
  QAAS_ASSERT_OK(w);
  EXPECT_EQ(w->kind, Principal::Kind::kWorker);
  EXPECT_EQ(PrincipalString(*w), "worker:worker");
  for (const char* bad : {"tenant:", "tenant:a b", "admin:x", "acme", "tenant:x/y"}) {
    SCOPED_TRACE(bad);
    QAAS_EXPECT_CODE(ParsePrincipal(bad), kInvalidArgument);
  }
}

TEST(TokenAuthenticator, AuthenticatesListedTokensOnly) {
  ScopedTempDir dir;
  const std::string path = dir.path() + "/tokens";
  WriteLocalFile(path, "# comment\n\n" + Line("token-a", "tenant:a") + "  " + Line("token-w", "worker:pool"));
  auto auth = TokenAuthenticator::Load(path);
  QAAS_ASSERT_OK(auth);
  EXPECT_EQ((*auth)->size(), 2u);
  auto a = (*auth)->Authenticate("Bearer token-a");
  QAAS_ASSERT_OK(a);
  EXPECT_EQ(a->kind, Principal::Kind::kTenant);
  EXPECT_EQ(a->name, "a");
  auto w = (*auth)->Authenticate("Bearer token-w");
  QAAS_ASSERT_OK(w);
  EXPECT_EQ(w->kind, Principal::Kind::kWorker);
  EXPECT_EQ(w->name, "pool");

  QAAS_EXPECT_CODE((*auth)->Authenticate(""), kUnauthenticated);
  QAAS_EXPECT_CODE((*auth)->Authenticate("token-a"), kUnauthenticated);        // no scheme
  QAAS_EXPECT_CODE((*auth)->Authenticate("Basic token-a"), kUnauthenticated);  // wrong scheme
  QAAS_EXPECT_CODE((*auth)->Authenticate("Bearer token-b"), kUnauthenticated);
  QAAS_EXPECT_CODE((*auth)->Authenticate("Bearer " + storage::Sha256Hex("token-a")), kUnauthenticated);
  auto unknown = (*auth)->Authenticate("Bearer secret-guess");
  EXPECT_EQ(unknown.status().message().find("secret-guess"), std::string::npos) << "echoes the token";
}

TEST(TokenAuthenticator, MalformedFilesNameTheFileAndLine) {
  ScopedTempDir dir;
  const std::string path = dir.path() + "/tokens";
  struct Case {
    std::string content;
    std::string says;
  } cases[] = {
      {Line("t", "tenant:a") + "plain-token tenant:b\n", "line 2: the first field must be a token's SHA-256"},
      {Line("t", "tenant:a") + Line("t", "tenant:b"), "line 2: this token hash is listed twice"},
      {Line("t", "tenant:a extra"), "line 1: expected '<sha256 hex> <principal>'"},
      {Line("t", "root"), "line 1: principal 'root'"},
      {"# nothing\n", "lists no token"},
  };
  for (const auto& c : cases) {
    WriteLocalFile(path, c.content);
    auto auth = TokenAuthenticator::Load(path);
    SCOPED_TRACE(c.content);
    QAAS_EXPECT_CODE(auth, kInvalidArgument);
    EXPECT_NE(auth.status().message().find(c.says), std::string::npos) << auth.status();
    EXPECT_NE(auth.status().message().find(path), std::string::npos) << auth.status();
  }
  QAAS_EXPECT_CODE(TokenAuthenticator::Load(dir.path() + "/missing"), kNotFound);
}

// A Kubernetes Secret volume: keys are symlinks into a ..data directory that
// is swapped atomically on update.
TEST(TokenAuthenticator, ReadsASecretMountAndReloadsRotations) {
  ScopedTempDir dir;
  namespace fs = std::filesystem;
  const std::string mount = dir.path() + "/secret";
  fs::create_directories(mount + "/..2026_v1");
  WriteLocalFile(mount + "/..2026_v1/tenants", Line("token-a", "tenant:a") + Line("token-b", "tenant:b"));
  WriteLocalFile(mount + "/..2026_v1/workers", Line("token-w", "worker"));
  fs::create_directory_symlink("..2026_v1", mount + "/..data");
  fs::create_symlink("..data/tenants", mount + "/tenants");
  fs::create_symlink("..data/workers", mount + "/workers");
  auto auth = TokenAuthenticator::Load(mount);
  QAAS_ASSERT_OK(auth);
  EXPECT_EQ((*auth)->size(), 3u);
  QAAS_EXPECT_OK((*auth)->Authenticate("Bearer token-b"));

  // Rotation: b revoked, c added.
  fs::create_directories(mount + "/..2026_v2");
  WriteLocalFile(mount + "/..2026_v2/tenants", Line("token-a", "tenant:a") + Line("token-c", "tenant:c"));
  WriteLocalFile(mount + "/..2026_v2/workers", Line("token-w", "worker"));
  fs::remove(mount + "/..data");
  fs::create_directory_symlink("..2026_v2", mount + "/..data");
  bool changed = false;
  QAAS_ASSERT_OK((*auth)->Reload(&changed));
  EXPECT_TRUE(changed);
  QAAS_EXPECT_CODE((*auth)->Authenticate("Bearer token-b"), kUnauthenticated);
  QAAS_EXPECT_OK((*auth)->Authenticate("Bearer token-c"));
  QAAS_ASSERT_OK((*auth)->Reload(&changed));
  EXPECT_FALSE(changed);

  // A broken update keeps the tokens in force.
  WriteLocalFile(mount + "/..2026_v2/tenants", "not a token line\n");
  EXPECT_FALSE((*auth)->Reload(&changed).ok());
  QAAS_EXPECT_OK((*auth)->Authenticate("Bearer token-c"));
}

TEST(TokenAuthenticator, AddedTokensSurviveReloads) {
  ScopedTempDir dir;
  const std::string path = dir.path() + "/tokens";
  WriteLocalFile(path, Line("token-a", "tenant:a"));
  auto auth = TokenAuthenticator::Load(path);
  QAAS_ASSERT_OK(auth);
  (*auth)->AddToken("internal", Principal{Principal::Kind::kWorker, "embedded"});
  WriteLocalFile(path, Line("token-x", "tenant:x"));
  QAAS_ASSERT_OK((*auth)->Reload());
  QAAS_EXPECT_OK((*auth)->Authenticate("Bearer internal"));
  QAAS_EXPECT_CODE((*auth)->Authenticate("Bearer token-a"), kUnauthenticated);
}

TEST(TokenAuthenticator, NewTokensAreRandomAndTheirLineAuthenticatesThem) {
  auto t1 = NewToken();
  auto t2 = NewToken();
  QAAS_ASSERT_OK(t1);
  QAAS_ASSERT_OK(t2);
  EXPECT_NE(*t1, *t2);
  EXPECT_EQ(t1->size(), 5u + 64u);
  EXPECT_EQ(t1->rfind("qaas_", 0), 0u);
  ScopedTempDir dir;
  WriteLocalFile(dir.path() + "/tokens", TokenLine(*t1, Principal{Principal::Kind::kTenant, "acme"}) + "\n");
  auto auth = TokenAuthenticator::Load(dir.path() + "/tokens");
  QAAS_ASSERT_OK(auth);
  auto p = (*auth)->Authenticate("Bearer " + *t1);
  QAAS_ASSERT_OK(p);
  EXPECT_EQ(p->name, "acme");
  QAAS_EXPECT_CODE((*auth)->Authenticate("Bearer " + *t2), kUnauthenticated);
}

}  // namespace
}  // namespace qaas::server
