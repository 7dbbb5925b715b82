#include "server/inference_service.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "core/status_macros.h"

namespace adasoftmax::server {

struct InferenceService::Entry {
  std::shared_ptr<const ServedModel> served;
  ModelMetrics* metrics = nullptr;
  Scheduler::QueueId queue = 0;
};

struct InferenceService::Task {
  Entry* entry = nullptr;
  const v1::TopKSoftmaxRequest* request = nullptr;
  v1::TopKSoftmaxResponse* response = nullptr;
  Query query;
  MetricMode mode = MetricMode::kAdaptive;
  absl::Time arrival;
  CallContext call;
  DoneFn done;

  absl::Time deadline() const { return call.deadline; }
  bool cancelled() const { return call.cancelled && call.cancelled(); }
  // A seeded adaptive query is reproducible only when it alone picks the column order.
  bool runs_alone() const { return mode == MetricMode::kAdaptive && query.options.seed != 0; }
};

absl::StatusOr<std::unique_ptr<InferenceService>> InferenceService::Create(
    std::vector<std::shared_ptr<const ServedModel>> models, const Options& options,
    const Clock* clock, Metrics* metrics) {
  std::unique_ptr<InferenceService> service(new InferenceService(options, clock, metrics));
  ASSIGN_OR_RETURN(service->scheduler_,
                   Scheduler::Create({.num_threads = options.threads}, clock));
  for (std::shared_ptr<const ServedModel>& served : models) {
    auto entry = std::make_unique<Entry>();
    Entry* e = entry.get();
    e->metrics = metrics->AddModel(served->name, served->model->n(), served->model->d(),
                                   DTypeName(served->model->dtype()));
    e->metrics->SetSampleCost(served->adaptive->SampleCost());
    e->metrics->SetExactBatchShare(served->adaptive->ExtraExactQueryShare());
    InferenceService* self = service.get();
    ASSIGN_OR_RETURN(
        e->queue,
        service->scheduler_->AddQueue(
            served->batching,
            [self, e](Scheduler::Batch batch) { self->ProcessBatch(*e, std::move(batch)); },
            [self, e](std::unique_ptr<Task> task, absl::Status why) {
              e->metrics->AddQueued(-1);
              self->Finish(*task, std::move(why));
            }));
    e->served = std::move(served);
    if (!service->by_name_.emplace(e->served->name, e).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate model name ", e->served->name));
    }
    service->entries_.push_back(std::move(entry));
  }
  return service;
}

InferenceService::InferenceService(const Options& options, const Clock* clock, Metrics* metrics)
    : clock_(clock), metrics_(metrics), auditor_(options.audit) {}

InferenceService::~InferenceService() { Shutdown(); }

void InferenceService::NotifyCancelled() { scheduler_->Wake(); }

size_t InferenceService::queued(const std::string& model) const {
  auto it = by_name_.find(model);
  return it == by_name_.end() ? 0 : scheduler_->queued(it->second->queue);
}

bool InferenceService::ProcessReadyBatch() { return scheduler_->ProcessReadyBatch(); }

void InferenceService::Shutdown() {
  if (scheduler_) scheduler_->Shutdown();
}

void InferenceService::TopKSoftmax(const v1::TopKSoftmaxRequest* request,
                                   v1::TopKSoftmaxResponse* response, CallContext call,
                                   DoneFn done) {
  auto task = std::make_unique<Task>();
  task->request = request;
  task->response = response;
  task->arrival = clock_->Now();
  task->call = std::move(call);
  task->done = std::move(done);

  const v1::Mode requested = request->mode();
  if (requested == v1::MODE_EXACT) task->mode = MetricMode::kExact;
  auto it = by_name_.find(request->model());
  if (it == by_name_.end()) {
    std::vector<std::string> names;
    for (const auto& e : entries_) names.push_back(e->served->name);
    Finish(*task, absl::NotFoundError(absl::StrFormat("model: '%s' is not served (models: %s)",
                                                      request->model(), absl::StrJoin(names, ", "))));
    return;
  }
  Entry& entry = *it->second;
  const ServedModel& served = *entry.served;
  task->entry = &entry;
  if (!v1::Mode_IsValid(requested)) {
    Finish(*task, absl::InvalidArgumentError(
                      absl::StrFormat("mode: %d is not a Mode value", static_cast<int>(requested))));
    return;
  }
  const v1::Mode mode = requested == v1::MODE_UNSPECIFIED ? served.default_mode : requested;
  task->mode = mode == v1::MODE_EXACT ? MetricMode::kExact : MetricMode::kAdaptive;

  QueryOptions& o = task->query.options;
  o.k = request->k();
  o.epsilon = request->has_epsilon() ? request->epsilon().value() : served.default_epsilon;
  o.delta = request->has_delta() ? request->delta().value() : served.default_delta;
  o.temperature =
      request->has_temperature() ? request->temperature().value() : served.default_temperature;
  o.seed = request->seed();
  task->query.x = absl::MakeConstSpan(request->query().data(), request->query().size());
  if (absl::Status s = ValidateQuery(*served.model, task->query); !s.ok()) {
    Finish(*task, std::move(s));
    return;
  }
  if (task->deadline() <= task->arrival) {
    Finish(*task, absl::DeadlineExceededError("the deadline passed before the request arrived"));
    return;
  }
  entry.metrics->AddQueued(1);
  if (absl::Status s = scheduler_->Schedule(entry.queue, &task); !s.ok()) {
    entry.metrics->AddQueued(-1);
    Finish(*task, std::move(s));  // Schedule left the task with us
  }
}

void InferenceService::ProcessBatch(Entry& entry, Scheduler::Batch batch) {
  const absl::Time start = clock_->Now();
  std::vector<std::unique_ptr<Task>> adaptive, exact;
  entry.metrics->AddQueued(-static_cast<double>(batch.size()));
  for (std::unique_ptr<Task>& task : batch) {
    entry.metrics->ObserveQueueDuration(start - task->arrival);
    (task->mode == MetricMode::kAdaptive ? adaptive : exact).push_back(std::move(task));
  }
  if (!adaptive.empty()) RunGroup(entry, adaptive, /*adaptive=*/true);
  if (!exact.empty()) RunGroup(entry, exact, /*adaptive=*/false);
}

void InferenceService::RunGroup(Entry& entry, std::vector<std::unique_ptr<Task>>& group,
                                bool adaptive) {
  const ServedModel& served = *entry.served;
  std::vector<Query> queries;
  queries.reserve(group.size());
  for (const auto& task : group) {
    queries.push_back(task->query);
    // A caller that went away or ran out of time stops consuming compute between rounds.
    queries.back().stop = [this, t = task.get()] {
      return t->cancelled() || clock_->Now() > t->deadline();
    };
  }
  const adasoftmax::TopKSoftmax& solver =
      adaptive ? static_cast<const adasoftmax::TopKSoftmax&>(*served.adaptive)
               : static_cast<const adasoftmax::TopKSoftmax&>(*served.exact);
  std::vector<TopKResult> results = solver.Run(queries);
  entry.metrics->ObserveBatchSize(group.size());
  if (adaptive) {
    entry.metrics->SetSampleCost(served.adaptive->SampleCost());
    entry.metrics->SetExactBatchShare(served.adaptive->ExtraExactQueryShare());
  }
  const absl::Time now = clock_->Now();

  for (size_t q = 0; q < group.size(); ++q) {
    Task& task = *group[q];
    TopKResult& r = results[q];
    v1::TopKSoftmaxResponse& out = *task.response;
    out.mutable_indices()->Assign(r.indices.begin(), r.indices.end());
    out.mutable_probabilities()->Assign(r.probabilities.begin(), r.probabilities.end());
    out.mutable_logits()->Assign(r.logits.begin(), r.logits.end());
    out.set_log_partition(r.log_partition);
    out.set_samples(r.samples);
    out.set_sample_fraction(r.sample_fraction);
    out.set_exact(r.exact);
    out.set_batch_size(static_cast<uint32_t>(group.size()));
    out.set_mode(adaptive ? v1::MODE_ADAPTIVE : v1::MODE_EXACT);
    out.set_model(served.name);
    out.set_id(task.request->id());
    if (!served.labels.empty()) {
      for (uint32_t i : r.indices) out.add_labels(served.labels[i]);
    }
    entry.metrics->ObserveQuery(task.mode, r.samples, r.sample_fraction, r.exact);

    // Copy what the audit needs before `done` releases the request. A caller that went away
    // costs no further compute; an answer the exact fallback computed needs no check.
    if (adaptive && !r.exact && !r.indices.empty() && !task.cancelled() &&
        auditor_.Sample(served.audit_fraction)) {
      AuditJob job;
      job.model = served.model;
      job.metrics = entry.metrics;
      job.query.assign(task.query.x.begin(), task.query.x.end());
      job.options = task.query.options;
      job.result = std::move(r);
      auditor_.Submit(std::move(job));
    }
    Finish(task, task.deadline() < now
                     ? absl::DeadlineExceededError("the deadline passed while answering")
                     : absl::OkStatus());
  }
}

void InferenceService::Finish(Task& task, absl::Status status) {
  if (task.entry != nullptr) {
    ModelMetrics& m = *task.entry->metrics;
    m.CountRequest(task.mode, status.code());
    m.ObserveRequestDuration(task.mode, clock_->Now() - task.arrival);
  } else {
    metrics_->CountUnknownModelRequest(task.mode, status.code());
  }
  task.done(std::move(status));
}

v1::ListModelsResponse InferenceService::ListModels() const {
  v1::ListModelsResponse response;
  for (const auto& e : entries_) {
    const ServedModel& s = *e->served;
    v1::ModelInfo& m = *response.add_models();
    m.set_name(s.name);
    m.set_n(s.model->n());
    m.set_d(s.model->d());
    m.set_dtype(DTypeName(s.model->dtype()));
    m.set_sampling_dtype(DTypeName(s.model->sampling_dtype()));
    m.set_has_bias(s.model->has_bias());
    m.set_has_labels(!s.labels.empty());
    m.set_default_epsilon(s.default_epsilon);
    m.set_default_delta(s.default_delta);
    m.set_default_temperature(s.default_temperature);
    m.set_default_mode(s.default_mode);
    m.set_calibration_mode(s.calibration_mode);
    m.set_topk_multiplier(s.adaptive->options().topk_multiplier);
    m.set_normalizer_multiplier(s.adaptive->options().normalizer_multiplier);
    m.set_lognormal_correction(s.adaptive->options().lognormal_correction);
    m.set_warmup_fraction(s.adaptive->options().warmup_fraction);
    m.set_max_batch_size(static_cast<uint32_t>(s.batching.max_batch_size));
    m.set_batch_timeout_us(static_cast<uint64_t>(absl::ToInt64Microseconds(s.batching.batch_timeout)));
    m.set_audit_fraction(s.audit_fraction);
    m.set_memory_bytes(s.model->memory_bytes());
    m.set_sample_cost(s.adaptive->options().sample_cost);
  }
  return response;
}

}  // namespace adasoftmax::server
