// Where the byte path's log lines go: the binding forwards them to the mount's logger (pino, JSON
// lines), the tests collect them. Fields are structured so that a line such as a leaf mismatch
// names key, block, leaf and both digests as fields, not inside a sentence. Never a credential.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace o3mount {

enum class LogLevel { Debug, Info, Warn, Error };

using LogValue = std::variant<std::string, int64_t, double, bool>;
using LogFields = std::vector<std::pair<std::string, LogValue>>;

class LogSink {
 public:
  virtual ~LogSink() = default;
  // Called from any thread; must not block on the caller's behalf.
  virtual void log(LogLevel level, std::string message, LogFields fields) = 0;
};

}  // namespace o3mount
