#include "tokenizer/jinja/parser.h"

#include <cstdlib>

#include "core/error.h"

namespace dsv::jinja {

namespace {

struct Token {
  enum Kind { kText, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt, kFloat, kOp, kEnd };
  Kind kind;
  std::string text;
  int line;
};

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

// Splits the source into text and tag tokens, applying whitespace control as Jinja2's lexer does
// with trim_blocks=True and lstrip_blocks=True.
class Lexer {
 public:
  explicit Lexer(std::string_view raw) {
    // Jinja2 normalizes newlines to \n and drops one trailing newline (keep_trailing_newline=False).
    for (size_t k = 0; k < raw.size(); ++k) {
      if (raw[k] == '\r') {
        src_ += '\n';
        if (k + 1 < raw.size() && raw[k + 1] == '\n') ++k;
      } else {
        src_ += raw[k];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
  }

  std::vector<Token> run() {
    size_t pos = 0;
    while (pos < src_.size()) {
      size_t tag = find_tag(pos);
      std::string text = src_.substr(pos, tag - pos);
      if (tag == src_.size()) {
        emit_text(text);
        break;
      }
      const char kind = src_[tag + 1];  // '{', '%' or '#'
      size_t p = tag + 2;
      const char sign = p < src_.size() && (src_[p] == '-' || src_[p] == '+') ? src_[p] : 0;
      if (sign) ++p;
      if (sign == '-') {
        while (!text.empty() && is_space(text.back())) text.pop_back();
      } else if (sign != '+' && kind != '{') {
        // lstrip_blocks: drop spaces and tabs between the line start and a block or comment tag.
        const size_t nl = text.rfind('\n');
        const size_t from = nl == std::string::npos ? 0 : nl + 1;
        const bool line_start = nl != std::string::npos || pos == 0 || src_[pos - 1] == '\n';
        if (line_start && text.find_first_not_of(" \t", from) == std::string::npos) text.erase(from);
      }
      emit_text(text);
      if (kind == '#') {
        size_t close = src_.find("#}", p);
        if (close == std::string::npos) fail(tag, "unclosed comment '{#'");
        const bool minus = close > p && src_[close - 1] == '-';
        const bool plus = close > p && src_[close - 1] == '+';
        pos = after_tag(close + 2, minus, plus);
        continue;
      }
      out_.push_back({kind == '{' ? Token::kVarBegin : Token::kBlockBegin, {}, line_at(tag)});
      pos = lex_tag(p, kind == '{' ? '}' : '%');
    }
    out_.push_back({Token::kEnd, {}, line_at(src_.size())});
    return std::move(out_);
  }

 private:
  size_t find_tag(size_t pos) const {
    for (size_t k = src_.find('{', pos); k != std::string::npos; k = src_.find('{', k + 1)) {
      if (k + 1 < src_.size() && (src_[k + 1] == '{' || src_[k + 1] == '%' || src_[k + 1] == '#')) return k;
    }
    return src_.size();
  }
  int line_at(size_t pos) const {
    int line = 1;
    for (size_t k = 0; k < pos && k < src_.size(); ++k) line += src_[k] == '\n';
    return line;
  }
  [[noreturn]] void fail(size_t pos, const std::string& what) const {
    DSV_FAIL("chat template, line {}: {}", line_at(pos), what);
  }
  void emit_text(const std::string& text) {
    if (!text.empty()) out_.push_back({Token::kText, text, 0});
  }
  // Whitespace after a closing delimiter: '-' strips it all, trim_blocks eats one newline.
  size_t after_tag(size_t pos, bool minus, bool plus, bool block = true) const {
    if (minus) {
      while (pos < src_.size() && is_space(src_[pos])) ++pos;
    } else if (block && !plus && pos < src_.size() && src_[pos] == '\n') {
      ++pos;
    }
    return pos;
  }

  size_t lex_tag(size_t p, char closer) {
    const size_t start = p;
    while (true) {
      while (p < src_.size() && is_space(src_[p])) ++p;
      if (p >= src_.size()) fail(start, closer == '}' ? "unclosed '{{'" : "unclosed '{%'");
      const char c = src_[p];
      // Closing delimiter, possibly with a whitespace-control sign.
      auto closes_at = [&](size_t q) { return q + 1 < src_.size() && src_[q] == closer && src_[q + 1] == '}'; };
      if ((c == '-' || c == '+') && closes_at(p + 1)) {
        out_.push_back({closer == '}' ? Token::kVarEnd : Token::kBlockEnd, {}, line_at(p)});
        return after_tag(p + 3, c == '-', c == '+', closer == '%');
      }
      if (closes_at(p)) {
        out_.push_back({closer == '}' ? Token::kVarEnd : Token::kBlockEnd, {}, line_at(p)});
        return after_tag(p + 2, false, false, closer == '%');
      }
      const int line = line_at(p);
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t q = p;
        while (q < src_.size() && (std::isalnum(static_cast<unsigned char>(src_[q])) || src_[q] == '_')) ++q;
        out_.push_back({Token::kName, src_.substr(p, q - p), line});
        p = q;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        size_t q = p;
        bool is_float = false;
        while (q < src_.size() && (std::isdigit(static_cast<unsigned char>(src_[q])) || src_[q] == '_')) ++q;
        if (q + 1 < src_.size() && src_[q] == '.' && std::isdigit(static_cast<unsigned char>(src_[q + 1]))) {
          is_float = true;
          ++q;
          while (q < src_.size() && std::isdigit(static_cast<unsigned char>(src_[q]))) ++q;
        }
        if (q < src_.size() && (src_[q] == 'e' || src_[q] == 'E')) {
          size_t r = q + 1;
          if (r < src_.size() && (src_[r] == '+' || src_[r] == '-')) ++r;
          if (r < src_.size() && std::isdigit(static_cast<unsigned char>(src_[r]))) {
            is_float = true;
            q = r;
            while (q < src_.size() && std::isdigit(static_cast<unsigned char>(src_[q]))) ++q;
          }
        }
        std::string num;
        for (size_t k = p; k < q; ++k)
          if (src_[k] != '_') num += src_[k];
        out_.push_back({is_float ? Token::kFloat : Token::kInt, num, line});
        p = q;
      } else if (c == '\'' || c == '"') {
        std::string s;
        size_t q = p + 1;
        for (;; ++q) {
          if (q >= src_.size()) fail(p, "unterminated string literal");
          if (src_[q] == c) break;
          if (src_[q] == '\\' && q + 1 < src_.size()) {
            const char e = src_[++q];
            switch (e) {
              case 'n': s += '\n'; break;
              case 't': s += '\t'; break;
              case 'r': s += '\r'; break;
              case '\\': s += '\\'; break;
              case '\'': s += '\''; break;
              case '"': s += '"'; break;
              case '\n': break;
              default: s += '\\'; s += e;  // Python keeps unknown escapes verbatim
            }
          } else {
            s += src_[q];
          }
        }
        out_.push_back({Token::kString, s, line});
        p = q + 1;
      } else {
        static const char* ops[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "(",
                                    ")", "[", "]", "{", "}", ",", ".", ":", "|", "="};
        bool found = false;
        for (const char* op : ops) {
          const size_t n = std::char_traits<char>::length(op);
          if (src_.compare(p, n, op) == 0) {
            out_.push_back({Token::kOp, op, line});
            p += n;
            found = true;
            break;
          }
        }
        if (!found) fail(p, std::string("unexpected character '") + c + "'");
      }
    }
  }

  std::string src_;
  std::vector<Token> out_;
};

class Parser {
 public:
  explicit Parser(std::vector<Token> toks) : t_(std::move(toks)) {}

