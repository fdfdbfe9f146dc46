// Shared helpers for tests: temporary directories, raw files, expecting dsv::Error messages.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "core/error.h"

namespace dsv::test {

inline std::filesystem::path temp_dir(const std::string& name) {
  static std::mt19937_64 rng(std::random_device{}());
  auto dir = std::filesystem::temp_directory_path() / ("dsv_test_" + name + "_" + std::to_string(rng()));
  std::filesystem::create_directories(dir);
  return dir;
}

inline void write_raw(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out << bytes;
}

// Runs fn, expects a dsv::Error whose message contains every one of `needles`.
template <typename Fn>
void expect_error(Fn&& fn, std::initializer_list<std::string> needles) {
  try {
    fn();
    ADD_FAILURE() << "expected a dsv::Error, none was thrown";
  } catch (const dsv::Error& e) {
    const std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "message lacks \"" << n << "\": " << msg;
  }
}

inline std::string source_dir() { return DSV_SOURCE_DIR; }

}  // namespace dsv::test
