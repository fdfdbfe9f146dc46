#include "core/error.h"

#include <cstdlib>
#include <filesystem>

namespace dsv {

void throw_error(const char* file, int line, const std::string& message) {
  // The location helps developers; DSV_QUIET_LOCATION=1 hides it for end users' logs.
  static const bool quiet = std::getenv("DSV_QUIET_LOCATION") != nullptr;
  if (quiet) throw Error(message);
  throw Error(fmt::format("{} [{}:{}]", message, std::filesystem::path(file).filename().string(), line));
}

}  // namespace dsv