  Body parse_all() {
    Body body = parse_body({});
    if (peek().kind != Token::kEnd) fail("unexpected tag '" + block_name() + "'");
    return body;
  }

 private:
  const Token& peek(size_t k = 0) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  const Token& next() { return t_[std::min(i_++, t_.size() - 1)]; }
  [[noreturn]] void fail(const std::string& what) const { DSV_FAIL("chat template, line {}: {}", peek().line, what); }
  bool is_op(const char* op, size_t k = 0) const { return peek(k).kind == Token::kOp && peek(k).text == op; }
  bool is_name(const char* n, size_t k = 0) const { return peek(k).kind == Token::kName && peek(k).text == n; }
  void expect_op(const char* op) {
    if (!is_op(op)) fail(fmt::format("expected '{}', found '{}'", op, peek().text));
    ++i_;
  }
  std::string expect_name() {
    if (peek().kind != Token::kName) fail(fmt::format("expected a name, found '{}'", peek().text));
    return next().text;
  }
  void expect_block_end() {
    if (peek().kind != Token::kBlockEnd) fail(fmt::format("expected '%}}', found '{}'", peek().text));
    ++i_;
  }
  std::string block_name() const { return peek().kind == Token::kBlockBegin ? peek(1).text : peek().text; }

  // Parses nodes until a block tag whose name is in `stops` (left unconsumed) or the end.
  Body parse_body(std::initializer_list<const char*> stops) {
    Body body;
    while (true) {
      const Token& tk = peek();
      if (tk.kind == Token::kEnd) return body;
      if (tk.kind == Token::kText) {
        auto n = std::make_unique<Node>();
        n->kind = Node::kText;
        n->text = next().text;
        body.push_back(std::move(n));
      } else if (tk.kind == Token::kVarBegin) {
        auto n = std::make_unique<Node>();
        n->kind = Node::kOutput;
        n->line = next().line;
        n->expr = parse_expr();
        if (peek().kind != Token::kVarEnd) fail(fmt::format("expected '}}}}', found '{}'", peek().text));
        ++i_;
        body.push_back(std::move(n));
      } else if (tk.kind == Token::kBlockBegin) {
        const std::string name = peek(1).text;
        for (const char* s : stops)
          if (name == s) return body;
        ++i_;
        if (NodePtr n = parse_statement()) body.push_back(std::move(n));
      } else {
        fail("unexpected token '" + tk.text + "'");
      }
    }
  }

