#include "server/auditor.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <utility>

#include "core/pac.h"

namespace adasoftmax::server {

Auditor::Auditor(const Options& options) : options_(options) {
  if (options.seed != 0) gen_ = absl::BitGen(std::seed_seq{options.seed});
  thread_ = std::thread([this] { Loop(); });
}

Auditor::~Auditor() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

bool Auditor::Sample(double fraction) {
  if (fraction <= 0) return false;
  if (fraction >= 1) return true;
  absl::MutexLock lock(&mu_);
  return absl::Bernoulli(gen_, fraction);
}

bool Auditor::Submit(AuditJob job) {
  absl::MutexLock lock(&mu_);
  if (pending_.size() >= options_.max_pending) {
    ++discarded_;
    return false;
  }
  pending_.push_back(std::move(job));
  return true;
}

void Auditor::Flush() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(this, &Auditor::IdleLocked));
}

uint64_t Auditor::discarded() const {
  absl::MutexLock lock(&mu_);
  return discarded_;
}

void Auditor::Loop() {
  // The exact re-computation must not steal CPU from requests: lowest priority (Linux applies
  // nice values per thread).
  setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 19);
  while (true) {
    AuditJob job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(this, &Auditor::WakeLocked));
      if (stopping_) return;
      job = std::move(pending_.front());
      pending_.pop_front();
      ++running_;
    }
    const ReferenceAnswer reference =
        ComputeReference(*job.model, job.query, job.options.temperature);
    const bool ok = MeetsPac(job.result, reference, job.options.k, job.options.epsilon);
    job.metrics->CountAudit(!ok);
    absl::MutexLock lock(&mu_);
    --running_;
  }
}

}  // namespace adasoftmax::server
