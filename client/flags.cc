#include "client/flags.h"

#include <cmath>
#include <cstdio>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace adasoftmax::client {
namespace {

std::string FormatNumber(double v) { return absl::StrFormat("%g", v); }

bool ParseBool(absl::string_view text, bool* out) {
  const std::string lower = absl::AsciiStrToLower(text);
  if (lower == "true" || lower == "1" || lower == "yes") {
    *out = true;
    return true;
  }
  if (lower == "false" || lower == "0" || lower == "no") {
    *out = false;
    return true;
  }
  return false;
}

// Finite numbers only: "nan" and "inf" are not useful values of any flag here.
bool ParseFiniteDouble(absl::string_view text, double* out) {
  return absl::SimpleAtod(text, out) && std::isfinite(*out);
}

}  // namespace

Flag& Flag::Required() {
  required_ = true;
  return *this;
}

Flag& Flag::Min(double lo, bool exclusive) {
  min_ = lo;
  min_exclusive_ = exclusive;
  return *this;
}

Flag& Flag::Max(double hi, bool exclusive) {
  max_ = hi;
  max_exclusive_ = exclusive;
  return *this;
}

Flag& Flag::Count(size_t count) {
  count_ = count;
  return *this;
}

Flag& Flag::Placeholder(std::string placeholder) {
  placeholder_ = std::move(placeholder);
  return *this;
}

std::string Flag::Expected() const {
  const bool integer = type_ == Type::kInt64 || type_ == Type::kUint64;
  std::optional<double> lo = min_;
  bool lo_exclusive = min_exclusive_;
  if (type_ == Type::kUint64 && !lo) lo = 0;
  std::string noun = integer ? "integer" : "number";
  std::string range;
  if (lo && max_) {
    range = absl::StrCat(" in ", lo_exclusive ? "(" : "[", FormatNumber(*lo), ", ",
                         FormatNumber(*max_), max_exclusive_ ? ")" : "]");
  } else if (lo) {
    const bool positive = *lo == 0 ? lo_exclusive : (integer && *lo == 1 && !lo_exclusive);
    const bool non_negative = *lo == 0 && !lo_exclusive;
    if (positive) {
      noun = "positive " + noun;
    } else if (non_negative) {
      noun = "non-negative " + noun;
    } else {
      range = absl::StrCat(lo_exclusive ? " > " : " >= ", FormatNumber(*lo));
    }
  } else if (max_) {
    range = absl::StrCat(max_exclusive_ ? " < " : " <= ", FormatNumber(*max_));
  }
  switch (type_) {
    case Type::kString:
      return "a value";
    case Type::kBool:
      return "true or false";
    case Type::kDoubleList: {
      const std::string count = count_ ? absl::StrCat(*count_, " ") : "";
      return absl::StrCat("a comma-separated list of ", count, noun, "s", range);
    }
    default: {
      const char* article = noun[0] == 'i' || absl::StartsWith(noun, "non-") ? "an" : "a";
      return absl::StrCat(article, " ", noun, range);
    }
  }
}

std::string Flag::Set(absl::string_view text) {
  const std::string error = absl::StrCat("expected ", Expected(), ", got '", text, "'");
  auto in_range = [&](double v) {
    if (min_ && (min_exclusive_ ? !(v > *min_) : !(v >= *min_))) return false;
    if (max_ && (max_exclusive_ ? !(v < *max_) : !(v <= *max_))) return false;
    return true;
  };
  switch (type_) {
    case Type::kString:
      *static_cast<std::string*>(target_) = std::string(text);
      return "";
    case Type::kInt64: {
      int64_t v;
      if (!absl::SimpleAtoi(text, &v) || !in_range(static_cast<double>(v))) return error;
      *static_cast<int64_t*>(target_) = v;
      return "";
    }
    case Type::kUint64: {
      uint64_t v;
      // SimpleAtoi accepts a leading '-' for unsigned types on some versions; reject it here.
      if (absl::StrContains(text, '-') || !absl::SimpleAtoi(text, &v) ||
          !in_range(static_cast<double>(v))) {
        return error;
      }
      *static_cast<uint64_t*>(target_) = v;
      return "";
    }
    case Type::kDouble: {
      double v;
      if (!ParseFiniteDouble(text, &v) || !in_range(v)) return error;
      *static_cast<double*>(target_) = v;
      return "";
    }
    case Type::kBool: {
      bool v;
      if (!ParseBool(text, &v)) return error;
      *static_cast<bool*>(target_) = v;
      return "";
    }
    case Type::kDoubleList: {
      std::vector<double> values;
      for (absl::string_view part : absl::StrSplit(text, ',')) {
        double v;
        if (!ParseFiniteDouble(absl::StripAsciiWhitespace(part), &v) || !in_range(v)) {
          return error;
        }
        values.push_back(v);
      }
      if (count_ && values.size() != *count_) return error;
      *static_cast<std::vector<double>*>(target_) = std::move(values);
      return "";
    }
  }
  return error;
}