  // Bounds recursion on hostile input (deep nesting would otherwise overflow the stack).
  struct DepthGuard {
    int& d;
    DepthGuard(int& depth, const Parser& p) : d(depth) {
      if (++d > 256) p.fail("nesting deeper than 256 levels");
    }
    ~DepthGuard() { --d; }
  };

  NodePtr parse_statement() {
    DepthGuard guard(depth_, *this);
    const int line = peek().line;
    const std::string kw = expect_name();
    auto n = std::make_unique<Node>();
    n->line = line;
    if (kw == "if") {
      n->kind = Node::kIf;
      ExprPtr cond = parse_expr();
      expect_block_end();
      while (true) {
        Body b = parse_body({"elif", "else", "endif"});
        n->branches.emplace_back(std::move(cond), std::move(b));
        if (peek().kind == Token::kEnd) fail("missing '{% endif %}'");
        ++i_;
        const std::string tag = expect_name();
        if (tag == "endif") break;
        if (tag == "elif") {
          cond = parse_expr();
        } else {
          cond = nullptr;
          expect_block_end();
          n->branches.emplace_back(nullptr, parse_body({"endif"}));
          if (peek().kind == Token::kEnd) fail("missing '{% endif %}'");
          ++i_;
          expect_name();
          break;
        }
        expect_block_end();
      }
      expect_block_end();
    } else if (kw == "for") {
      n->kind = Node::kFor;
      n->targets.push_back(expect_name());
      while (is_op(",")) {
        ++i_;
        n->targets.push_back(expect_name());
      }
      if (!is_name("in")) fail("expected 'in' in the for statement");
      ++i_;
      n->expr = parse_or();  // no inline if: "if" here filters the loop
      if (is_name("if")) {
        ++i_;
        n->filter = parse_expr();
      }
      if (is_name("recursive")) fail("recursive for loops are not supported");
      expect_block_end();
      n->body = parse_body({"else", "endfor"});
      if (peek().kind == Token::kEnd) fail("missing '{% endfor %}'");
      ++i_;
      if (expect_name() == "else") {
        expect_block_end();
        n->else_body = parse_body({"endfor"});
        if (peek().kind == Token::kEnd) fail("missing '{% endfor %}'");
        ++i_;
        expect_name();
      }
      expect_block_end();
    } else if (kw == "set") {
      n->kind = Node::kSet;
      n->targets.push_back(expect_name());
      if (is_op(".")) {
        ++i_;
        n->targets.push_back(expect_name());
      }
      if (is_op(",")) fail("tuple assignment in 'set' is not supported");
      if (peek().kind == Token::kBlockEnd) fail("block assignment '{% set x %}...{% endset %}' is not supported");
      expect_op("=");
      n->expr = parse_expr();
      expect_block_end();
    } else if (kw == "break" || kw == "continue") {
      n->kind = kw == "break" ? Node::kBreak : Node::kContinue;
      expect_block_end();
    } else if (kw == "generation" || kw == "endgeneration") {
      // transformers' assistant-mask markers: they render their body unchanged.
      expect_block_end();
      return nullptr;
    } else {
      fail(fmt::format("the '{{% {} %}}' statement is not supported by dsv's template engine (supported: if, for, "
                       "set, break, continue, generation)", kw));
    }
    return n;
  }

