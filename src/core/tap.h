// Tap hook: every named intermediate (name, layer) passes through one callback, so any tensor can be
// dumped and diffed against the PyTorch reference. layer is -1 outside decoder layers.
#pragma once
#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

namespace dsv {

using TapFn = std::function<void(std::string_view name, int64_t layer, const float* data,
                                 const std::vector<int64_t>& shape)>;

inline void emit(const TapFn& fn, std::string_view name, int64_t layer, const float* data,
                std::vector<int64_t> shape) {
  if (fn) fn(name, layer, data, shape);
}

}  // namespace dsv
