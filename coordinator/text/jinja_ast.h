// Internal to the template engine: the syntax tree that jinja_parse.cc builds and
// jinja_eval.cc walks. Node shapes mirror jinja2's (jinja2/nodes.py) so behaviour maps 1:1.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "coordinator/text/jinja.h"

namespace rs::jinja::internal {

// Thrown inside the engine only; Template::Parse/Render catch it and return a Status.
// line == 0 means "not located yet": the innermost expression being evaluated adds its own.
struct Error {
  std::string msg;
  int line = 0;
  int col = 0;
};
[[noreturn]] inline void Fail(std::string msg, int line = 0, int col = 0) {
  throw Error{std::move(msg), line, col};
}

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

enum class ExprKind {
  kConst,     // value
  kName,      // name
  kList,      // a = items
  kTuple,     // a = items
  kDict,      // a = k0, v0, k1, v1, ...
  kGetattr,   // a[0] . name
  kGetitem,   // a[0] [ a[1] ]
  kSlice,     // a[0..2] = start, stop, step (nullptr when absent); only inside kGetitem
  kCall,      // a[0] ( a[1..] , kw )
  kFilter,    // a[0] | name ( a[1..] , kw )
  kTest,      // a[0] is name ( a[1..] , kw )
  kNot,       // not a[0]
  kNeg,       // -a[0]
  kPos,       // +a[0]
  kBinary,    // a[0] op a[1]; op in + - * / // % **
  kAnd,       // a[0] and a[1]
  kOr,        // a[0] or a[1]
  kConcat,    // a[0] ~ a[1] ~ ...
  kCompare,   // a[0] ops[0] a[1] ops[1] a[2] ...; ops: eq ne lt lteq gt gteq in notin
  kCondExpr,  // a[1] if a[0] else a[2] (a[2] may be nullptr)
};

struct Expr {
  ExprKind kind;
  int line = 0, col = 0;
  Value value;
  std::string name;  // variable, attribute, filter, test, binary operator
  std::vector<ExprPtr> a;
  std::vector<std::pair<std::string, ExprPtr>> kw;
  std::vector<std::string> ops;
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

enum class StmtKind {
  kData,      // text
  kOutput,    // {{ expr }}
  kIf,        // conds[i] -> bodies[i]; else_body
  kFor,       // targets in expr [if filter]: body; else_body
  kSet,       // targets (or ns_attr on targets[0]) = expr
  kSetBlock,  // targets = rendered body
  kMacro,     // name(params=defaults): body
  kBreak,
  kContinue,
};

struct Stmt {
  StmtKind kind;
  int line = 0, col = 0;
  std::string text;                  // kData
  ExprPtr expr;                      // kOutput, kFor iterable, kSet value
  ExprPtr filter;                    // kFor inline condition
  std::vector<ExprPtr> conds;        // kIf
  std::vector<Body> bodies;          // kIf
  Body body, else_body;
  std::vector<std::string> targets;  // kFor, kSet, kSetBlock
  bool target_tuple = false;         // `for a, b in` / `set a, b =`
  std::string ns_attr;               // `set ns.attr = ...`: targets[0] is ns
  std::string name;                  // kMacro
  std::vector<std::string> params;   // kMacro
  std::vector<ExprPtr> defaults;     // kMacro, parallel to params (nullptr = none)
};

// Filter and test names the evaluator implements (the parser rejects others with a location).
bool IsKnownFilter(const std::string& name);
bool IsKnownTest(const std::string& name);

}  // namespace rs::jinja::internal

namespace rs::jinja {
struct Template::Impl {
  internal::Body body;
};
}  // namespace rs::jinja
