// Syntax tree of the chat-template language (a Jinja2 subset).
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja/value.h"

namespace dsv::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum Kind {
    kLiteral,  // value
    kName,     // name
    kList,     // args: items (tuples are lists too)
    kDict,     // args: key0, value0, key1, value1, ...
    kAttr,     // args[0].name
    kItem,     // args[0][args[1]]
    kSlice,    // args[0][args[1]:args[2]:args[3]] (null parts allowed)
    kCall,     // args[0](args[1..], kwargs)
    kFilter,   // args[0] | name(args[1..], kwargs)
    kTest,     // args[0] is [not] name(args[1..]); negated
    kUnary,    // op args[0]: "-", "+", "not"
    kBinary,   // args[0] op args[1]
    kCond,     // args[1] if args[0] else args[2] (args[2] may be null)
  };
  Kind kind;
  int line = 0;
  Value value;
  std::string name;  // kName, kAttr, kFilter, kTest; kUnary/kBinary: the operator
  bool negated = false;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

struct Node {
  enum Kind { kText, kOutput, kIf, kFor, kSet, kBreak, kContinue };
  Kind kind;
  int line = 0;
  std::string text;                                 // kText
  ExprPtr expr;                                     // kOutput; kSet value; kFor iterable
  std::vector<std::pair<ExprPtr, Body>> branches;   // kIf: (condition or null for else, body)
  std::vector<std::string> targets;                 // kFor loop variables; kSet: name [, attribute]
  ExprPtr filter;                                   // kFor: "for x in xs if filter"
  Body body, else_body;                             // kFor
};

}  // namespace dsv::jinja