  ExprPtr make(Expr::Kind k, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = line;
    return e;
  }

  ExprPtr parse_expr() {
    DepthGuard guard(depth_, *this);
    ExprPtr e = parse_or();
    if (is_name("if")) {
      auto c = make(Expr::kCond, peek().line);
      ++i_;
      c->args.push_back(parse_or());
      c->args.push_back(std::move(e));
      if (is_name("else")) {
        ++i_;
        c->args.push_back(parse_expr());
      } else {
        c->args.push_back(nullptr);
      }
      return c;
    }
    return e;
  }
  ExprPtr binary(const std::string& op, ExprPtr a, ExprPtr b) {
    auto e = make(Expr::kBinary, a->line);
    e->name = op;
    e->args.push_back(std::move(a));
    e->args.push_back(std::move(b));
    return e;
  }
  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      ++i_;
      e = binary("or", std::move(e), parse_and());
    }
    return e;
  }
  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      ++i_;
      e = binary("and", std::move(e), parse_not());
    }
    return e;
  }
  ExprPtr parse_not() {
    DepthGuard guard(depth_, *this);
    if (is_name("not")) {
      auto e = make(Expr::kUnary, next().line);
      e->name = "not";
      e->args.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }
  ExprPtr parse_compare() {
    ExprPtr e = parse_math1();
    while (true) {
      std::string op;
      if (peek().kind == Token::kOp && (peek().text == "==" || peek().text == "!=" || peek().text == "<" ||
                                        peek().text == "<=" || peek().text == ">" || peek().text == ">=")) {
        op = next().text;
      } else if (is_name("in")) {
        ++i_;
        op = "in";
      } else if (is_name("not") && is_name("in", 1)) {
        i_ += 2;
        op = "not in";
      } else {
        return e;
      }
      e = binary(op, std::move(e), parse_math1());
    }
  }
  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      const std::string op = next().text;
      e = binary(op, std::move(e), parse_concat());
    }
    return e;
  }
  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      ++i_;
      e = binary("~", std::move(e), parse_math2());
    }
    return e;
  }
  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const std::string op = next().text;
      e = binary(op, std::move(e), parse_pow());
    }
    return e;
  }
  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      ++i_;
      e = binary("**", std::move(e), parse_unary(true));
    }
    return e;
  }
  ExprPtr parse_unary(bool with_filter) {
    DepthGuard guard(depth_, *this);
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      e = make(Expr::kUnary, peek().line);
      e->name = next().text;
      e->args.push_back(parse_unary(false));
    } else {
      e = parse_postfix(parse_primary());
    }
    return with_filter ? parse_filters(std::move(e)) : std::move(e);
  }
  ExprPtr parse_primary() {
    const Token& tk = peek();
    const int line = tk.line;
    if (tk.kind == Token::kString) {
      std::string s = next().text;
      while (peek().kind == Token::kString) s += next().text;  // adjacent literals concatenate
      auto e = make(Expr::kLiteral, line);
      e->value = Value::str(std::move(s));
      return e;
    }
    if (tk.kind == Token::kInt || tk.kind == Token::kFloat) {
      auto e = make(Expr::kLiteral, line);
      const std::string txt = next().text;
      e->value = tk.kind == Token::kInt ? Value::integer(std::strtoll(txt.c_str(), nullptr, 10))
                                        : Value::number(std::strtod(txt.c_str(), nullptr));
      return e;
    }
    if (tk.kind == Token::kName) {
      const std::string n = next().text;
      auto e = make(Expr::kLiteral, line);
      if (n == "true" || n == "True") e->value = Value::boolean(true);
      else if (n == "false" || n == "False") e->value = Value::boolean(false);
      else if (n == "none" || n == "None") e->value = Value::none();
      else {
        e->kind = Expr::kName;
        e->name = n;
      }
      return e;
    }
    if (is_op("(")) {
      ++i_;
      if (is_op(")")) {
        ++i_;
        return make(Expr::kList, line);  // empty tuple
      }
      ExprPtr e = parse_expr();
      if (is_op(",")) {
        auto t = make(Expr::kList, line);
        t->args.push_back(std::move(e));
        while (is_op(",")) {
          ++i_;
          if (is_op(")")) break;
          t->args.push_back(parse_expr());
        }
        e = std::move(t);
      }
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      ++i_;
      auto e = make(Expr::kList, line);
      while (!is_op("]")) {
        e->args.push_back(parse_expr());
        if (!is_op(",")) break;
        ++i_;
      }
      expect_op("]");
      return e;
    }
    if (is_op("{")) {
      ++i_;
      auto e = make(Expr::kDict, line);
      while (!is_op("}")) {
        e->args.push_back(parse_expr());
        expect_op(":");
        e->args.push_back(parse_expr());
        if (!is_op(",")) break;
        ++i_;
      }
      expect_op("}");
      return e;
    }
    fail(fmt::format("unexpected '{}' in an expression", tk.text));
  }
  void parse_call_args(Expr& e) {
    expect_op("(");
    while (!is_op(")")) {
      if (peek().kind == Token::kName && is_op("=", 1)) {
        std::string key = next().text;
        ++i_;
        e.kwargs.emplace_back(std::move(key), parse_expr());
      } else {
        e.args.push_back(parse_expr());
      }
      if (!is_op(",")) break;
      ++i_;
    }
    expect_op(")");
  }
  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".")) {
        ++i_;
        auto a = make(Expr::kAttr, e->line);
        if (peek().kind == Token::kInt) a->kind = Expr::kItem;  // x.0 is x[0]
        if (a->kind == Expr::kItem) {
          a->args.push_back(std::move(e));
          auto idx = make(Expr::kLiteral, a->line);
          idx->value = Value::integer(std::strtoll(next().text.c_str(), nullptr, 10));
          a->args.push_back(std::move(idx));
        } else {
          a->name = expect_name();
          a->args.push_back(std::move(e));
        }
        e = std::move(a);
      } else if (is_op("[")) {
        ++i_;
        ExprPtr parts[3];
        bool slice = false;
        for (int k = 0; k < 3; ++k) {
          if (!is_op(":") && !is_op("]")) parts[k] = parse_expr();
          if (k < 2 && is_op(":")) {
            ++i_;
            slice = true;
          } else {
            break;
          }
        }
        expect_op("]");
        auto s = make(slice ? Expr::kSlice : Expr::kItem, e->line);
        s->args.push_back(std::move(e));
        if (!slice && !parts[0]) fail("empty subscript '[]'");
        for (int k = 0; k < (slice ? 3 : 1); ++k) s->args.push_back(std::move(parts[k]));
        e = std::move(s);
      } else if (is_op("(")) {
        auto c = make(Expr::kCall, e->line);
        c->args.push_back(std::move(e));
        parse_call_args(*c);
        e = std::move(c);
      } else {
        return e;
      }
    }
  }
  ExprPtr parse_filters(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        ++i_;
        auto f = make(Expr::kFilter, e->line);
        f->name = expect_name();
        f->args.push_back(std::move(e));
        if (is_op("(")) parse_call_args(*f);
        e = std::move(f);
      } else if (is_name("is")) {
        ++i_;
        auto t = make(Expr::kTest, e->line);
        if (is_name("not")) {
          ++i_;
          t->negated = true;
        }
        t->name = expect_name();
        t->args.push_back(std::move(e));
        if (is_op("(")) {
          parse_call_args(*t);
        } else if (peek().kind == Token::kString || peek().kind == Token::kInt || peek().kind == Token::kFloat ||
                   (peek().kind == Token::kName && !is_name("and") && !is_name("or") && !is_name("if") &&
                    !is_name("else") && !is_name("is") && !is_name("in") && !is_name("not"))) {
          t->args.push_back(parse_primary());  // "is divisibleby 3", "is sameas none"
        }
        e = std::move(t);
      } else {
        return e;
      }
    }
  }

  std::vector<Token> t_;
  size_t i_ = 0;
  int depth_ = 0;
};

}  // namespace

Body parse_template(std::string_view source) { return Parser(Lexer(source).run()).parse_all(); }

}  // namespace dsv::jinja
