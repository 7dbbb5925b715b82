#include "server/grpc_service.h"

#include <deque>
#include <memory>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "grpc/support/time.h"
#include "server/grpc_status.h"

namespace adasoftmax::server {
namespace {

absl::Status Unavailable() { return absl::UnavailableError("the server is still loading models"); }

CallContext ContextOf(grpc::CallbackServerContext* context) {
  CallContext call;
  const gpr_timespec raw = context->raw_deadline();
  if (gpr_time_cmp(raw, gpr_inf_future(raw.clock_type)) != 0) {
    call.deadline = absl::FromChrono(context->deadline());
  }
  call.cancelled = [context] { return context->IsCancelled(); };
  return call;
}

// Records a request's outcome in `out`: its response stays unless `status` is an error, which
// replaces it.
void SetOutcome(const absl::Status& status, v1::TopKSoftmaxStreamResponse& out) {
  if (status.ok()) return;
  v1::Error* error = out.mutable_error();  // clears the response
  error->set_code(static_cast<int>(ToGrpcStatus(status).error_code()));
  error->set_message(std::string(status.message()));
}

// The most requests of one stream or batch call that may be unanswered at a time.
constexpr int kMaxInFlight = 64;

// One bidirectional stream. Each read request becomes a call of the backend; answers are
// written in completion order, one write at a time. Reading pauses while kMaxInFlight requests
// of this stream are unanswered (back-pressure instead of queue-full errors). The stream ends
// with OK once the client has half-closed and every answer is written.
class StreamReactor final
    : public grpc::ServerBidiReactor<v1::TopKSoftmaxRequest, v1::TopKSoftmaxStreamResponse> {
 public:
  StreamReactor(grpc::CallbackServerContext* context, SoftmaxGrpcService* service)
      : context_(context), service_(service) {
    reading_ = std::make_unique<Item>();
    StartRead(&reading_->request);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client half-closed (or the call is gone)
      bool finish;
      {
        absl::MutexLock lock(&mu_);
        reads_done_ = true;
        finish = ShouldFinishLocked();
      }
      if (finish) Finish(grpc::Status::OK);
      return;
    }
    Item* item = reading_.release();
    bool read_more;
    {
      absl::MutexLock lock(&mu_);
      ++in_flight_;
      read_more = in_flight_ < kMaxInFlight;
      read_paused_ = !read_more;
    }
    if (read_more) StartNextRead();
    item->out.set_id(item->request.id());
    service_->Forward(&item->request, item->out.mutable_response(), ContextOf(context_),
                      [this, item](absl::Status status) { Answered(item, std::move(status)); });
  }

  void OnWriteDone(bool ok) override {
    Item* next = nullptr;
    bool finish = false;
    {
      absl::MutexLock lock(&mu_);
      writes_.pop_front();
      if (!ok) {  // the call is gone: later answers are discarded
        broken_ = true;
        writes_.clear();
      }
      if (!writes_.empty()) {
        next = writes_.front().get();
      } else {
        writing_ = false;
        finish = ShouldFinishLocked();
      }
    }
    if (next != nullptr) StartWrite(&next->out);
    if (finish) Finish(grpc::Status::OK);
  }

  void OnCancel() override { service_->NotifyCancelled(); }

  void OnDone() override { delete this; }

 private:
  struct Item {
    v1::TopKSoftmaxRequest request;
    v1::TopKSoftmaxStreamResponse out;
  };

  // Reads into a fresh item. At most one read is outstanding: callers start one only after the
  // previous read completed and no other path started one (see read_paused_).
  void StartNextRead() {
    reading_ = std::make_unique<Item>();
    StartRead(&reading_->request);
  }

  void Answered(Item* item, absl::Status status) {
    SetOutcome(status, item->out);
    std::unique_ptr<Item> owned(item);
    Item* write = nullptr;
    bool resume_reading = false;
    bool finish = false;
    {
      absl::MutexLock lock(&mu_);
      --in_flight_;
      if (read_paused_) {
        read_paused_ = false;
        resume_reading = true;
      }
      if (!broken_) {
        writes_.push_back(std::move(owned));
        if (!writing_) {
          writing_ = true;
          write = item;
        }
      }
      finish = ShouldFinishLocked();
    }
    if (resume_reading) StartNextRead();
    if (write != nullptr) StartWrite(&write->out);
    if (finish) Finish(grpc::Status::OK);
  }

  // True exactly once: when the client has half-closed, every request is answered and every
  // answer written.
  bool ShouldFinishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || !reads_done_ || in_flight_ > 0 || writing_) return false;
    finished_ = true;
    return true;
  }

  grpc::CallbackServerContext* const context_;
  SoftmaxGrpcService* const service_;
  std::unique_ptr<Item> reading_;  // owned by the one outstanding read
  absl::Mutex mu_;
  std::deque<std::unique_ptr<Item>> writes_ ABSL_GUARDED_BY(mu_);  // front is being written
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool read_paused_ ABSL_GUARDED_BY(mu_) = false;
  bool reads_done_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

// A unary call whose cancellation wakes the batcher, so the queued request is dropped at once.
class UnaryReactor final : public grpc::ServerUnaryReactor {
 public:
  explicit UnaryReactor(SoftmaxGrpcService* service) : service_(service) {}
  void OnCancel() override { service_->NotifyCancelled(); }
  void OnDone() override { delete this; }

 private:
  SoftmaxGrpcService* const service_;
};

