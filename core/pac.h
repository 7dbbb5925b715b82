#ifndef ADASOFTMAX_CORE_PAC_H_
#define ADASOFTMAX_CORE_PAC_H_

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "core/model.h"
#include "core/topk_softmax.h"

namespace adasoftmax {

// The exact answer in double precision: the yardstick of the (epsilon, delta) guarantee.
struct ReferenceAnswer {
  std::vector<double> logits;  // all n logits
  double log_partition = 0;
};

// REQUIRES: x.size() == model.d().
ReferenceAnswer ComputeReference(const Model& model, absl::Span<const float> x, double temperature);

// The PAC criterion: `result` holds k classes that are a true top-k set (a class tied with
// the k-th largest logit counts as top-k) and every returned probability is within a factor
// (1 +- epsilon) of the true one.
bool MeetsPac(const TopKResult& result, const ReferenceAnswer& reference, uint32_t k,
              double epsilon);

}  // namespace adasoftmax

#endif  // ADASOFTMAX_CORE_PAC_H_
