#include "cli_util.h"

#include <fmt/format.h>

#include <cerrno>
#include <cstdlib>
#include <sstream>

#include "core/error.h"

namespace dsv::cli {

std::vector<int32_t> parse_id_list(const std::string& text, const char* option) {
  std::vector<int32_t> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    const size_t b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    DSV_CHECK(b != std::string::npos, "{}: empty item in \"{}\" (expected comma-separated token ids)", option, text);
    item = item.substr(b, e - b + 1);
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(item.c_str(), &end, 10);
    DSV_CHECK(end && *end == '\0' && errno == 0 && v >= 0 && v <= INT32_MAX,
              "{}: \"{}\" is not a token id (expected a non-negative integer)", option, item);
    ids.push_back(static_cast<int32_t>(v));
  }
  DSV_CHECK(!ids.empty(), "{}: no token ids given", option);
  return ids;
}

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 4) {
    bytes /= 1024.0;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.2f} {}", bytes, units[u]);
}

std::string human_count(double count) {
  if (count >= 1e9) return fmt::format("{:.2f}B", count / 1e9);
  if (count >= 1e6) return fmt::format("{:.2f}M", count / 1e6);
  if (count >= 1e3) return fmt::format("{:.1f}K", count / 1e3);
  return fmt::format("{:.0f}", count);
}

}  // namespace dsv::cli
