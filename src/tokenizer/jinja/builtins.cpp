// Filters, tests and str/dict methods of the template language, with Python's semantics.
#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "tokenizer/jinja/template.h"
#include "tokenizer/utf8.h"

namespace dsv::jinja {

#define TPL_FAIL(line, ...) DSV_FAIL("chat template, line {}: {}", line, fmt::format(__VA_ARGS__))

namespace {

using Kwargs = std::vector<std::pair<std::string, Value>>;

// Positional argument k, else keyword `name`, else the fallback.
Value arg(const std::vector<Value>& args, const Kwargs& kw, size_t k, const char* name, Value fallback = Value::undefined()) {
  if (k < args.size()) return args[k];
  for (const auto& [n, v] : kw)
    if (n == name) return v;
  return fallback;
}

bool py_space(uint32_t c) {  // str.isspace / str.split() whitespace
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::string strip(const std::string& s, const Value& chars, bool left, bool right) {
  const auto cps = code_points(s);
  std::vector<uint32_t> set;
  const bool custom = chars.kind == Value::kString;
  if (custom) set = code_points(chars.s);
  auto drop = [&](uint32_t c) { return custom ? std::find(set.begin(), set.end(), c) != set.end() : py_space(c); };
  size_t b = 0, e = cps.size();
  if (left)
    while (b < e && drop(cps[b])) ++b;
  if (right)
    while (e > b && drop(cps[e - 1])) --e;
  return from_code_points(cps, b, e);
}

// ASCII-only case mapping; other scripts pass through (enough for role names and markers).
std::string map_case(const std::string& s, bool upper) {
  std::string out = s;
  for (char& c : out) c = upper ? static_cast<char>(std::toupper(static_cast<unsigned char>(c))) : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string replace_all(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
  if (from.empty()) {
    // Python inserts `to` between every character (and at both ends).
    const auto cps = code_points(s);
    std::string out;
    int64_t done = 0;
    for (size_t k = 0; k <= cps.size(); ++k) {
      if (count < 0 || done < count) out += to, ++done;
      if (k < cps.size()) out += from_code_points(cps, k, k + 1);
    }
    return out;
  }
  std::string out;
  size_t pos = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string::npos) break;
    out.append(s, pos, hit - pos);
    out += to;
    pos = hit + from.size();
    ++done;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

Value split(const std::string& s, const Value& sep, int64_t maxsplit) {
  List parts;
  if (sep.kind != Value::kString) {
    // Whitespace split: runs of whitespace separate, no empty strings.
    const auto cps = code_points(s);
    size_t k = 0;
    while (k < cps.size()) {
      while (k < cps.size() && py_space(cps[k])) ++k;
      if (k == cps.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
        size_t e = cps.size();
        while (e > k && py_space(cps[e - 1])) --e;
        parts.push_back(Value::str(from_code_points(cps, k, e)));
        break;
      }
      size_t e = k;
      while (e < cps.size() && !py_space(cps[e])) ++e;
      parts.push_back(Value::str(from_code_points(cps, k, e)));
      k = e;
    }
    return Value::make_list(std::move(parts));
  }
  DSV_CHECK(!sep.s.empty(), "chat template: split(): empty separator");
  size_t pos = 0;
  while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
    const size_t hit = s.find(sep.s, pos);
    if (hit == std::string::npos) break;
    parts.push_back(Value::str(s.substr(pos, hit - pos)));
    pos = hit + sep.s.size();
  }
  parts.push_back(Value::str(s.substr(pos)));
  return Value::make_list(std::move(parts));
}

int64_t length(const Value& v, int line) {
  switch (v.kind) {
    case Value::kString: return static_cast<int64_t>(code_points(v.s).size());
    case Value::kList: return static_cast<int64_t>(v.list->size());
    case Value::kDict: return static_cast<int64_t>(v.dict->size());
    case Value::kUndefined: return 0;
    default: TPL_FAIL(line, "object of type '{}' has no len()", type_name(v));
  }
}


Value attribute(const Value& v, const std::string& path) {
  Value cur = v;
  size_t pos = 0;
  while (pos <= path.size()) {
    const size_t dot = path.find('.', pos);
    const std::string part = path.substr(pos, dot == std::string::npos ? std::string::npos : dot - pos);
    const Value* next = cur.find(part);
    cur = next ? *next : Value::undefined(part);
    if (dot == std::string::npos) break;
    pos = dot + 1;
  }
  return cur;
}

int compare(const Value& a, const Value& b, int line) {
  if (a.is_number() && b.is_number()) return a.as_double() < b.as_double() ? -1 : a.as_double() > b.as_double() ? 1 : 0;
  if (a.kind == Value::kString && b.kind == Value::kString) return a.s < b.s ? -1 : a.s > b.s ? 1 : 0;
  TPL_FAIL(line, "cannot compare '{}' with '{}'", type_name(a), type_name(b));
}

// Python's %-formatting for the `format` filter: %s, %d, %i, %r, %f with optional precision, %%.
std::string percent_format(const std::string& fmtstr, const std::vector<Value>& args, int line) {
  std::string out;
  size_t next = 0;
  for (size_t k = 0; k < fmtstr.size(); ++k) {
    if (fmtstr[k] != '%') {
      out += fmtstr[k];
      continue;
    }
    if (++k >= fmtstr.size()) TPL_FAIL(line, "format: incomplete format");
    std::string prec;
    while (k < fmtstr.size() && (fmtstr[k] == '.' || std::isdigit(static_cast<unsigned char>(fmtstr[k])))) prec += fmtstr[k++];
    const char c = fmtstr[k];
    if (c == '%') {
      out += '%';
      continue;
    }
    if (next >= args.size()) TPL_FAIL(line, "format: not enough arguments for format string");
    const Value& v = args[next++];
    if (c == 's') out += to_str(v);
    else if (c == 'r') out += to_repr(v);
    else if ((c == 'd' || c == 'i') && v.is_number()) out += std::to_string(static_cast<int64_t>(v.as_double()));
    else if (c == 'f' && v.is_number()) {
      const int p = prec.empty() ? 6 : std::atoi(prec.c_str() + (prec[0] == '.' ? 1 : 0));
      out += fmt::format("{:.{}f}", v.as_double(), p);
    } else TPL_FAIL(line, "format: unsupported conversion '%{}' for {}", c, type_name(v));
  }
  return out;
}

}  // namespace

Value apply_filter(const std::string& name, const Value& in, std::vector<Value>& args, Kwargs& kw, int line) {
  auto need_str = [&]() -> const std::string& {
    if (in.kind != Value::kString) TPL_FAIL(line, "filter '{}' expects a string, found {}", name, type_name(in));
    return in.s;
  };
  if (name == "safe" || name == "e" || name == "escape" || name == "forceescape") {
    if (name != "safe") TPL_FAIL(line, "filter '{}' is not supported (autoescape is off in chat templates)", name);
    return in;
  }
  if (name == "trim") return Value::str(strip(need_str(), arg(args, kw, 0, "chars"), true, true));
  if (name == "upper") return Value::str(map_case(need_str(), true));
  if (name == "lower") return Value::str(map_case(need_str(), false));
  if (name == "capitalize" || name == "title") {
    std::string s = map_case(need_str(), false);
    bool start = true;
    for (char& c : s) {
      if (start && std::isalpha(static_cast<unsigned char>(c))) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      if (name == "capitalize") start = false;
      else start = !std::isalnum(static_cast<unsigned char>(c));
    }
    return Value::str(s);
  }
  if (name == "length" || name == "count") return Value::integer(length(in, line));
  if (name == "string") return Value::str(to_str(in));
  if (name == "list") return Value::make_list(iterate(in, line));
  if (name == "first" || name == "last") {
    List l = iterate(in, line);
    if (l.empty()) return Value::undefined(name);
    return name == "first" ? l.front() : l.back();
  }
  if (name == "reverse") {
    if (in.kind == Value::kString) {
      auto cps = code_points(in.s);
      std::reverse(cps.begin(), cps.end());
      return Value::str(from_code_points(cps, 0, cps.size()));
    }
    List l = iterate(in, line);
    std::reverse(l.begin(), l.end());
    return Value::make_list(std::move(l));
  }
  if (name == "join") {
    const Value sep = arg(args, kw, 0, "d", Value::str(""));
    const Value attr = arg(args, kw, 1, "attribute");
    std::string out;
    bool first = true;
    for (const Value& v : iterate(in, line)) {
      if (!first) out += to_str(sep);
      out += to_str(attr.kind == Value::kString ? attribute(v, attr.s) : v);
      first = false;
    }
    return Value::str(out);
  }
  if (name == "default" || name == "d") {
    const Value fallback = arg(args, kw, 0, "default_value", Value::str(""));
    const bool boolean = truthy(arg(args, kw, 1, "boolean", Value::boolean(false)));
    if (in.is_undefined() || (boolean && !truthy(in))) return fallback;
    return in;
  }
  if (name == "tojson") {
    const Value indent = arg(args, kw, 0, "indent");
    const Value sort = arg(args, kw, 100, "sort_keys", Value::boolean(false));
    for (const auto& [k, v] : kw)
      if (k != "indent" && k != "sort_keys" && k != "ensure_ascii")
        TPL_FAIL(line, "tojson: argument '{}' is not supported", k);
    if (!arg(args, kw, 100, "ensure_ascii", Value::boolean(false)).is_undefined() &&
        truthy(arg(args, kw, 100, "ensure_ascii", Value::boolean(false))))
      TPL_FAIL(line, "tojson: ensure_ascii=True is not supported");
    return Value::str(to_json(in, indent.kind == Value::kInt ? static_cast<int>(indent.i) : -1, truthy(sort)));
  }
  if (name == "int") {
    if (in.kind == Value::kString) {
      try {
        return Value::integer(std::stoll(strip(in.s, Value::undefined(), true, true)));
      } catch (...) {
        return arg(args, kw, 0, "default", Value::integer(0));
      }
    }
    if (in.is_number()) return Value::integer(static_cast<int64_t>(in.as_double()));
    return arg(args, kw, 0, "default", Value::integer(0));
  }
  if (name == "float") {
    if (in.kind == Value::kString) {
      try {
        return Value::number(std::stod(in.s));
      } catch (...) {
        return arg(args, kw, 0, "default", Value::number(0));
      }
    }
    if (in.is_number()) return Value::number(in.as_double());
    return arg(args, kw, 0, "default", Value::number(0));
  }
  if (name == "abs") {
    if (in.kind == Value::kInt) return Value::integer(in.i < 0 ? -in.i : in.i);
    if (in.kind == Value::kFloat) return Value::number(std::fabs(in.f));
    TPL_FAIL(line, "abs: expected a number, found {}", type_name(in));
  }
  if (name == "round") {
    if (!in.is_number()) TPL_FAIL(line, "round: expected a number, found {}", type_name(in));
    const Value prec = arg(args, kw, 0, "precision", Value::integer(0));
    const double m = std::pow(10.0, static_cast<double>(prec.i));
    return Value::number(std::nearbyint(in.as_double() * m) / m);
  }
  if (name == "sum") {
    const Value attr = arg(args, kw, 0, "attribute");
    Value acc = arg(args, kw, 1, "start", Value::integer(0));
    for (const Value& v0 : iterate(in, line)) {
      const Value v = attr.kind == Value::kString ? attribute(v0, attr.s) : v0;
      if (!v.is_number() || !acc.is_number()) TPL_FAIL(line, "sum: expected numbers, found {}", type_name(v));
      if (acc.kind == Value::kFloat || v.kind == Value::kFloat) acc = Value::number(acc.as_double() + v.as_double());
      else acc = Value::integer(acc.i + (v.kind == Value::kBool ? v.b : v.i));
    }
    return acc;
  }
  if (name == "min" || name == "max") {
    List l = iterate(in, line);
    if (l.empty()) return Value::undefined(name);
    Value best = l[0];
    for (const Value& v : l)
      if ((compare(v, best, line) < 0) == (name == "min") && compare(v, best, line) != 0) best = v;
    return best;
  }
  if (name == "unique") {
    List out;
    for (const Value& v : iterate(in, line))
      if (std::none_of(out.begin(), out.end(), [&](const Value& o) { return equal(o, v); })) out.push_back(v);
    return Value::make_list(std::move(out));
  }
  if (name == "sort") {
    List l = iterate(in, line);
    const bool rev = truthy(arg(args, kw, 0, "reverse", Value::boolean(false)));
    const Value attr = arg(args, kw, 2, "attribute");
    std::stable_sort(l.begin(), l.end(), [&](const Value& a, const Value& b) {
      const Value x = attr.kind == Value::kString ? attribute(a, attr.s) : a;
      const Value y = attr.kind == Value::kString ? attribute(b, attr.s) : b;
      return rev ? compare(y, x, line) < 0 : compare(x, y, line) < 0;
    });
    return Value::make_list(std::move(l));
  }
  if (name == "items" || name == "dictsort") {
    if (in.kind != Value::kDict) TPL_FAIL(line, "filter '{}' expects a dict, found {}", name, type_name(in));
    List l;
    for (const auto& [k, v] : *in.dict) l.push_back(Value::make_list({Value::str(k), v}));
    if (name == "dictsort") std::stable_sort(l.begin(), l.end(), [](const Value& a, const Value& b) { return (*a.list)[0].s < (*b.list)[0].s; });
    return Value::make_list(std::move(l));
  }
  if (name == "replace") {
    const Value from = arg(args, kw, 0, "old"), to = arg(args, kw, 1, "new"), count = arg(args, kw, 2, "count");
    if (from.kind != Value::kString || to.kind != Value::kString) TPL_FAIL(line, "replace: expected two strings");
    return Value::str(replace_all(to_str(in), from.s, to.s, count.kind == Value::kInt ? count.i : -1));
  }
  if (name == "format") return Value::str(percent_format(need_str(), args, line));
  if (name == "indent") {
    const Value width = arg(args, kw, 0, "width", Value::integer(4));
    const bool first = truthy(arg(args, kw, 1, "first", Value::boolean(false)));
    const bool blank = truthy(arg(args, kw, 2, "blank", Value::boolean(false)));
    const std::string pad = width.kind == Value::kString ? width.s : std::string(static_cast<size_t>(width.i), ' ');
    std::string out;
    const std::string& s = need_str();
    size_t pos = 0;
    bool is_first = true;
    while (true) {
      const size_t nl = s.find('\n', pos);
      const std::string ln = s.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
      if ((!is_first || first) && (blank || !ln.empty())) out += pad;
      out += ln;
      if (nl == std::string::npos) break;
      out += '\n';
      pos = nl + 1;
      is_first = false;
    }
    return Value::str(out);
  }
  if (name == "map" || name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr") {
    List out;
    const List items = iterate(in, line);
    if (name == "map") {
      const Value attr = arg({}, kw, 0, "attribute");
      if (attr.kind == Value::kString) {
        const Value dflt = arg({}, kw, 0, "default");
        for (const Value& v : items) {
          Value a = attribute(v, attr.s);
          out.push_back(a.is_undefined() && !dflt.is_undefined() ? dflt : a);
        }
      } else if (!args.empty() && args[0].kind == Value::kString) {
        std::vector<Value> rest(args.begin() + 1, args.end());
        Kwargs no_kw;
        for (const Value& v : items) out.push_back(apply_filter(args[0].s, v, rest, no_kw, line));
      } else {
        TPL_FAIL(line, "map: expected a filter name or attribute=");
      }
      return Value::make_list(std::move(out));
    }
    const bool by_attr = name == "selectattr" || name == "rejectattr";
    const bool keep_if = name == "select" || name == "selectattr";
    size_t k = 0;
    std::string attr;
    if (by_attr) {
      if (args.empty() || args[0].kind != Value::kString) TPL_FAIL(line, "{}: expected an attribute name", name);
      attr = args[k++].s;
    }
    std::string test;
    if (k < args.size()) {
      if (args[k].kind != Value::kString) TPL_FAIL(line, "{}: expected a test name", name);
      test = args[k++].s;
    }
    std::vector<Value> rest(args.begin() + static_cast<std::ptrdiff_t>(k), args.end());
    for (const Value& v : items) {
      const Value x = by_attr ? attribute(v, attr) : v;
      const bool pass = test.empty() ? truthy(x) : apply_test(test, x, rest, line);
      if (pass == keep_if) out.push_back(v);
    }
    return Value::make_list(std::move(out));
  }
  TPL_FAIL(line, "filter '{}' is not supported by dsv's template engine", name);
}

bool apply_test(const std::string& name, const Value& in, const std::vector<Value>& args, int line) {
  auto need = [&](size_t n) {
    if (args.size() < n) TPL_FAIL(line, "test '{}' needs {} argument(s)", name, n);
  };
  if (name == "defined") return !in.is_undefined();
  if (name == "undefined") return in.is_undefined();
  if (name == "none") return in.kind == Value::kNone;
  if (name == "boolean") return in.kind == Value::kBool;
  if (name == "true") return in.kind == Value::kBool && in.b;
  if (name == "false") return in.kind == Value::kBool && !in.b;
  if (name == "string") return in.kind == Value::kString;
  if (name == "number") return in.kind == Value::kInt || in.kind == Value::kFloat;
  if (name == "integer") return in.kind == Value::kInt;
  if (name == "float") return in.kind == Value::kFloat;
  if (name == "mapping") return in.kind == Value::kDict;
  if (name == "sequence") return in.kind == Value::kList || in.kind == Value::kString || in.kind == Value::kDict;
  if (name == "iterable") return in.kind == Value::kList || in.kind == Value::kString || in.kind == Value::kDict;
  if (name == "callable") return false;
  if (name == "lower" || name == "upper") {
    if (in.kind != Value::kString) return false;
    return map_case(in.s, name == "upper") == in.s;
  }
  if (name == "even" || name == "odd") {
    if (in.kind != Value::kInt) TPL_FAIL(line, "test '{}' expects an integer, found {}", name, type_name(in));
    return (in.i % 2 == 0) == (name == "even");
  }
  if (name == "divisibleby") {
    need(1);
    if (in.kind != Value::kInt || args[0].kind != Value::kInt || args[0].i == 0) TPL_FAIL(line, "divisibleby expects integers");
    return in.i % args[0].i == 0;
  }
  if (name == "eq" || name == "equalto" || name == "==") return need(1), equal(in, args[0]);
  if (name == "ne" || name == "!=") return need(1), !equal(in, args[0]);
  if (name == "sameas") return need(1), in.kind == args[0].kind && equal(in, args[0]);
  if (name == "lt" || name == "gt" || name == "le" || name == "ge" || name == "lessthan" || name == "greaterthan") {
    need(1);
    const int c = compare(in, args[0], line);
    if (name == "lt" || name == "lessthan") return c < 0;
    if (name == "gt" || name == "greaterthan") return c > 0;
    return name == "le" ? c <= 0 : c >= 0;
  }
  if (name == "in") {
    need(1);
    const Value& seq = args[0];
    if (seq.kind == Value::kString) return in.kind == Value::kString && seq.s.find(in.s) != std::string::npos;
    if (seq.kind == Value::kList) return std::any_of(seq.list->begin(), seq.list->end(), [&](const Value& v) { return equal(v, in); });
    if (seq.kind == Value::kDict) return in.kind == Value::kString && seq.find(in.s);
    TPL_FAIL(line, "test 'in' needs a container, found {}", type_name(seq));
  }
  TPL_FAIL(line, "test '{}' is not supported by dsv's template engine", name);
}

bool has_method(const Value& self, const std::string& n) {
  if (self.kind == Value::kString)
    return n == "strip" || n == "lstrip" || n == "rstrip" || n == "startswith" || n == "endswith" || n == "split" ||
           n == "upper" || n == "lower" || n == "replace" || n == "find" || n == "count" || n == "title" ||
           n == "capitalize" || n == "join" || n == "isspace" || n == "isdigit" || n == "rsplit" || n == "format";
  if (self.kind == Value::kDict) return n == "items" || n == "keys" || n == "values" || n == "get";
  return false;
}

Value call_method(const Value& self, const std::string& n, std::vector<Value>& args, Kwargs& kw, int line) {
  if (self.kind == Value::kDict) {
    if (n == "get") {
      const Value key = arg(args, kw, 0, "key");
      const Value* v = key.kind == Value::kString ? self.find(key.s) : nullptr;
      return v ? *v : arg(args, kw, 1, "default", Value::none());
    }
    List l;
    for (const auto& [k, v] : *self.dict) {
      if (n == "items") l.push_back(Value::make_list({Value::str(k), v}));
      else if (n == "keys") l.push_back(Value::str(k));
      else l.push_back(v);
    }
    return Value::make_list(std::move(l));
  }
  const std::string& s = self.s;
  if (n == "strip") return Value::str(strip(s, arg(args, kw, 0, "chars"), true, true));
  if (n == "lstrip") return Value::str(strip(s, arg(args, kw, 0, "chars"), true, false));
  if (n == "rstrip") return Value::str(strip(s, arg(args, kw, 0, "chars"), false, true));
  if (n == "upper" || n == "lower" || n == "title" || n == "capitalize") {
    std::vector<Value> none;
    Kwargs no_kw;
    return apply_filter(n, self, none, no_kw, line);
  }
  if (n == "startswith" || n == "endswith") {
    const Value p = arg(args, kw, 0, "prefix");
    List options = p.kind == Value::kList ? *p.list : List{p};
    for (const Value& o : options) {
      if (o.kind != Value::kString) TPL_FAIL(line, "{}: expected a string, found {}", n, type_name(o));
      if (n == "startswith" ? s.compare(0, o.s.size(), o.s) == 0 && s.size() >= o.s.size()
                            : s.size() >= o.s.size() && s.compare(s.size() - o.s.size(), o.s.size(), o.s) == 0)
        return Value::boolean(true);
    }
    return Value::boolean(false);
  }
  if (n == "split") {
    const Value ms = arg(args, kw, 1, "maxsplit", Value::integer(-1));
    return split(s, arg(args, kw, 0, "sep"), ms.kind == Value::kInt ? ms.i : -1);
  }
  if (n == "rsplit") {
    const Value ms = arg(args, kw, 1, "maxsplit", Value::integer(-1));
    if (ms.kind == Value::kInt && ms.i >= 0) TPL_FAIL(line, "rsplit with maxsplit is not supported");
    return split(s, arg(args, kw, 0, "sep"), -1);
  }
  if (n == "replace") {
    const Value a = arg(args, kw, 0, "old"), b = arg(args, kw, 1, "new"), c = arg(args, kw, 2, "count");
    if (a.kind != Value::kString || b.kind != Value::kString) TPL_FAIL(line, "replace: expected two strings");
    return Value::str(replace_all(s, a.s, b.s, c.kind == Value::kInt ? c.i : -1));
  }
  if (n == "find" || n == "count") {
    const Value sub = arg(args, kw, 0, "sub");
    if (sub.kind != Value::kString) TPL_FAIL(line, "{}: expected a string", n);
    if (n == "find") {
      const size_t pos = s.find(sub.s);
      if (pos == std::string::npos) return Value::integer(-1);
      return Value::integer(static_cast<int64_t>(code_points(s.substr(0, pos)).size()));
    }
    if (sub.s.empty()) return Value::integer(static_cast<int64_t>(code_points(s).size()) + 1);
    int64_t c = 0;
    for (size_t pos = s.find(sub.s); pos != std::string::npos; pos = s.find(sub.s, pos + sub.s.size())) ++c;
    return Value::integer(c);
  }
  if (n == "join") {
    std::string out;
    bool first = true;
    for (const Value& v : iterate(arg(args, kw, 0, "iterable"), line)) {
      if (v.kind != Value::kString) TPL_FAIL(line, "join: expected strings, found {}", type_name(v));
      if (!first) out += s;
      out += v.s;
      first = false;
    }
    return Value::str(out);
  }
  if (n == "isspace" || n == "isdigit") {
    const auto cps = code_points(s);
    if (cps.empty()) return Value::boolean(false);
    for (uint32_t c : cps)
      if (n == "isspace" ? !py_space(c) : !(c >= '0' && c <= '9')) return Value::boolean(false);
    return Value::boolean(true);
  }
  TPL_FAIL(line, "method str.{}() is not supported by dsv's template engine", n);
}

}  // namespace dsv::jinja