std::string Flag::DefaultText() const { return default_text_; }

FlagSet::FlagSet(std::string command, std::string usage, std::string description)
    : command_(std::move(command)),
      usage_(std::move(usage)),
      description_(std::move(description)) {}

Flag& FlagSet::Add(std::string name, Flag::Type type, void* target, std::string help) {
  auto flag = std::make_unique<Flag>();
  flag->name_ = std::move(name);
  flag->type_ = type;
  flag->target_ = target;
  flag->help_ = std::move(help);
  switch (type) {
    case Flag::Type::kString: {
      flag->placeholder_ = "STRING";
      const auto& v = *static_cast<std::string*>(target);
      if (!v.empty()) flag->default_text_ = v;
      break;
    }
    case Flag::Type::kInt64:
      flag->placeholder_ = "INT";
      flag->default_text_ = absl::StrCat(*static_cast<int64_t*>(target));
      break;
    case Flag::Type::kUint64:
      flag->placeholder_ = "INT";
      flag->default_text_ = absl::StrCat(*static_cast<uint64_t*>(target));
      break;
    case Flag::Type::kDouble:
      flag->placeholder_ = "NUM";
      flag->default_text_ = FormatNumber(*static_cast<double*>(target));
      break;
    case Flag::Type::kBool:
      flag->placeholder_ = "";
      flag->default_text_ = *static_cast<bool*>(target) ? "true" : "false";
      break;
    case Flag::Type::kDoubleList: {
      flag->placeholder_ = "LIST";
      const auto& v = *static_cast<std::vector<double>*>(target);
      if (!v.empty()) {
        flag->default_text_ =
            absl::StrJoin(v, ",", [](std::string* out, double x) { out->append(FormatNumber(x)); });
      }
      break;
    }
  }
  flags_.push_back(std::move(flag));
  return *flags_.back();
}

Flag& FlagSet::AddString(std::string name, std::string* target, std::string help) {
  return Add(std::move(name), Flag::Type::kString, target, std::move(help));
}
Flag& FlagSet::AddInt64(std::string name, int64_t* target, std::string help) {
  return Add(std::move(name), Flag::Type::kInt64, target, std::move(help));
}
Flag& FlagSet::AddUint64(std::string name, uint64_t* target, std::string help) {
  return Add(std::move(name), Flag::Type::kUint64, target, std::move(help));
}
Flag& FlagSet::AddDouble(std::string name, double* target, std::string help) {
  return Add(std::move(name), Flag::Type::kDouble, target, std::move(help));
}
Flag& FlagSet::AddBool(std::string name, bool* target, std::string help) {
  return Add(std::move(name), Flag::Type::kBool, target, std::move(help));
}
Flag& FlagSet::AddDoubleList(std::string name, std::vector<double>* target, std::string help) {
  return Add(std::move(name), Flag::Type::kDoubleList, target, std::move(help));
}

Flag* FlagSet::Find(absl::string_view name) {
  for (auto& flag : flags_) {
    if (flag->name_ == name) return flag.get();
  }
  return nullptr;
}

bool FlagSet::Seen(absl::string_view name) const {
  for (const auto& flag : flags_) {
    if (flag->name_ == name) return flag->seen_;
  }
  return false;
}

