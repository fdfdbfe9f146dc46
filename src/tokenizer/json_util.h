// Small typed accessors over nlohmann::json that fail with the JSON field path in the message.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"

namespace dsv::tok {

inline const nlohmann::json& jfield(const nlohmann::json& j, const char* key, const std::string& where) {
  DSV_CHECK(j.is_object(), "{}: expected a JSON object, found {}", where, j.type_name());
  auto it = j.find(key);
  DSV_CHECK(it != j.end(), "{}: missing field \"{}\"", where, key);
  return *it;
}

inline std::string jstring(const nlohmann::json& j, const char* key, const std::string& where) {
  const auto& v = jfield(j, key, where);
  DSV_CHECK(v.is_string(), "{}.{}: expected a string, found {}", where, key, v.type_name());
  return v.get<std::string>();
}

// Optional bool: absent or null gives `fallback`.
inline bool jbool(const nlohmann::json& j, const char* key, const std::string& where, bool fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  DSV_CHECK(it->is_boolean(), "{}.{}: expected true or false, found {}", where, key, it->type_name());
  return it->get<bool>();
}

}  // namespace dsv::tok