// A batch call: each of its requests is forwarded as a call of its own, at most kMaxInFlight
// unanswered at a time (as a stream's, so one call cannot fill a model's queue and crowd out
// other callers), and the reactor finishes once every one is answered.
class BatchReactor final : public grpc::ServerUnaryReactor {
 public:
  // Answers the requests of `request` into `response`, one result a request, in order.
  BatchReactor(grpc::CallbackServerContext* context, SoftmaxGrpcService* service,
               const v1::TopKSoftmaxBatchRequest& request, v1::TopKSoftmaxBatchResponse& response)
      : context_(context), service_(service), request_(request), response_(response) {
    // Every result exists before the first request is forwarded: answers are written from the
    // workers into results that no longer move.
    for (const v1::TopKSoftmaxRequest& r : request.requests()) {
      response.add_results()->set_id(r.id());
    }
    ForwardWhileRoom();
  }

  void OnCancel() override { service_->NotifyCancelled(); }
  void OnDone() override { delete this; }

 private:
  // Forwards requests while fewer than kMaxInFlight are unanswered, then returns, or finishes
  // the call once every request is answered. One thread runs it at a time (forwarding_): answers
  // that arrive meanwhile, on other threads or within Forward itself, only make room, which its
  // loop takes up, so that requests failing at once never recurse.
  void ForwardWhileRoom() {
    const int size = request_.requests_size();
    for (;;) {
      int i;
      {
        absl::MutexLock lock(&mu_);
        if (next_ == size || in_flight_ == kMaxInFlight) {
          forwarding_ = false;
          if (answered_ < size) return;  // an answer still due forwards more or finishes
          break;
        }
        i = next_++;
        ++in_flight_;
      }
      v1::TopKSoftmaxStreamResponse* out = response_.mutable_results(i);
      service_->Forward(&request_.requests(i), out->mutable_response(), ContextOf(context_),
                        [this, out](absl::Status status) {
                          SetOutcome(status, *out);
                          Answered();
                        });
    }
    Finish(grpc::Status::OK);
  }

  void Answered() {
    {
      absl::MutexLock lock(&mu_);
      --in_flight_;
      ++answered_;
      const int size = request_.requests_size();
      if (forwarding_ || (next_ == size && answered_ < size)) return;
      forwarding_ = true;
    }
    ForwardWhileRoom();
  }

  grpc::CallbackServerContext* const context_;
  SoftmaxGrpcService* const service_;
  const v1::TopKSoftmaxBatchRequest& request_;
  v1::TopKSoftmaxBatchResponse& response_;
  absl::Mutex mu_;
  int next_ ABSL_GUARDED_BY(mu_) = 0;       // the first request not forwarded
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;  // forwarded, not answered
  int answered_ ABSL_GUARDED_BY(mu_) = 0;
  bool forwarding_ ABSL_GUARDED_BY(mu_) = true;  // a thread is in ForwardWhileRoom
};

}  // namespace

void SoftmaxGrpcService::SetBackend(InferenceService* backend) {
  absl::WriterMutexLock lock(&mu_);
  backend_ = backend;
}

void SoftmaxGrpcService::SetUnavailable(std::vector<v1::UnavailableModel> unavailable) {
  absl::WriterMutexLock lock(&mu_);
  unavailable_ = std::move(unavailable);
}

void SoftmaxGrpcService::Forward(const v1::TopKSoftmaxRequest* request,
                                 v1::TopKSoftmaxResponse* response, CallContext call,
                                 InferenceService::DoneFn done) {
  absl::ReaderMutexLock lock(&mu_);
  if (backend_ == nullptr) {
    done(Unavailable());
    return;
  }
  backend_->TopKSoftmax(request, response, std::move(call), std::move(done));
}

void SoftmaxGrpcService::NotifyCancelled() {
  absl::ReaderMutexLock lock(&mu_);
  if (backend_ != nullptr) backend_->NotifyCancelled();
}

grpc::ServerUnaryReactor* SoftmaxGrpcService::TopKSoftmax(grpc::CallbackServerContext* context,
                                                          const v1::TopKSoftmaxRequest* request,
                                                          v1::TopKSoftmaxResponse* response) {
  auto* reactor = new UnaryReactor(this);
  Forward(request, response, ContextOf(context),
          [reactor](absl::Status status) { reactor->Finish(ToGrpcStatus(status)); });
  return reactor;
}

grpc::ServerUnaryReactor* SoftmaxGrpcService::TopKSoftmaxBatch(
    grpc::CallbackServerContext* context, const v1::TopKSoftmaxBatchRequest* request,
    v1::TopKSoftmaxBatchResponse* response) {
  return new BatchReactor(context, this, *request, *response);
}

grpc::ServerUnaryReactor* SoftmaxGrpcService::ListModels(grpc::CallbackServerContext* context,
                                                         const v1::ListModelsRequest* /*request*/,
                                                         v1::ListModelsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::ReaderMutexLock lock(&mu_);
  if (backend_ == nullptr) {
    reactor->Finish(ToGrpcStatus(Unavailable()));
    return reactor;
  }
  *response = backend_->ListModels();
  response->mutable_unavailable()->Assign(unavailable_.begin(), unavailable_.end());
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerBidiReactor<v1::TopKSoftmaxRequest, v1::TopKSoftmaxStreamResponse>*
SoftmaxGrpcService::TopKSoftmaxStream(grpc::CallbackServerContext* context) {
  return new StreamReactor(context, this);
}

}  // namespace adasoftmax::server