std::optional<int> FlagSet::Parse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const absl::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(Usage().c_str(), stdout);
      return 0;
    }
    if (arg.size() < 3 || arg.substr(0, 2) != "--") {
      return UsageError(absl::StrCat("unexpected argument '", arg, "' (flags start with --)"));
    }
    absl::string_view name = arg.substr(2);
    std::optional<absl::string_view> value;
    if (const size_t eq = name.find('='); eq != absl::string_view::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    Flag* flag = Find(name);
    if (flag == nullptr && !value && name.substr(0, 3) == "no-") {
      flag = Find(name.substr(3));
      if (flag != nullptr && flag->type_ == Flag::Type::kBool) {
        *static_cast<bool*>(flag->target_) = false;
        flag->seen_ = true;
        continue;
      }
      flag = nullptr;
    }
    if (flag == nullptr) {
      return UsageError(absl::StrCat("unknown flag '--", name, "' (see --help)"));
    }
    if (!value) {
      if (flag->type_ == Flag::Type::kBool) {
        value = "true";
      } else if (i + 1 < argc) {
        value = argv[++i];
      } else {
        return UsageError(absl::StrCat(
            "--", name, ": missing value",
            flag->type_ == Flag::Type::kString ? "" : ", expected " + flag->Expected()));
      }
    }
    if (const std::string error = flag->Set(*value); !error.empty()) {
      return UsageError(absl::StrCat("--", name, ": ", error));
    }
    flag->seen_ = true;
  }
  for (const auto& flag : flags_) {
    if (flag->required_ && !flag->seen_) {
      return UsageError(absl::StrCat("--", flag->name_, ": required flag is missing"));
    }
  }
  return std::nullopt;
}

std::string FlagSet::Usage() const {
  std::string out = absl::StrCat("usage: adasoftmax ", command_, " ", usage_, "\n");
  if (!description_.empty()) absl::StrAppend(&out, "\n", description_, "\n");
  absl::StrAppend(&out, "\nflags:\n");
  constexpr size_t kColumn = 30;
  auto line = [&](const std::string& left, const std::string& right) {
    std::string row = absl::StrCat("  ", left);
    if (row.size() + 2 > kColumn) {
      absl::StrAppend(&out, row, "\n");
      row.clear();
    }
    // Word-wrap the help text to 100 columns.
    constexpr size_t kWidth = 100 - kColumn;
    std::string text;
    for (absl::string_view word : absl::StrSplit(right, ' ', absl::SkipEmpty())) {
      if (!text.empty() && text.size() + 1 + word.size() > kWidth) {
        row.resize(kColumn, ' ');
        absl::StrAppend(&out, row, text, "\n");
        row.clear();
        text.clear();
      }
      absl::StrAppend(&text, text.empty() ? "" : " ", word);
    }
    row.resize(kColumn, ' ');
    absl::StrAppend(&out, row, text, "\n");
  };
  for (const auto& flag : flags_) {
    std::string left = absl::StrCat("--", flag->name_);
    if (!flag->placeholder_.empty()) absl::StrAppend(&left, " ", flag->placeholder_);
    std::string right = flag->help_;
    if (flag->required_) {
      absl::StrAppend(&right, " (required)");
    } else if (!flag->default_text_.empty()) {
      absl::StrAppend(&right, " (default: ", flag->default_text_, ")");
    }
    line(left, right);
  }
  line("--help", "print this help and exit");
  return out;
}

int FlagSet::UsageError(absl::string_view message) const {
  std::fprintf(stderr, "adasoftmax %s: %.*s\n", command_.c_str(), static_cast<int>(message.size()),
               message.data());
  return 2;
}

int FlagSet::Error(absl::string_view message) const {
  std::fprintf(stderr, "adasoftmax %s: %.*s\n", command_.c_str(), static_cast<int>(message.size()),
               message.data());
  return 1;
}

int FlagSet::Error(const absl::Status& status) const {
  // One line: a multi-line status message would break the one-line error contract.
  std::string message(status.message());
  for (char& c : message) {
    if (c == '\n') c = ' ';
  }
  return Error(message);
}

}  // namespace adasoftmax::client
