// Fixture access shared by the CPU model tests and the CUDA model tests.
#pragma once
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace dsv::test {

inline std::filesystem::path fixtures_root() {
  return std::filesystem::path(DSV_SOURCE_DIR) / "tests" / "fixtures" / "models";
}

inline std::vector<std::string> fixture_names() {
  std::vector<std::string> names;
  if (std::filesystem::exists(fixtures_root()))
    for (const auto& e : std::filesystem::directory_iterator(fixtures_root()))
      if (std::filesystem::exists(e.path() / "ref.json")) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

struct Fixture {
  std::filesystem::path dir;
  nlohmann::json ref;
  std::vector<int32_t> ids;
};

inline Fixture open_fixture(const std::string& name) {
  Fixture f;
  f.dir = fixtures_root() / name;
  std::ifstream in(f.dir / "ref.json");
  f.ref = nlohmann::json::parse(in);
  for (int v : f.ref["ids"]) f.ids.push_back(v);
  return f;
}

// Scale-free error: max |got - ref| over max |ref|; infinite when got has a non-finite value.
inline double max_rel_error(const float* got, const std::vector<float>& ref) {
  double max_diff = 0, max_ref = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    max_diff = std::max(max_diff, static_cast<double>(std::fabs(got[i] - ref[i])));
    max_ref = std::max(max_ref, static_cast<double>(std::fabs(ref[i])));
  }
  return max_diff / max_ref;
}

}  // namespace dsv::test
