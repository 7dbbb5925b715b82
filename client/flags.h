#ifndef ADASOFTMAX_CLIENT_FLAGS_H_
#define ADASOFTMAX_CLIENT_FLAGS_H_

// A small per-subcommand flag parser. Abseil flags are process-global: every command would see
// (and --help would list) every other command's flags, and two commands could not give the same
// flag different defaults. Each subcommand here builds its own FlagSet instead.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace adasoftmax::client {

// One registered flag. Returned by FlagSet::Add* so constraints can be chained:
//   flags.AddUint64("k", &k, "number of classes returned").Min(1);
class Flag {
 public:
  enum class Type { kString, kInt64, kUint64, kDouble, kBool, kDoubleList };

  // Parsing fails unless the flag is given.
  Flag& Required();
  // Numbers (and every entry of a list) must be >= lo (or > lo when `exclusive`).
  Flag& Min(double lo, bool exclusive = false);
  // Numbers (and every entry of a list) must be <= hi (or < hi when `exclusive`).
  Flag& Max(double hi, bool exclusive = false);
  // A list must hold exactly `count` entries.
  Flag& Count(size_t count);
  // The value's placeholder in --help (default: from the type, e.g. INT, PATH).
  Flag& Placeholder(std::string placeholder);

  const std::string& name() const { return name_; }
  Type type() const { return type_; }
  bool required() const { return required_; }
  // True when the command line set the flag.
  bool seen() const { return seen_; }

 private:
  friend class FlagSet;

  // Parses `text` into the target. Returns an error message ("expected ..., got '...'") or
  // an empty string.
  std::string Set(absl::string_view text);
  // "a positive integer", "a number in (0, 1)", ...: what Set accepts.
  std::string Expected() const;
  std::string DefaultText() const;

  std::string name_;
  std::string help_;
  std::string placeholder_;
  Type type_ = Type::kString;
  void* target_ = nullptr;
  bool required_ = false;
  bool seen_ = false;
  std::optional<double> min_, max_;
  bool min_exclusive_ = false, max_exclusive_ = false;
  std::optional<size_t> count_;
  std::string default_text_;
};

// The flags of one subcommand. Each flag writes into a variable the caller owns; the variable's
// value when the flag is added is its default. Accepted syntax: `--name value`, `--name=value`;
// a bool flag also takes a bare `--name` (true) or `--no-name` (false), but not a separate value
// argument. Positional arguments are rejected. Thread-compatible.
class FlagSet {
 public:
  // `command` is the subcommand name ("run"); `usage` is the text after
  // "usage: adasoftmax <command> " in --help; `description` follows it (may be empty).
  FlagSet(std::string command, std::string usage, std::string description = "");

  FlagSet(const FlagSet&) = delete;
  FlagSet& operator=(const FlagSet&) = delete;

  // REQUIRES: names are unique within the set; targets outlive the FlagSet.
  Flag& AddString(std::string name, std::string* target, std::string help);
  Flag& AddInt64(std::string name, int64_t* target, std::string help);
  Flag& AddUint64(std::string name, uint64_t* target, std::string help);
  Flag& AddDouble(std::string name, double* target, std::string help);
  Flag& AddBool(std::string name, bool* target, std::string help);
  // A comma-separated list of numbers, e.g. `--topk-grid 0.01,0.1,1`.
  Flag& AddDoubleList(std::string name, std::vector<double>* target, std::string help);

  // Parses argv[1..argc) (argv[0] is the command name). Returns std::nullopt when the command
  // should go on; otherwise the exit code to return at once: 0 after --help (usage printed to
  // stdout), 2 after a usage error (one line printed to stderr).
  std::optional<int> Parse(int argc, char** argv);

  // True when the command line set flag `name`. REQUIRES: `name` was added.
  bool Seen(absl::string_view name) const;

  const std::string& command() const { return command_; }
  // The --help text.
  std::string Usage() const;

  // Print "adasoftmax <command>: <message>" to stderr and return the exit code: 2 for usage
  // errors (bad or conflicting flags), 1 for everything else (unreadable files, bad data).
  int UsageError(absl::string_view message) const;
  int Error(absl::string_view message) const;
  int Error(const absl::Status& status) const;

 private:
  Flag& Add(std::string name, Flag::Type type, void* target, std::string help);
  Flag* Find(absl::string_view name);

  std::string command_;
  std::string usage_;
  std::string description_;
  std::vector<std::unique_ptr<Flag>> flags_;
};

}  // namespace adasoftmax::client

#endif  // ADASOFTMAX_CLIENT_FLAGS_H_
