#include "tokenizer/jinja/template.h"

#include <cmath>
#include <ctime>

#include "core/error.h"
#include "tokenizer/jinja/parser.h"

namespace dsv::jinja {

namespace {

#define TPL_FAIL(line, ...) DSV_FAIL("chat template, line {}: {}", line, fmt::format(__VA_ARGS__))

enum class Flow { kNormal, kBreak, kContinue };

class Renderer {
 public:
  explicit Renderer(const std::unordered_map<std::string, Value>& vars) { scopes_.push_back(vars); }

  Flow exec(const Body& body) {
    for (const NodePtr& n : body) {
      const Flow f = exec(*n);
      if (f != Flow::kNormal) return f;
    }
    return Flow::kNormal;
  }
  std::string out;

 private:
  Flow exec(const Node& n) {
    switch (n.kind) {
      case Node::kText: out += n.text; return Flow::kNormal;
      case Node::kOutput: out += to_str(eval(*n.expr)); return Flow::kNormal;
      case Node::kIf:
        for (const auto& [cond, body] : n.branches)
          if (!cond || truthy(eval(*cond))) return exec(body);
        return Flow::kNormal;
      case Node::kSet: {
        Value v = eval(*n.expr);
        if (n.targets.size() == 1) {
          scopes_.back()[n.targets[0]] = std::move(v);
        } else {
          Value ns = lookup(n.targets[0]);
          if (ns.kind != Value::kNamespace)
            TPL_FAIL(n.line, "cannot set attribute '{}' on '{}' ({}): only namespace() objects can be assigned to",
                     n.targets[1], n.targets[0], type_name(ns));
          ns.set(n.targets[1], std::move(v));
        }
        return Flow::kNormal;
      }
      case Node::kFor: return exec_for(n);
      case Node::kBreak: return Flow::kBreak;
      case Node::kContinue: return Flow::kContinue;
    }
    return Flow::kNormal;
  }

