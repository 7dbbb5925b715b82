#ifndef ADASOFTMAX_CORE_STATUS_MACROS_H_
#define ADASOFTMAX_CORE_STATUS_MACROS_H_

// Project-local equivalents of the status macros that Debian's Abseil lacks.

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define ADASOFTMAX_CONCAT_INNER_(a, b) a##b
#define ADASOFTMAX_CONCAT_(a, b) ADASOFTMAX_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)                                         \
  do {                                                                \
    if (absl::Status _status = (expr); !_status.ok()) return _status; \
  } while (false)

// `ASSIGN_OR_RETURN(lhs, expr)`: evaluates `expr` (an absl::StatusOr<T>), returns its status
// when not OK, otherwise move-assigns the value to `lhs` (which may be a declaration).
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(ADASOFTMAX_CONCAT_(_status_or_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr)        \
  auto statusor = (expr);                                  \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = *std::move(statusor)

#endif  // ADASOFTMAX_CORE_STATUS_MACROS_H_
