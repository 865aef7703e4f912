// The few assertions the mount core's unit tests need: each failure prints where and what, and the
// test exits 1 when any failed (ctest runs these under ASan + UBSan).
#pragma once

#include <iostream>
#include <string>

#include "mount/error.h"

namespace o3mount {
inline std::ostream& operator<<(std::ostream& os, ErrorKind k) { return os << errorKindName(k); }
}  // namespace o3mount

namespace o3mount::test {

inline int failures = 0;

#define O3_CHECK(cond)                                                                   \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      std::cerr << __FILE__ << ":" << __LINE__ << ": check failed: " #cond << std::endl; \
      ++o3mount::test::failures;                                                         \
    }                                                                                    \
  } while (0)

#define O3_CHECK_EQ(a, b)                                                                                               \
  do {                                                                                                                  \
    const auto o3_a = (a);                                                                                              \
    const auto o3_b = (b);                                                                                              \
    if (!(o3_a == o3_b)) {                                                                                              \
      std::cerr << __FILE__ << ":" << __LINE__ << ": " #a " == " #b " failed: " << o3_a << " != " << o3_b << std::endl; \
      ++o3mount::test::failures;                                                                                        \
    }                                                                                                                   \
  } while (0)

inline int finish(const char* name) {
  if (failures)
    std::cerr << name << ": " << failures << " check(s) failed" << std::endl;
  else
    std::cout << name << ": ok" << std::endl;
  return failures ? 1 : 0;
}

}  // namespace o3mount::test
