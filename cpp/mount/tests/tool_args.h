// Command-line and JSON plumbing shared by the mount core's test tools (never part of the core):
// `--name value` options, credentials from the environment (never argv), and a JSON writer.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "mount/credentials.h"

namespace o3mount::tool {

class Args {
 public:
  Args(int argc, char** argv) {
    for (int i = 1; i < argc; i++) {
      std::string name = argv[i];
      if (name.rfind("--", 0) != 0 || i + 1 >= argc) usage("expected --name value pairs, got " + name);
      values_[name.substr(2)].push_back(argv[++i]);
    }
  }
  std::string get(const std::string& name, const std::string& fallback = "") const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second.back();
  }
  std::string need(const std::string& name) const {
    auto it = values_.find(name);
    if (it == values_.end()) usage("--" + name + " is required");
    return it->second.back();
  }
  uint64_t number(const std::string& name, uint64_t fallback) const {
    auto it = values_.find(name);
    if (it == values_.end()) return fallback;
    char* end = nullptr;
    const unsigned long long v = std::strtoull(it->second.back().c_str(), &end, 10);
    if (!end || *end) usage("--" + name + " must be a number");
    return v;
  }
  std::vector<std::string> all(const std::string& name) const {
    auto it = values_.find(name);
    return it == values_.end() ? std::vector<std::string>{} : it->second;
  }
  [[noreturn]] static void usage(const std::string& why) {
    std::cerr << "usage error: " << why << std::endl;
    std::exit(2);
  }

 private:
  std::map<std::string, std::vector<std::string>> values_;
};

inline Credentials credentialsFromEnv() {
  auto env = [](const char* name) {
    const char* v = std::getenv(name);
    return std::string(v ? v : "");
  };
  Credentials c{env("O3_ACCESS_KEY_ID"), env("O3_SECRET_ACCESS_KEY"), env("O3_SESSION_TOKEN")};
  if (c.accessKeyId.empty() || c.secretAccessKey.empty()) Args::usage("set O3_ACCESS_KEY_ID and O3_SECRET_ACCESS_KEY");
  return c;
}

// A JSON string: quotes, backslashes and control bytes escaped; other bytes (UTF-8) as they are.
inline std::string json(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

}  // namespace o3mount::tool