  Flow exec_for(const Node& n) {
    const Value seq = eval(*n.expr);
    List items = iterate(seq, n.line);
    if (n.filter) {
      List kept;
      for (Value& it : items) {
        scopes_.emplace_back();
        bind(n, it, n.line);
        if (truthy(eval(*n.filter))) kept.push_back(std::move(it));
        scopes_.pop_back();
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      scopes_.emplace_back();
      exec(n.else_body);
      scopes_.pop_back();
      return Flow::kNormal;
    }
    const int64_t len = static_cast<int64_t>(items.size());
    for (int64_t k = 0; k < len; ++k) {
      scopes_.emplace_back();  // each iteration has its own scope, as in Jinja2
      bind(n, items[k], n.line);
      Dict loop = {{"index", Value::integer(k + 1)},
                   {"index0", Value::integer(k)},
                   {"revindex", Value::integer(len - k)},
                   {"revindex0", Value::integer(len - k - 1)},
                   {"first", Value::boolean(k == 0)},
                   {"last", Value::boolean(k == len - 1)},
                   {"length", Value::integer(len)},
                   {"previtem", k > 0 ? items[k - 1] : Value::undefined("loop.previtem")},
                   {"nextitem", k + 1 < len ? items[k + 1] : Value::undefined("loop.nextitem")}};
      scopes_.back()["loop"] = Value::make_dict(std::move(loop));
      const Flow f = exec(n.body);
      scopes_.pop_back();
      if (f == Flow::kBreak) break;
    }
    return Flow::kNormal;
  }

  void bind(const Node& n, const Value& item, int line) {
    if (n.targets.size() == 1) {
      scopes_.back()[n.targets[0]] = item;
      return;
    }
    if (item.kind != Value::kList || item.list->size() != n.targets.size())
      TPL_FAIL(line, "cannot unpack {} into {} loop variables", to_repr(item), n.targets.size());
    for (size_t k = 0; k < n.targets.size(); ++k) scopes_.back()[n.targets[k]] = (*item.list)[k];
  }


  Value lookup(const std::string& name) const {
    for (size_t k = scopes_.size(); k-- > 0;) {
      auto it = scopes_[k].find(name);
      if (it != scopes_[k].end()) return it->second;
    }
    return Value::undefined(name);
  }

  [[noreturn]] void undefined_error(const Value& v, int line) {
    TPL_FAIL(line, "'{}' is undefined", v.s.empty() ? "value" : v.s);
  }

  Value get_attr(const Value& obj, const std::string& name, int line) {
    if (obj.is_undefined()) undefined_error(obj, line);
    if (obj.kind == Value::kDict || obj.kind == Value::kNamespace) {
      if (const Value* v = obj.find(name)) return *v;
    }
    return Value::undefined(name);
  }

  Value get_item(const Value& obj, const Value& key, int line) {
    if (obj.is_undefined()) undefined_error(obj, line);
    if (obj.kind == Value::kDict || obj.kind == Value::kNamespace) {
      if (key.kind == Value::kString)
        if (const Value* v = obj.find(key.s)) return *v;
      return Value::undefined(key.kind == Value::kString ? key.s : to_str(key));
    }
    if ((obj.kind == Value::kList || obj.kind == Value::kString) && (key.kind == Value::kInt || key.kind == Value::kBool)) {
      const int64_t raw = key.kind == Value::kBool ? key.b : key.i;
      if (obj.kind == Value::kList) {
        const int64_t n = static_cast<int64_t>(obj.list->size());
        const int64_t k = raw < 0 ? raw + n : raw;
        if (k < 0 || k >= n) return Value::undefined(fmt::format("[{}]", raw));
        return (*obj.list)[k];
      }
      const auto cps = code_points(obj.s);
      const int64_t n = static_cast<int64_t>(cps.size());
      const int64_t k = raw < 0 ? raw + n : raw;
      if (k < 0 || k >= n) return Value::undefined(fmt::format("[{}]", raw));
      return Value::str(from_code_points(cps, k, k + 1));
    }
    if (key.kind == Value::kString) return get_attr(obj, key.s, line);
    TPL_FAIL(line, "cannot index a {} with a {}", type_name(obj), type_name(key));
  }

  Value slice(const Value& obj, const Value& a, const Value& b, const Value& c, int line) {
    auto as_int = [&](const Value& v, int64_t dflt) -> int64_t {
      if (v.is_undefined() || v.kind == Value::kNone) return dflt;
      if (v.kind != Value::kInt) TPL_FAIL(line, "slice indices must be integers, found {}", type_name(v));
      return v.i;
    };
    const int64_t step = as_int(c, 1);
    if (step == 0) TPL_FAIL(line, "slice step cannot be zero");
    std::vector<uint32_t> cps;
    int64_t n = 0;
    if (obj.kind == Value::kList) n = static_cast<int64_t>(obj.list->size());
    else if (obj.kind == Value::kString) n = static_cast<int64_t>((cps = code_points(obj.s)).size());
    else TPL_FAIL(line, "cannot slice a {}", type_name(obj));
    // Python's slice.indices().
    auto norm = [&](int64_t v, bool is_start) {
      if (v < 0) v += n;
      if (step > 0) return std::clamp<int64_t>(v, 0, n);
      (void)is_start;
      return std::clamp<int64_t>(v, -1, n - 1);
    };
    int64_t start = a.is_undefined() || a.kind == Value::kNone ? (step > 0 ? 0 : n - 1) : norm(as_int(a, 0), true);
    int64_t stop = b.is_undefined() || b.kind == Value::kNone ? (step > 0 ? n : -1) : norm(as_int(b, 0), false);
    List items;
    std::string s;
    for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
      if (obj.kind == Value::kList) items.push_back((*obj.list)[k]);
      else s += from_code_points(cps, k, k + 1);
    }
    return obj.kind == Value::kList ? Value::make_list(std::move(items)) : Value::str(std::move(s));
  }

