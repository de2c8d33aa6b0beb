// Lexer and parser of the template engine. Both follow jinja2 3.1 (jinja2/lexer.py,
// jinja2/parser.py) rule by rule, with the HF settings fixed: trim_blocks, lstrip_blocks,
// keep_trailing_newline=False, default delimiters, no line statements.
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "coordinator/text/jinja.h"
#include "coordinator/text/jinja_ast.h"
#include "coordinator/text/jinja_utf8.h"

namespace rs::jinja {
namespace internal {
namespace {

enum class Tok {
  kData, kVarBegin, kVarEnd, kBlockBegin, kBlockEnd, kName, kString, kInt, kFloat, kOp, kEof
};

struct Token {
  Tok type;
  std::string text;  // data, name, operator, decoded string
  Value value;       // numbers
  int line = 1, col = 1;
};

std::string Describe(const Token& t) {
  switch (t.type) {
    case Tok::kData: return "template data";
    case Tok::kVarBegin: return "begin of print statement";
    case Tok::kVarEnd: return "end of print statement";
    case Tok::kBlockBegin: return "begin of statement block";
    case Tok::kBlockEnd: return "end of statement block";
    case Tok::kEof: return "end of template";
    case Tok::kString: return "string";
    case Tok::kInt:
    case Tok::kFloat: return "number";
    default: return t.text;
  }
}

// Python's str.isspace over the code point at s[i].
bool SpaceAt(std::string_view s, size_t i, size_t* next) {
  size_t j = i;
  uint32_t cp = utf8::Decode(s, &j);
  if (!utf8::IsSpace(cp)) return false;
  *next = j;
  return true;
}

std::string RStripSpace(std::string_view s) {
  // Walk forward remembering the end of the last non-space code point.
  size_t i = 0, keep = 0;
  while (i < s.size()) {
    size_t j = i;
    uint32_t cp = utf8::Decode(s, &j);
    if (!utf8::IsSpace(cp)) keep = j;
    i = j;
  }
  return std::string(s.substr(0, keep));
}

bool AllSpace(std::string_view s) {
  if (s.empty()) return false;  // \s+ needs one character
  size_t i = 0;
  while (i < s.size()) {
    size_t j;
    if (!SpaceAt(s, i, &j)) return false;
    i = j;
  }
  return true;
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsNameStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool IsNameChar(char c) { return IsNameStart(c) || IsDigit(c); }

class Lexer {
 public:
  explicit Lexer(std::string_view src) {
    // Newlines: \r\n and \r become \n; one trailing newline is dropped.
    src_.reserve(src.size());
    for (size_t i = 0; i < src.size(); ++i) {
      if (src[i] == '\r') {
        src_.push_back('\n');
        if (i + 1 < src.size() && src[i + 1] == '\n') ++i;
      } else {
        src_.push_back(src[i]);
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
  }

  std::vector<Token> Run() {
    size_t pos = 0;
    bool line_starting = true;
    const size_t n = src_.size();
    while (pos < n) {
      size_t idx = FindTagStart(pos);
      if (idx == std::string::npos) {
        Emit(Tok::kData, src_.substr(pos), pos);
        pos = n;
        break;
      }
      std::string text = src_.substr(pos, idx - pos);
      char kind = src_[idx + 1];  // '{' '%' '#'
      size_t after = idx + 2;
      char sign = 0;
      if (after < n && (src_[after] == '-' || src_[after] == '+')) sign = src_[after++];
      if (kind == '%') CheckRaw(after, idx);
      if (sign == '-') {
        text = RStripSpace(text);
      } else if (sign != '+' && kind != '{') {
        size_t nl = text.rfind('\n');
        size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if ((l_pos > 0 || line_starting) && AllSpace(std::string_view(text).substr(l_pos)))
          text.resize(l_pos);
      }
      if (!text.empty()) Emit(Tok::kData, text, pos);
      pos = after;
      if (kind == '#') {
        pos = LexComment(pos, idx, &line_starting);
        continue;
      }
      Emit(kind == '{' ? Tok::kVarBegin : Tok::kBlockBegin, "", idx);
      pos = LexTag(pos, kind == '{', &line_starting);
    }
    Token eof{Tok::kEof, "", {}, 0, 0};
    Locate(n, &eof.line, &eof.col);
    toks_.push_back(std::move(eof));
    return std::move(toks_);
  }

  const std::string& source() const { return src_; }

 private:
  void Locate(size_t off, int* line, int* col) {
    // Incremental: offsets are requested in increasing order almost always.
    if (off < loc_off_) {
      loc_off_ = 0;
      loc_line_ = 1;
      loc_col_ = 1;
    }
    for (; loc_off_ < off && loc_off_ < src_.size(); ++loc_off_) {
      if (src_[loc_off_] == '\n') {
        ++loc_line_;
        loc_col_ = 1;
      } else {
        ++loc_col_;
      }
    }
    *line = loc_line_;
    *col = loc_col_;
  }
  void Emit(Tok t, std::string text, size_t off, Value v = {}) {
    Token tok{t, std::move(text), std::move(v), 1, 1};
    Locate(off, &tok.line, &tok.col);
    toks_.push_back(std::move(tok));
  }
  [[noreturn]] void FailAt(size_t off, const std::string& msg) {
    int l, c;
    Locate(off, &l, &c);
    Fail(msg, l, c);
  }

  size_t FindTagStart(size_t pos) const {
    while (true) {
      size_t i = src_.find('{', pos);
      if (i == std::string::npos || i + 1 >= src_.size()) return std::string::npos;
      char c = src_[i + 1];
      if (c == '{' || c == '%' || c == '#') return i;
      pos = i + 1;
    }
  }

  void CheckRaw(size_t p, size_t tag_off) {
    while (p < src_.size() && (src_[p] == ' ' || src_[p] == '\t' || src_[p] == '\n')) ++p;
    if (src_.compare(p, 3, "raw") == 0 && (p + 3 >= src_.size() || !IsNameChar(src_[p + 3])))
      FailAt(tag_off, "unsupported statement 'raw'");
  }

  size_t LexComment(size_t pos, size_t begin_off, bool* line_starting) {
    for (size_t p = pos; p < src_.size(); ++p) {
      size_t end;
      if (src_.compare(p, 3, "+#}") == 0) {
        end = p + 3;
      } else if (src_.compare(p, 3, "-#}") == 0) {
        end = p + 3;
        size_t j;
        while (end < src_.size() && SpaceAt(src_, end, &j)) end = j;
      } else if (src_.compare(p, 2, "#}") == 0) {
        end = p + 2;
        if (end < src_.size() && src_[end] == '\n') ++end;
      } else {
        continue;
      }
      *line_starting = src_[end - 1] == '\n';
      return end;
    }
    FailAt(begin_off, "Missing end of comment tag");
  }

  size_t LexTag(size_t pos, bool is_var, bool* line_starting) {
    std::vector<char> balance;
    const size_t n = src_.size();
    while (true) {
      if (pos >= n) FailAt(pos, is_var ? "unexpected end of template, expected '}}'"
                                       : "unexpected end of template, expected '%}'");
      if (balance.empty()) {
        size_t end = 0;
        if (is_var) {
          if (src_.compare(pos, 3, "-}}") == 0) {
            end = pos + 3;
            size_t j;
            while (end < n && SpaceAt(src_, end, &j)) end = j;
          } else if (src_.compare(pos, 2, "}}") == 0) {
            end = pos + 2;
          }
        } else {
          if (src_.compare(pos, 3, "+%}") == 0) {
            end = pos + 3;
          } else if (src_.compare(pos, 3, "-%}") == 0) {
            end = pos + 3;
            size_t j;
            while (end < n && SpaceAt(src_, end, &j)) end = j;
          } else if (src_.compare(pos, 2, "%}") == 0) {
            end = pos + 2;
            if (end < n && src_[end] == '\n') ++end;
          }
        }
        if (end) {
          Emit(is_var ? Tok::kVarEnd : Tok::kBlockEnd, "", pos);
          *line_starting = src_[end - 1] == '\n';
          return end;
        }
      }
      char c = src_[pos];
      size_t j;
      if (SpaceAt(src_, pos, &j)) {
        pos = j;
        continue;
      }
      if (IsDigit(c)) {
        pos = LexNumber(pos);
        continue;
      }
      if (IsNameStart(c)) {
        size_t e = pos;
        while (e < n && IsNameChar(src_[e])) ++e;
        Emit(Tok::kName, src_.substr(pos, e - pos), pos);
        pos = e;
        continue;
      }
      if (c == '\'' || c == '"') {
        pos = LexString(pos);
        continue;
      }
      static const char* kOps2[] = {"**", "//", "==", "!=", ">=", "<="};
      bool two = false;
      for (const char* op : kOps2) {
        if (src_.compare(pos, 2, op) == 0) {
          Emit(Tok::kOp, op, pos);
          pos += 2;
          two = true;
          break;
        }
      }
      if (two) continue;
      if (std::string_view("+-/*%~[](){}<>=.:|,;").find(c) == std::string_view::npos)
        FailAt(pos, absl::StrCat("unexpected char '", std::string(1, c), "'"));
      if (c == '(' || c == '[' || c == '{') {
        balance.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
      } else if (c == ')' || c == ']' || c == '}') {
        if (balance.empty()) FailAt(pos, absl::StrCat("unexpected '", std::string(1, c), "'"));
        if (balance.back() != c)
          FailAt(pos, absl::StrCat("unexpected '", std::string(1, c), "', expected '",
                                   std::string(1, balance.back()), "'"));
        balance.pop_back();
      }
      Emit(Tok::kOp, std::string(1, c), pos);
      ++pos;
    }
  }

  // float_re / integer_re of jinja2 (underscore separators allowed between digits).
  size_t Digits(size_t p) const {  // (\d+_)*\d+ ; returns end or p when none
    size_t e = p;
    if (e >= src_.size() || !IsDigit(src_[e])) return p;
    while (true) {
      while (e < src_.size() && IsDigit(src_[e])) ++e;
      if (e + 1 < src_.size() && src_[e] == '_' && IsDigit(src_[e + 1])) {
        ++e;
        continue;
      }
      return e;
    }
  }
  size_t LexNumber(size_t pos) {
    const size_t n = src_.size();
    // Float: digits ( (.digits)? e[+-]?digits | .digits ), not preceded by '.'.
    bool prev_dot = pos > 0 && src_[pos - 1] == '.';
    size_t e = Digits(pos);
    if (!prev_dot) {
      size_t f = e;
      bool frac = false;
      if (f < n && src_[f] == '.') {
        size_t g = Digits(f + 1);
        if (g > f + 1) {
          f = g;
          frac = true;
        }
      }
      size_t x = f;
      bool expo = false;
      if (x < n && (src_[x] == 'e' || src_[x] == 'E')) {
        size_t y = x + 1;
        if (y < n && (src_[y] == '+' || src_[y] == '-')) ++y;
        size_t z = Digits(y);
        if (z > y) {
          x = z;
          expo = true;
        }
      }
      if (frac || expo) {
        size_t end = expo ? x : f;
        std::string num;
        for (size_t i = pos; i < end; ++i)
          if (src_[i] != '_') num.push_back(src_[i]);
        Emit(Tok::kFloat, num, pos, Value::Float(std::strtod(num.c_str(), nullptr)));
        return end;
      }
    }
    // Integer: 0b / 0o / 0x prefixes, decimal, or zeros.
    int base = 10;
    size_t start = pos;
    if (src_[pos] == '0' && pos + 1 < n) {
      char p = src_[pos + 1] | 0x20;
      if (p == 'b' || p == 'o' || p == 'x') {
        base = p == 'b' ? 2 : p == 'o' ? 8 : 16;
        start = pos + 2;
      }
    }
    auto ok_digit = [&](char c) {
      if (base == 2) return c == '0' || c == '1';
      if (base == 8) return c >= '0' && c <= '7';
      if (base == 16) return IsDigit(c) || ((c | 0x20) >= 'a' && (c | 0x20) <= 'f');
      return IsDigit(c);
    };
    std::string num;
    size_t p = start;
    if (base == 10 && src_[pos] == '0') {
      // 0(_?0)*
      num = "0";
      ++p;
      while (true) {
        if (p < n && src_[p] == '0') { ++p; continue; }
        if (p + 1 < n && src_[p] == '_' && src_[p + 1] == '0') { p += 2; continue; }
        break;
      }
    } else {
      while (true) {
        if (p < n && ok_digit(src_[p])) { num.push_back(src_[p++]); continue; }
        if (p + 1 < n && src_[p] == '_' && ok_digit(src_[p + 1]) && (base != 10 || !num.empty())) {
          ++p;
          continue;
        }
        break;
      }
      if (num.empty()) {
        // "0x" without digits: jinja2 lexes the 0 alone.
        base = 10;
        num = "0";
        p = pos + 1;
      }
    }
    errno = 0;
    long long v = std::strtoll(num.c_str(), nullptr, base);
    if (errno == ERANGE) FailAt(pos, "integer literal out of the 64-bit range");
    Emit(Tok::kInt, src_.substr(pos, p - pos), pos, Value::Int(v));
    return p;
  }

  // Python unicode-escape decoding of the literal's body.
  size_t LexString(size_t pos) {
    const char q = src_[pos];
    const size_t n = src_.size();
    size_t p = pos + 1;
    std::string out;
    auto hex = [&](size_t at, int count) -> uint32_t {
      uint32_t v = 0;
      for (int k = 0; k < count; ++k) {
        if (at + k >= n) FailAt(pos, "truncated escape in string literal");
        char c = src_[at + k];
        int d = IsDigit(c) ? c - '0' : ((c | 0x20) >= 'a' && (c | 0x20) <= 'f') ? (c | 0x20) - 'a' + 10 : -1;
        if (d < 0) FailAt(pos, "truncated escape in string literal");
        v = v * 16 + d;
      }
      return v;
    };
    while (true) {
      if (p >= n) FailAt(pos, "unexpected end of template inside a string literal");
      char c = src_[p];
      if (c == q) break;
      if (c != '\\') {
        out.push_back(c);
        ++p;
        continue;
      }
      if (p + 1 >= n) FailAt(pos, "unexpected end of template inside a string literal");
      char e = src_[p + 1];
      p += 2;
      switch (e) {
        case '\n': break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'v': out += '\v'; break;
        case 'x': utf8::Append(hex(p, 2), &out); p += 2; break;
        case 'u': utf8::Append(hex(p, 4), &out); p += 4; break;
        case 'U': {
          uint32_t cp = hex(p, 8);
          if (cp > 0x10ffff) FailAt(pos, "illegal Unicode character in string literal");
          utf8::Append(cp, &out);
          p += 8;
          break;
        }
        case 'N': FailAt(pos, "unsupported \\N{...} escape in string literal");
        default:
          if (e >= '0' && e <= '7') {
            uint32_t v = e - '0';
            for (int k = 0; k < 2 && p < n && src_[p] >= '0' && src_[p] <= '7'; ++k) v = v * 8 + (src_[p++] - '0');
            utf8::Append(v, &out);
          } else {
            out += '\\';
            --p;  // the character after the backslash is kept as is
          }
      }
    }
    Emit(Tok::kString, std::move(out), pos);
    return p + 1;
  }

  std::string src_;
  std::vector<Token> toks_;
  size_t loc_off_ = 0;
  int loc_line_ = 1, loc_col_ = 1;
};

// ---- parser ---------------------------------------------------------------------------------

class Parser {
 public:
  explicit Parser(std::vector<Token> toks) : t_(std::move(toks)) {}

  Body ParseTemplate() {
    Body body = Subparse({});
    if (cur().type != Tok::kEof) FailTok(cur(), "unexpected " + Describe(cur()));
    return body;
  }

 private:
  const Token& cur() const { return t_[p_]; }
  const Token& look() const { return t_[std::min(p_ + 1, t_.size() - 1)]; }
  Token next() { return t_[p_ < t_.size() - 1 ? p_++ : p_]; }
  [[noreturn]] void FailTok(const Token& t, const std::string& msg) { Fail(msg, t.line, t.col); }

  bool IsOp(const char* op) const { return cur().type == Tok::kOp && cur().text == op; }
  bool IsName(const char* name) const { return cur().type == Tok::kName && cur().text == name; }
  bool SkipOp(const char* op) {
    if (!IsOp(op)) return false;
    ++p_;
    return true;
  }
  bool SkipName(const char* name) {
    if (!IsName(name)) return false;
    ++p_;
    return true;
  }
  void ExpectOp(const char* op) {
    if (!SkipOp(op)) FailTok(cur(), absl::StrCat("expected '", op, "', got '", Describe(cur()), "'"));
  }
  std::string ExpectName() {
    if (cur().type != Tok::kName) FailTok(cur(), "expected a name, got '" + Describe(cur()) + "'");
    return next().text;
  }
  void ExpectBlockEnd() {
    if (cur().type != Tok::kBlockEnd)
      FailTok(cur(), "expected end of statement block, got '" + Describe(cur()) + "'");
    ++p_;
  }

  ExprPtr Node(ExprKind k, const Token& at) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = at.line;
    e->col = at.col;
    return e;
  }

  // Parses statements until a block tag whose first name is in `ends` (left unconsumed,
  // positioned at that name) or EOF when `ends` is empty.
  Body Subparse(const std::vector<std::string>& ends) {
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::kEof) {
        if (!ends.empty()) {
          std::string want;
          for (const auto& e : ends) want += (want.empty() ? "'" : " or '") + e + "'";
          FailTok(t, "unexpected end of template, expected " + want);
        }
        return body;
      }
      if (t.type == Tok::kData) {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kData;
        s->line = t.line;
        s->col = t.col;
        s->text = t.text;
        body.push_back(std::move(s));
        ++p_;
      } else if (t.type == Tok::kVarBegin) {
        ++p_;
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::kOutput;
        s->line = cur().line;
        s->col = cur().col;
        s->expr = ParseTuple(false, true, {});
        if (cur().type != Tok::kVarEnd)
          FailTok(cur(), "expected end of print statement, got '" + Describe(cur()) + "'");
        ++p_;
        body.push_back(std::move(s));
      } else if (t.type == Tok::kBlockBegin) {
        ++p_;
        if (cur().type == Tok::kName) {
          for (const auto& e : ends)
            if (cur().text == e) return body;
        }
        body.push_back(ParseStatement());
      } else {
        FailTok(t, "unexpected " + Describe(t));
      }
    }
  }

  // Parses statements until one of `ends`; consumes the end name (and its block end when
  // drop_needle). Returns the end name that stopped it.
  std::string ParseStatements(Body* out, const std::vector<std::string>& ends, bool drop_needle) {
    ExpectBlockEnd();
    *out = Subparse(ends);
    std::string which = next().text;
    if (drop_needle) ExpectBlockEnd();
    return which;
  }

  StmtPtr NewStmt(StmtKind k, const Token& at) {
    auto s = std::make_unique<Stmt>();
    s->kind = k;
    s->line = at.line;
    s->col = at.col;
    return s;
  }

  StmtPtr ParseStatement() {
    if (++depth_ > 200) FailTok(cur(), "statements nested deeper than 200 levels");
    StmtPtr s = ParseStatementInner();
    --depth_;
    return s;
  }

  StmtPtr ParseStatementInner() {
    const Token tok = cur();
    if (tok.type != Tok::kName) FailTok(tok, "tag name expected");
    const std::string& kw = tok.text;
    if (kw == "if") return ParseIf();
    if (kw == "for") return ParseFor();
    if (kw == "set") return ParseSet();
    if (kw == "macro") return ParseMacro();
    if (kw == "break" || kw == "continue") {
      ++p_;
      auto s = NewStmt(kw == "break" ? StmtKind::kBreak : StmtKind::kContinue, tok);
      ExpectBlockEnd();
      return s;
    }
    static const char* kKnownUnsupported[] = {"call", "filter", "with", "include", "import",
                                              "from", "extends", "block", "do", "autoescape",
                                              "trans", "generation", "raw"};
    for (const char* u : kKnownUnsupported)
      if (kw == u) FailTok(tok, "unsupported statement '" + kw + "'");
    FailTok(tok, "unknown tag '" + kw + "'");
  }

  StmtPtr ParseIf() {
    auto s = NewStmt(StmtKind::kIf, cur());
    ++p_;  // if
    while (true) {
      s->conds.push_back(ParseTuple(false, false, {}));
      Body b;
      std::string which = ParseStatements(&b, {"elif", "else", "endif"}, false);
      s->bodies.push_back(std::move(b));
      if (which == "elif") continue;
      if (which == "else") ParseStatements(&s->else_body, {"endif"}, true);
      else ExpectBlockEnd();
      return s;
    }
  }

  void ParseAssignTargets(Stmt* s, bool with_namespace, const char* end_name) {
    // name | name.attr (namespace) | name, name, ... | (name, name)
    bool paren = SkipOp("(");
    const Token first = cur();
    std::string n = ExpectName();
    if (with_namespace && !paren && IsOp(".")) {
      ++p_;
      s->targets.push_back(n);
      s->ns_attr = ExpectName();
      return;
    }
    s->targets.push_back(n);
    while (SkipOp(",")) {
      s->target_tuple = true;
      if (paren && IsOp(")")) break;
      if (!paren && (IsOp("=") || (end_name && IsName(end_name)) || cur().type == Tok::kBlockEnd)) break;
      s->targets.push_back(ExpectName());
    }
    if (paren) {
      ExpectOp(")");
      s->target_tuple = true;
    }
    for (const auto& t : s->targets)
      if (t == "true" || t == "false" || t == "none" || t == "True" || t == "False" || t == "None")
        FailTok(first, "can't assign to '" + t + "'");
  }

  StmtPtr ParseFor() {
    auto s = NewStmt(StmtKind::kFor, cur());
    ++p_;  // for
    ParseAssignTargets(s.get(), false, "in");
    if (!SkipName("in")) FailTok(cur(), "expected 'in', got '" + Describe(cur()) + "'");
    s->expr = ParseTuple(false, false, {"recursive"});
    if (SkipName("if")) s->filter = ParseExpression(true);
    if (IsName("recursive")) FailTok(cur(), "unsupported: recursive for loops");
    std::string which = ParseStatements(&s->body, {"endfor", "else"}, false);
    if (which == "else") ParseStatements(&s->else_body, {"endfor"}, true);
    else ExpectBlockEnd();
    return s;
  }

  StmtPtr ParseSet() {
    const Token tok = cur();
    ++p_;  // set
    auto s = NewStmt(StmtKind::kSet, tok);
    ParseAssignTargets(s.get(), true, nullptr);
    if (SkipOp("=")) {
      s->expr = ParseTuple(false, true, {});
      ExpectBlockEnd();
      return s;
    }
    if (IsOp("|")) FailTok(cur(), "unsupported: filtered {% set %} blocks");
    s->kind = StmtKind::kSetBlock;
    ParseStatements(&s->body, {"endset"}, true);
    return s;
  }

  StmtPtr ParseMacro() {
    auto s = NewStmt(StmtKind::kMacro, cur());
    ++p_;  // macro
    s->name = ExpectName();
    ExpectOp("(");
    while (!IsOp(")")) {
      if (!s->params.empty()) ExpectOp(",");
      if (IsOp(")")) break;
      std::string arg = ExpectName();
      ExprPtr dflt;
      if (SkipOp("=")) dflt = ParseExpression(true);
      else if (!s->defaults.empty() && s->defaults.back())
        FailTok(cur(), "non-default argument follows default argument");
      s->params.push_back(arg);
      s->defaults.push_back(std::move(dflt));
    }
    ExpectOp(")");
    ParseStatements(&s->body, {"endmacro"}, true);
    return s;
  }

  // ---- expressions ----

  bool IsTupleEnd(const std::vector<std::string>& extra) const {
    if (cur().type == Tok::kVarEnd || cur().type == Tok::kBlockEnd || IsOp(")")) return true;
    for (const auto& e : extra)
      if (cur().type == Tok::kName && cur().text == e) return true;
    return false;
  }

  ExprPtr ParseTuple(bool simplified, bool with_condexpr, const std::vector<std::string>& extra,
                     bool explicit_parens = false) {
    const Token start = cur();
    std::vector<ExprPtr> args;
    bool is_tuple = false;
    while (true) {
      if (!args.empty()) ExpectOp(",");
      if (IsTupleEnd(extra)) break;
      args.push_back(simplified ? ParsePrimary() : ParseExpression(with_condexpr));
      if (IsOp(",")) is_tuple = true;
      else break;
    }
    if (!is_tuple) {
      if (!args.empty()) return std::move(args[0]);
      if (!explicit_parens) FailTok(cur(), "Expected an expression, got '" + Describe(cur()) + "'");
    }
    auto e = Node(ExprKind::kTuple, start);
    e->a = std::move(args);
    return e;
  }

  ExprPtr ParseExpression(bool with_condexpr) {
    // Nesting guard: a hostile template must not overflow the stack.
    if (++depth_ > 200) FailTok(cur(), "expression nested deeper than 200 levels");
    ExprPtr e = with_condexpr ? ParseCondExpr() : ParseOr();
    --depth_;
    return e;
  }

  ExprPtr ParseCondExpr() {
    ExprPtr e1 = ParseOr();
    while (IsName("if")) {
      const Token t = next();
      auto c = Node(ExprKind::kCondExpr, t);
      ExprPtr cond = ParseOr();
      ExprPtr other;
      if (SkipName("else")) other = ParseCondExpr();
      c->a.push_back(std::move(cond));
      c->a.push_back(std::move(e1));
      c->a.push_back(std::move(other));
      e1 = std::move(c);
    }
    return e1;
  }

  ExprPtr ParseOr() {
    ExprPtr l = ParseAnd();
    while (IsName("or")) {
      auto n = Node(ExprKind::kOr, next());
      n->a.push_back(std::move(l));
      n->a.push_back(ParseAnd());
      l = std::move(n);
    }
    return l;
  }
  ExprPtr ParseAnd() {
    ExprPtr l = ParseNot();
    while (IsName("and")) {
      auto n = Node(ExprKind::kAnd, next());
      n->a.push_back(std::move(l));
      n->a.push_back(ParseNot());
      l = std::move(n);
    }
    return l;
  }
  ExprPtr ParseNot() {
    if (IsName("not")) {
      if (++depth_ > 200) FailTok(cur(), "expression nested deeper than 200 levels");
      auto n = Node(ExprKind::kNot, next());
      n->a.push_back(ParseNot());
      --depth_;
      return n;
    }
    return ParseCompare();
  }
  ExprPtr ParseCompare() {
    const Token start = cur();
    ExprPtr e = ParseMath1();
    std::vector<ExprPtr> operands;
    std::vector<std::string> ops;
    while (true) {
      static const std::pair<const char*, const char*> kCmp[] = {
          {"==", "eq"}, {"!=", "ne"}, {"<", "lt"}, {"<=", "lteq"}, {">", "gt"}, {">=", "gteq"}};
      bool matched = false;
      for (auto [sym, name] : kCmp) {
        if (IsOp(sym)) {
          ++p_;
          ops.push_back(name);
          operands.push_back(ParseMath1());
          matched = true;
          break;
        }
      }
      if (matched) continue;
      if (SkipName("in")) {
        ops.push_back("in");
        operands.push_back(ParseMath1());
      } else if (IsName("not") && look().type == Tok::kName && look().text == "in") {
        p_ += 2;
        ops.push_back("notin");
        operands.push_back(ParseMath1());
      } else {
        break;
      }
    }
    if (ops.empty()) return e;
    auto c = Node(ExprKind::kCompare, start);
    c->a.push_back(std::move(e));
    for (auto& o : operands) c->a.push_back(std::move(o));
    c->ops = std::move(ops);
    return c;
  }
  ExprPtr Binary(const Token& at, const std::string& op, ExprPtr l, ExprPtr r) {
    auto n = Node(ExprKind::kBinary, at);
    n->name = op;
    n->a.push_back(std::move(l));
    n->a.push_back(std::move(r));
    return n;
  }
  ExprPtr ParseMath1() {
    ExprPtr l = ParseConcat();
    while (IsOp("+") || IsOp("-")) {
      const Token t = next();
      l = Binary(t, t.text, std::move(l), ParseConcat());
    }
    return l;
  }
  ExprPtr ParseConcat() {
    const Token start = cur();
    ExprPtr first = ParseMath2();
    if (!IsOp("~")) return first;
    auto n = Node(ExprKind::kConcat, start);
    n->a.push_back(std::move(first));
    while (SkipOp("~")) n->a.push_back(ParseMath2());
    return n;
  }
  ExprPtr ParseMath2() {
    ExprPtr l = ParsePow();
    while (IsOp("*") || IsOp("/") || IsOp("//") || IsOp("%")) {
      const Token t = next();
      l = Binary(t, t.text, std::move(l), ParsePow());
    }
    return l;
  }
  ExprPtr ParsePow() {
    ExprPtr l = ParseUnary(true);
    while (IsOp("**")) {
      const Token t = next();
      l = Binary(t, "**", std::move(l), ParseUnary(true));
    }
    return l;
  }
  ExprPtr ParseUnary(bool with_filter) {
    ExprPtr node;
    if (IsOp("-") || IsOp("+")) {
      const Token t = next();
      if (++depth_ > 200) FailTok(t, "expression nested deeper than 200 levels");
      node = Node(t.text == "-" ? ExprKind::kNeg : ExprKind::kPos, t);
      node->a.push_back(ParseUnary(false));
      --depth_;
    } else {
      node = ParsePrimary();
    }
    node = ParsePostfix(std::move(node));
    if (with_filter) node = ParseFilterExpr(std::move(node));
    return node;
  }

  ExprPtr ParsePrimary() {
    const Token t = cur();
    if (t.type == Tok::kName) {
      ++p_;
      if (t.text == "true" || t.text == "True" || t.text == "false" || t.text == "False") {
        auto n = Node(ExprKind::kConst, t);
        n->value = Value::Bool(t.text[0] == 't' || t.text[0] == 'T');
        return n;
      }
      if (t.text == "none" || t.text == "None") {
        auto n = Node(ExprKind::kConst, t);
        n->value = Value::None();
        return n;
      }
      auto n = Node(ExprKind::kName, t);
      n->name = t.text;
      return n;
    }
    if (t.type == Tok::kString) {
      std::string s;
      while (cur().type == Tok::kString) s += next().text;
      auto n = Node(ExprKind::kConst, t);
      n->value = Value::String(std::move(s));
      return n;
    }
    if (t.type == Tok::kInt || t.type == Tok::kFloat) {
      ++p_;
      auto n = Node(ExprKind::kConst, t);
      n->value = t.value;
      return n;
    }
    if (IsOp("(")) {
      ++p_;
      ExprPtr e = ParseTuple(false, true, {}, true);
      ExpectOp(")");
      return e;
    }
    if (IsOp("[")) {
      ++p_;
      auto n = Node(ExprKind::kList, t);
      while (!IsOp("]")) {
        if (!n->a.empty()) ExpectOp(",");
        if (IsOp("]")) break;
        n->a.push_back(ParseExpression(true));
      }
      ExpectOp("]");
      return n;
    }
    if (IsOp("{")) {
      ++p_;
      auto n = Node(ExprKind::kDict, t);
      while (!IsOp("}")) {
        if (!n->a.empty()) ExpectOp(",");
        if (IsOp("}")) break;
        n->a.push_back(ParseExpression(true));
        ExpectOp(":");
        n->a.push_back(ParseExpression(true));
      }
      ExpectOp("}");
      return n;
    }
    FailTok(t, "unexpected '" + Describe(t) + "'");
  }

  ExprPtr ParsePostfix(ExprPtr node) {
    while (true) {
      if (IsOp(".") || IsOp("[")) node = ParseSubscript(std::move(node));
      else if (IsOp("(")) node = ParseCall(std::move(node));
      else return node;
    }
  }

  ExprPtr ParseFilterExpr(ExprPtr node) {
    while (true) {
      if (IsOp("|")) node = ParseFilter(std::move(node));
      else if (IsName("is")) node = ParseTest(std::move(node));
      else if (IsOp("(")) node = ParseCall(std::move(node));
      else return node;
    }
  }

  ExprPtr ParseSubscript(ExprPtr node) {
    const Token t = next();
    if (t.text == ".") {
      const Token attr = next();
      if (attr.type == Tok::kName) {
        auto n = Node(ExprKind::kGetattr, t);
        n->name = attr.text;
        n->a.push_back(std::move(node));
        return n;
      }
      if (attr.type != Tok::kInt) FailTok(attr, "expected name or number");
      auto n = Node(ExprKind::kGetitem, t);
      auto c = Node(ExprKind::kConst, attr);
      c->value = attr.value;
      n->a.push_back(std::move(node));
      n->a.push_back(std::move(c));
      return n;
    }
    // '['
    std::vector<ExprPtr> args;
    while (!IsOp("]")) {
      if (!args.empty()) ExpectOp(",");
      args.push_back(ParseSubscribed());
    }
    ExpectOp("]");
    auto n = Node(ExprKind::kGetitem, t);
    n->a.push_back(std::move(node));
    if (args.size() == 1) {
      n->a.push_back(std::move(args[0]));
    } else {
      auto tup = Node(ExprKind::kTuple, t);
      tup->a = std::move(args);
      n->a.push_back(std::move(tup));
    }
    return n;
  }

  ExprPtr ParseSubscribed() {
    const Token start = cur();
    std::vector<ExprPtr> args;
    if (IsOp(":")) {
      ++p_;
      args.push_back(nullptr);
    } else {
      ExprPtr e = ParseExpression(true);
      if (!IsOp(":")) return e;
      ++p_;
      args.push_back(std::move(e));
    }
    if (IsOp(":")) args.push_back(nullptr);
    else if (!IsOp("]") && !IsOp(",")) args.push_back(ParseExpression(true));
    else args.push_back(nullptr);
    if (SkipOp(":")) {
      if (!IsOp("]") && !IsOp(",")) args.push_back(ParseExpression(true));
      else args.push_back(nullptr);
    } else {
      args.push_back(nullptr);
    }
    auto n = Node(ExprKind::kSlice, start);
    n->a = std::move(args);
    return n;
  }

  void ParseCallArgs(Expr* n) {
    ExpectOp("(");
    bool require_comma = false;
    while (!IsOp(")")) {
      if (require_comma) {
        ExpectOp(",");
        if (IsOp(")")) break;
      }
      if (IsOp("*") || IsOp("**")) FailTok(cur(), "unsupported: *args / **kwargs in calls");
      if (cur().type == Tok::kName && look().type == Tok::kOp && look().text == "=") {
        std::string key = next().text;
        ++p_;
        n->kw.emplace_back(key, ParseExpression(true));
      } else {
        if (!n->kw.empty()) FailTok(cur(), "positional argument follows keyword argument");
        n->a.push_back(ParseExpression(true));
      }
      require_comma = true;
    }
    ExpectOp(")");
  }

  ExprPtr ParseCall(ExprPtr node) {
    auto n = Node(ExprKind::kCall, cur());
    n->a.push_back(std::move(node));
    ParseCallArgs(n.get());
    return n;
  }

  ExprPtr ParseFilter(ExprPtr node) {
    ++p_;  // '|'
    const Token name_tok = cur();
    std::string name = ExpectName();
    while (IsOp(".")) {
      ++p_;
      name += "." + ExpectName();
    }
    if (!IsKnownFilter(name)) FailTok(name_tok, "No filter named '" + name + "'.");
    auto n = Node(ExprKind::kFilter, name_tok);
    n->name = name;
    n->a.push_back(std::move(node));
    if (IsOp("(")) ParseCallArgs(n.get());
    return n;
  }

  ExprPtr ParseTest(ExprPtr node) {
    const Token is_tok = next();  // 'is'
    bool negated = SkipName("not");
    const Token name_tok = cur();
    std::string name = ExpectName();
    while (IsOp(".")) {
      ++p_;
      name += "." + ExpectName();
    }
    if (!IsKnownTest(name)) FailTok(name_tok, "No test named '" + name + "'.");
    auto n = Node(ExprKind::kTest, name_tok);
    n->name = name;
    n->a.push_back(std::move(node));
    if (IsOp("(")) {
      ParseCallArgs(n.get());
    } else if ((cur().type == Tok::kName || cur().type == Tok::kString || cur().type == Tok::kInt ||
                cur().type == Tok::kFloat || IsOp("(") || IsOp("[") || IsOp("{")) &&
               !IsName("else") && !IsName("or") && !IsName("and")) {
      if (IsName("is")) FailTok(cur(), "You cannot chain multiple tests with is");
      n->a.push_back(ParsePostfix(ParsePrimary()));
    }
    if (!negated) return n;
    auto neg = Node(ExprKind::kNot, is_tok);
    neg->a.push_back(std::move(n));
    return neg;
  }

  std::vector<Token> t_;
  size_t p_ = 0;
  int depth_ = 0;
};

}  // namespace
}  // namespace internal

absl::StatusOr<Template> Template::Parse(std::string_view source) {
  try {
    internal::Lexer lexer(source);
    internal::Parser parser(lexer.Run());
    auto impl = std::make_shared<Impl>();
    impl->body = parser.ParseTemplate();
    Template t;
    t.impl_ = std::move(impl);
    return t;
  } catch (const internal::Error& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("template syntax error: line ", e.line, ", column ", e.col, ": ", e.msg));
  }
}

}  // namespace rs::jinja
