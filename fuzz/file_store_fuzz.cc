// libFuzzer target: keys against a real directory tree with symlinks. The
// tree (made once, in a temp directory) holds a root with plain files, a
// symlink that stays inside, and symlinks and ".." tricks that lead outside.
// Whatever the key, and whichever resolution (openat2 or the O_NOFOLLOW walk,
// picked by the first byte), the store must never read a file outside the
// root, never write or delete anything outside it, and never crash.
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "storage/beneath.h"
#include "storage/file_store.h"

namespace {

namespace fs = std::filesystem;

struct Tree {
  std::string base, root, outside;
  std::unique_ptr<qaas::storage::FileStore> store;
};

void Put(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

Tree& GetTree() {
  static Tree* tree = [] {
    auto* t = new Tree;
    char tmpl[] = "/tmp/qaas-fuzz-XXXXXX";
    t->base = ::mkdtemp(tmpl);
    t->root = t->base + "/root";
    t->outside = t->base + "/outside";
    fs::create_directories(t->root + "/a/b");
    fs::create_directories(t->outside + "/d");
    Put(t->root + "/a/b/file", "inside");
    Put(t->root + "/top", "inside");
    Put(t->outside + "/secret", "OUTSIDE");
    Put(t->outside + "/d/secret", "OUTSIDE");
    fs::create_directory_symlink("a", t->root + "/in");          // stays inside
    fs::create_directory_symlink("..", t->root + "/up");         // the parent of the root
    fs::create_directory_symlink(t->outside, t->root + "/abs");  // absolute, outside
    fs::create_directory_symlink("../outside/d", t->root + "/a/rel");
    fs::create_symlink("../outside/secret", t->root + "/leak");
    fs::create_directory_symlink("/", t->root + "/a/b/slash");
    auto store = qaas::storage::FileStore::Create(t->root);
    if (!store.ok()) std::abort();
    t->store = *std::move(store);
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(GetTree().base, ec);
    });
    return t;
  }();
  return *tree;
}

// Everything outside the root must stay exactly as made.
void CheckOutsideUntouched(const Tree& t) {
  size_t entries = 0;
  for (const auto& e : fs::recursive_directory_iterator(t.outside)) {
    ++entries;
    if (e.is_regular_file()) {
      std::ifstream in(e.path());
      std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (text != "OUTSIDE") {
        std::fprintf(stderr, "%s was changed\n", e.path().c_str());
        std::abort();
      }
    }
  }
  size_t at_base = 0;
  for (const auto& e : fs::directory_iterator(t.base)) (void)e, ++at_base;
  if (entries != 3 || at_base != 2) {
    std::fprintf(stderr, "something was created or removed outside the root\n");
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0 || size > 256) return 0;
  Tree& t = GetTree();
  qaas::storage::ForceNoFollowWalkForTesting(data[0] & 1);
  const std::string key(reinterpret_cast<const char*>(data) + 1, size - 1);
  auto read = t.store->Read(key);
  if (read.ok() && read->find("OUTSIDE") != std::string::npos) {
    std::fprintf(stderr, "key '%s' read a file outside the root\n", key.c_str());
    std::abort();
  }
  auto listed = t.store->List(key);
  if (listed.ok()) {
    for (const auto& o : *listed) {
      auto r = t.store->Read(o.key);
      if (r.ok() && r->find("OUTSIDE") != std::string::npos) std::abort();
    }
  }
  if (data[0] & 2) {
    if (t.store->Write(key, "inside").ok()) t.store->Delete(key).IgnoreError();
  } else {
    // Deleting an existing file inside is allowed: put it back.
    if (t.store->Delete(key).ok()) {
      Put(t.root + "/a/b/file", "inside");
      Put(t.root + "/top", "inside");
    }
  }
  CheckOutsideUntouched(t);
  return 0;
}
