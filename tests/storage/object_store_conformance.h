// The conformance suite every ObjectStore driver must pass. A driver's test
// instantiates it with a factory for fresh, empty stores:
//
//   INSTANTIATE_TEST_SUITE_P(FileStore, ObjectStoreConformance,
//                            ::testing::Values(ObjectStoreFactory([] { ... })));
//
// The tests live in object_store_conformance.cc, which must be compiled into
// the driver's test executable itself (not linked from a static library,
// where the linker would drop the unreferenced test registrations).
#ifndef QAAS_TESTS_STORAGE_OBJECT_STORE_CONFORMANCE_H_
#define QAAS_TESTS_STORAGE_OBJECT_STORE_CONFORMANCE_H_

#include <functional>
#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "storage/object_store.h"

namespace qaas::storage {

// Returns a new, empty store, not shared with any store returned before.
// Returning nullptr fails the test.
using ObjectStoreFactory = std::function<std::unique_ptr<ObjectStore>()>;

class ObjectStoreConformance : public ::testing::TestWithParam<ObjectStoreFactory> {
 protected:
  void SetUp() override;
  void TearDown() override;

  // A fresh local directory for WriteFromFile/ReadToFile, removed afterwards.
  const std::string& local_dir() const { return local_dir_; }

  std::unique_ptr<ObjectStore> store_;

 private:
  std::string local_dir_;
};

// The keys of `infos`, in order.
inline std::vector<std::string> KeysOf(const std::vector<ObjectInfo>& infos) {
  std::vector<std::string> keys;
  for (const auto& i : infos) keys.push_back(i.key);
  return keys;
}

}  // namespace qaas::storage

#endif  // QAAS_TESTS_STORAGE_OBJECT_STORE_CONFORMANCE_H_
