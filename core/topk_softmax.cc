#include "core/topk_softmax.h"

#include <cmath>

#include "absl/strings/str_format.h"
#include "core/status_macros.h"

namespace adasoftmax {

absl::Status ValidateQuery(const Model& model, const Query& query) {
  const QueryOptions& o = query.options;
  if (query.x.size() != model.d()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "query: has %d entries but the model has d = %d", query.x.size(), model.d()));
  }
  for (size_t j = 0; j < query.x.size(); ++j) {
    if (!std::isfinite(query.x[j])) {
      return absl::InvalidArgumentError(
          absl::StrFormat("query: entry %d is %f; every entry must be finite", j, query.x[j]));
    }
  }
  if (o.k == 0 || o.k > model.n()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("k: is %d but must be in [1, n = %d]", o.k, model.n()));
  }
  if (!(o.epsilon > 0 && o.epsilon < 1)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("epsilon: is %g but must be in (0, 1)", o.epsilon));
  }
  if (!(o.delta > 0 && o.delta < 1)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("delta: is %g but must be in (0, 1)", o.delta));
  }
  if (!(std::isfinite(o.temperature) && o.temperature > 0)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("temperature: is %g but must be finite and > 0", o.temperature));
  }
  return absl::OkStatus();
}

absl::StatusOr<TopKResult> TopKSoftmax::Answer(const Query& query) const {
  RETURN_IF_ERROR(ValidateQuery(model(), query));
  return std::move(Run(absl::MakeConstSpan(&query, 1)).front());
}

}  // namespace adasoftmax
