// A small command-line parser for rigserve's subcommands: `--name value`, `--name=value`,
// boolean `--flag`, positional arguments, and a generated --help. Header-only so every
// subcommand (worker and coordinator side) shares one behaviour.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace rs::cli {

class Args {
 public:
  Args(std::string cmd, std::string summary) : cmd_(std::move(cmd)), summary_(std::move(summary)) {}

  // Declares an option taking a value. `dflt` is shown in --help ("" = none).
  Args& opt(const std::string& name, const std::string& help, const std::string& dflt = "") {
    specs_.push_back({name, help, dflt, true});
    return *this;
  }
  // Declares a boolean flag.
  Args& flag(const std::string& name, const std::string& help) {
    specs_.push_back({name, help, "", false});
    return *this;
  }
  Args& positional(const std::string& name, const std::string& help) {
    pos_specs_.push_back({name, help, "", true});
    return *this;
  }

  // Parses argv (argv[0] is the subcommand). Returns false and prints a message on error; sets
  // help_requested() for --help/-h (usage printed to stdout).
  bool parse(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--help" || a == "-h") { print_help(stdout); help_ = true; return false; }
      if (a.rfind("--", 0) == 0) {
        std::string name = a.substr(2), value;
        bool has_value = false;
        if (auto eq = name.find('='); eq != std::string::npos) {
          value = name.substr(eq + 1); name = name.substr(0, eq); has_value = true;
        }
        const Spec* s = find(name);
        if (!s) { return fail("unknown option --" + name); }
        if (s->takes_value) {
          if (!has_value) {
            if (i + 1 >= argc) return fail("option --" + name + " needs a value");
            value = argv[++i];
          }
          values_[name] = value;
        } else {
          if (has_value) return fail("flag --" + name + " takes no value");
          values_[name] = "1";
        }
      } else {
        positionals_.push_back(a);
      }
    }
    if (positionals_.size() > pos_specs_.size())
      return fail("unexpected argument '" + positionals_[pos_specs_.size()] + "'");
    return true;
  }

  bool help_requested() const { return help_; }
  bool has(const std::string& name) const { return values_.count(name) > 0; }
  std::string get(const std::string& name) const {
    auto it = values_.find(name);
    if (it != values_.end()) return it->second;
    const Spec* s = find(name);
    return s ? s->dflt : "";
  }
  const std::vector<std::string>& positionals() const { return positionals_; }

  void print_help(FILE* f) const {
    std::fprintf(f, "usage: rigserve %s", cmd_.c_str());
    for (auto& p : pos_specs_) std::fprintf(f, " %s", p.name.c_str());
    std::fprintf(f, " [options]\n\n%s\n\n", summary_.c_str());
    for (auto& p : pos_specs_) std::fprintf(f, "  %-26s %s\n", p.name.c_str(), p.help.c_str());
    if (!specs_.empty()) std::fprintf(f, "options:\n");
    for (auto& s : specs_) {
      std::string lhs = "--" + s.name + (s.takes_value ? " V" : "");
      std::fprintf(f, "  %-26s %s", lhs.c_str(), s.help.c_str());
      if (!s.dflt.empty()) std::fprintf(f, " (default: %s)", s.dflt.c_str());
      std::fprintf(f, "\n");
    }
  }
  int usage_error(const std::string& msg) const {
    std::fprintf(stderr, "rigserve %s: %s (see --help)\n", cmd_.c_str(), msg.c_str());
    return 2;
  }

 private:
  struct Spec { std::string name, help, dflt; bool takes_value; };
  const Spec* find(const std::string& name) const {
    for (auto& s : specs_) if (s.name == name) return &s;
    return nullptr;
  }
  bool fail(const std::string& msg) { usage_error(msg); return false; }

  std::string cmd_, summary_;
  std::vector<Spec> specs_, pos_specs_;
  std::map<std::string, std::string> values_;
  std::vector<std::string> positionals_;
  bool help_ = false;
};

// Exit code for a parse() that returned false: 0 after --help, 2 after an error.
inline int parse_exit(const Args& a) { return a.help_requested() ? 0 : 2; }

}  // namespace rs::cli
