// Errors are loud and located: every failure carries what was expected, what was found, and where.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace dsv {

// One exception type for user-facing failures (bad files, bad configs, bad arguments).
// The CLI prints what() and exits non-zero; tests assert on the message.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

[[noreturn]] void throw_error(const char* file, int line, const std::string& message);

}  // namespace dsv

// DSV_FAIL("expected {} got {}", a, b): throws dsv::Error with source location appended.
#define DSV_FAIL(...) ::dsv::throw_error(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__))
// DSV_CHECK(cond, "message {}", x): an invariant or validation that must hold.
#define DSV_CHECK(cond, ...)                 \
  do {                                       \
    if (!(cond)) [[unlikely]] {              \
      DSV_FAIL(__VA_ARGS__);                 \
    }                                        \
  } while (0)