  Value eval_opt(const ExprPtr& e) { return e ? eval(*e) : Value::undefined(); }

  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::kLiteral: return e.value;
      case Expr::kName: return lookup(e.name);
      case Expr::kList: {
        List l;
        for (const auto& a : e.args) l.push_back(eval(*a));
        return Value::make_list(std::move(l));
      }
      case Expr::kDict: {
        Value d = Value::make_dict();
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) {
          const Value key = eval(*e.args[k]);
          if (key.kind != Value::kString) TPL_FAIL(e.line, "dict keys must be strings here, found {}", type_name(key));
          d.set(key.s, eval(*e.args[k + 1]));
        }
        return d;
      }
      case Expr::kAttr: return get_attr(eval(*e.args[0]), e.name, e.line);
      case Expr::kItem: return get_item(eval(*e.args[0]), eval(*e.args[1]), e.line);
      case Expr::kSlice:
        return slice(eval(*e.args[0]), eval_opt(e.args[1]), eval_opt(e.args[2]), eval_opt(e.args[3]), e.line);
      case Expr::kCall: return eval_call(e);
      case Expr::kFilter: {
        Value in = eval(*e.args[0]);
        std::vector<Value> args;
        for (size_t k = 1; k < e.args.size(); ++k) args.push_back(eval(*e.args[k]));
        std::vector<std::pair<std::string, Value>> kw;
        for (const auto& [k, v] : e.kwargs) kw.emplace_back(k, eval(*v));
        return apply_filter(e.name, in, args, kw, e.line);
      }
      case Expr::kTest: {
        Value in = eval(*e.args[0]);
        std::vector<Value> args;
        for (size_t k = 1; k < e.args.size(); ++k) args.push_back(eval(*e.args[k]));
        return Value::boolean(apply_test(e.name, in, args, e.line) != e.negated);
      }
      case Expr::kUnary: {
        const Value v = eval(*e.args[0]);
        if (e.name == "not") return Value::boolean(!truthy(v));
        if (v.is_undefined()) undefined_error(v, e.line);
        if (v.kind == Value::kInt) return Value::integer(e.name == "-" ? -v.i : v.i);
        if (v.kind == Value::kFloat) return Value::number(e.name == "-" ? -v.f : v.f);
        if (v.kind == Value::kBool) return Value::integer(e.name == "-" ? -int64_t{v.b} : v.b);
        TPL_FAIL(e.line, "bad operand type for unary {}: '{}'", e.name, type_name(v));
      }
      case Expr::kBinary: return eval_binary(e);
      case Expr::kCond:
        if (truthy(eval(*e.args[0]))) return eval(*e.args[1]);
        return e.args[2] ? eval(*e.args[2]) : Value::undefined();
    }
    return Value::undefined();
  }

  Value eval_call(const Expr& e) {
    std::vector<Value> args;
    for (size_t k = 1; k < e.args.size(); ++k) args.push_back(eval(*e.args[k]));
    std::vector<std::pair<std::string, Value>> kw;
    for (const auto& [k, v] : e.kwargs) kw.emplace_back(k, eval(*v));
    const Expr& callee = *e.args[0];
    if (callee.kind == Expr::kAttr) {
      const Value self = eval(*callee.args[0]);
      if (self.is_undefined()) undefined_error(self, e.line);
      if (has_method(self, callee.name)) return call_method(self, callee.name, args, kw, e.line);
      const Value f = get_attr(self, callee.name, e.line);
      TPL_FAIL(e.line, "'{}' has no callable method '{}'", type_name(self), callee.name);
    }
    if (callee.kind != Expr::kName) TPL_FAIL(e.line, "only named functions and methods can be called");
    const std::string& fn = callee.name;
    if (fn == "namespace") {
      Value ns;
      ns.kind = Value::kNamespace;
      ns.dict = std::make_shared<Dict>();
      for (const Value& a : args) {
        if (a.kind != Value::kDict) TPL_FAIL(e.line, "namespace() takes keyword arguments or dicts");
        for (const auto& [k, v] : *a.dict) ns.set(k, v);
      }
      for (auto& [k, v] : kw) ns.set(k, v);
      return ns;
    }
    if (fn == "range") {
      int64_t lo = 0, hi = 0, st = 1;
      for (const Value& a : args)
        if (a.kind != Value::kInt) TPL_FAIL(e.line, "range() takes integers, found {}", type_name(a));
      if (args.size() == 1) hi = args[0].i;
      else if (args.size() >= 2) lo = args[0].i, hi = args[1].i, st = args.size() > 2 ? args[2].i : 1;
      else TPL_FAIL(e.line, "range() needs 1 to 3 arguments");
      if (st == 0) TPL_FAIL(e.line, "range() step must not be zero");
      if ((hi - lo) / st > 1000000) TPL_FAIL(e.line, "range() of more than a million items");
      List l;
      for (int64_t k = lo; st > 0 ? k < hi : k > hi; k += st) l.push_back(Value::integer(k));
      return Value::make_list(std::move(l));
    }
    if (fn == "raise_exception") {
      TPL_FAIL(e.line, "the template raised an exception: {}", args.empty() ? std::string() : to_str(args[0]));
    }
    if (fn == "strftime_now") {
      if (args.empty() || args[0].kind != Value::kString) TPL_FAIL(e.line, "strftime_now() takes a format string");
      const std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      char buf[256];
      const size_t n = std::strftime(buf, sizeof buf, args[0].s.c_str(), &tm);
      return Value::str(std::string(buf, n));
    }
    if (fn == "dict") {
      Value d = Value::make_dict();
      for (auto& [k, v] : kw) d.set(k, v);
      return d;
    }
    const Value v = lookup(fn);
    if (v.is_undefined()) TPL_FAIL(e.line, "'{}' is undefined (no such function)", fn);
    TPL_FAIL(e.line, "'{}' ({}) is not callable", fn, type_name(v));
  }

  Value eval_binary(const Expr& e) {
    const std::string& op = e.name;
    if (op == "and") {
      Value a = eval(*e.args[0]);
      return truthy(a) ? eval(*e.args[1]) : a;
    }
    if (op == "or") {
      Value a = eval(*e.args[0]);
      return truthy(a) ? a : eval(*e.args[1]);
    }
    const Value a = eval(*e.args[0]);
    const Value b = eval(*e.args[1]);
    if (op == "~") return Value::str(to_str(a) + to_str(b));
    if (op == "==") return Value::boolean(equal(a, b));
    if (op == "!=") return Value::boolean(!equal(a, b));
    if (op == "in" || op == "not in") {
      bool found = false;
      if (b.kind == Value::kString) {
        if (a.kind != Value::kString) TPL_FAIL(e.line, "'in <string>' requires a string on the left, found {}", type_name(a));
        found = b.s.find(a.s) != std::string::npos;
      } else if (b.kind == Value::kList) {
        for (const Value& x : *b.list) found = found || equal(x, a);
      } else if (b.kind == Value::kDict || b.kind == Value::kNamespace) {
        found = a.kind == Value::kString && b.find(a.s) != nullptr;
      } else if (b.is_undefined()) {
        undefined_error(b, e.line);
      } else {
        TPL_FAIL(e.line, "argument of type '{}' is not iterable", type_name(b));
      }
      return Value::boolean(found != (op == "not in"));
    }
    if (a.is_undefined()) undefined_error(a, e.line);
    if (b.is_undefined()) undefined_error(b, e.line);
    if (op == "<" || op == "<=" || op == ">" || op == ">=") {
      int c = 0;
      if (a.is_number() && b.is_number()) c = a.as_double() < b.as_double() ? -1 : a.as_double() > b.as_double() ? 1 : 0;
      else if (a.kind == Value::kString && b.kind == Value::kString) c = a.s < b.s ? -1 : a.s > b.s ? 1 : 0;
      else TPL_FAIL(e.line, "'{}' not supported between instances of '{}' and '{}'", op, type_name(a), type_name(b));
      return Value::boolean(op == "<" ? c < 0 : op == "<=" ? c <= 0 : op == ">" ? c > 0 : c >= 0);
    }
    if (op == "+") {
      if (a.kind == Value::kString && b.kind == Value::kString) return Value::str(a.s + b.s);
      if (a.kind == Value::kList && b.kind == Value::kList) {
        List l = *a.list;
        l.insert(l.end(), b.list->begin(), b.list->end());
        return Value::make_list(std::move(l));
      }
    }
    if (op == "*" && ((a.kind == Value::kString && b.kind == Value::kInt) || (a.kind == Value::kInt && b.kind == Value::kString))) {
      const Value& s = a.kind == Value::kString ? a : b;
      const int64_t n = a.kind == Value::kInt ? a.i : b.i;
      if (n * static_cast<int64_t>(s.s.size()) > (int64_t{64} << 20)) TPL_FAIL(e.line, "string repetition too large");
      std::string r;
      for (int64_t k = 0; k < n; ++k) r += s.s;
      return Value::str(std::move(r));
    }
    if (!a.is_number() || !b.is_number()) {
      if (op == "+" && (a.kind == Value::kString || b.kind == Value::kString))
        TPL_FAIL(e.line, "can only concatenate str (not \"{}\") to str", type_name(a.kind == Value::kString ? b : a));
      TPL_FAIL(e.line, "unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(a), type_name(b));
    }
    const bool ints = a.kind != Value::kFloat && b.kind != Value::kFloat;
    const int64_t ai = a.kind == Value::kBool ? a.b : a.i, bi = b.kind == Value::kBool ? b.b : b.i;
    const double ad = a.as_double(), bd = b.as_double();
    if (op == "+") return ints ? Value::integer(ai + bi) : Value::number(ad + bd);
    if (op == "-") return ints ? Value::integer(ai - bi) : Value::number(ad - bd);
    if (op == "*") return ints ? Value::integer(ai * bi) : Value::number(ad * bd);
    if (op == "/") {
      if (bd == 0) TPL_FAIL(e.line, "division by zero");
      return Value::number(ad / bd);
    }
    if (op == "//" || op == "%") {
      if (bd == 0) TPL_FAIL(e.line, "integer division or modulo by zero");
      if (ints) {
        int64_t q = ai / bi, r = ai % bi;
        if (r != 0 && ((r < 0) != (bi < 0))) q -= 1, r += bi;  // Python floors
        return Value::integer(op == "//" ? q : r);
      }
      const double q = std::floor(ad / bd);
      return Value::number(op == "//" ? q : ad - q * bd);
    }
    if (op == "**") {
      if (ints && bi >= 0) {
        int64_t r = 1;
        for (int64_t k = 0; k < bi && k < 64; ++k) r *= ai;
        return Value::integer(r);
      }
      return Value::number(std::pow(ad, bd));
    }
    TPL_FAIL(e.line, "unsupported operator '{}'", op);
  }

  std::vector<std::unordered_map<std::string, Value>> scopes_;
};

}  // namespace

Template::Template(std::string_view source) : body_(parse_template(source)) {}

std::string Template::render(const std::unordered_map<std::string, Value>& variables) const {
  Renderer r(variables);
  r.exec(body_);
  return std::move(r.out);
}

}  // namespace dsv::jinja
