// Small helpers shared by the subcommands.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsv::cli {

// "1,2, 3" -> {1, 2, 3}; throws dsv::Error naming the bad item.
std::vector<int32_t> parse_id_list(const std::string& text, const char* option);
std::string human_bytes(double bytes);   // "1.50 GiB"
std::string human_count(double count);   // "2.25B"

}  // namespace dsv::cli
