#include "server/batch_scheduler.h"

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/clock.h"
#include "tests/server/fake_clock.h"

namespace adasoftmax::server {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

struct FakeTask {
  int id = 0;
  bool alone = false;
  absl::Time deadline_at = absl::InfiniteFuture();
  std::shared_ptr<std::atomic<bool>> cancel = std::make_shared<std::atomic<bool>>(false);

  absl::Time deadline() const { return deadline_at; }
  bool cancelled() const { return *cancel; }
  bool runs_alone() const { return alone; }
};

using Scheduler = BatchScheduler<FakeTask>;

// Records what the scheduler hands over; used from the test thread only (num_threads = 0).
class BatchSchedulerTest : public ::testing::Test {
 protected:
  Scheduler::QueueId AddQueue(size_t max_batch, absl::Duration timeout, size_t max_queue = 100) {
    BatchingOptions o;
    o.max_batch_size = max_batch;
    o.batch_timeout = timeout;
    o.max_queue_size = max_queue;
    const size_t queue_index = queue_count_++;
    auto id = scheduler_->AddQueue(
        o,
        [this, queue_index](Scheduler::Batch batch) {
          std::vector<int> ids;
          for (const auto& t : batch) ids.push_back(t->id);
          batches_.push_back(ids);
          batch_queues_.push_back(queue_index);
        },
        [this](std::unique_ptr<FakeTask> task, absl::Status why) {
          dropped_.push_back({task->id, why.code()});
        });
    EXPECT_TRUE(id.ok()) << id.status();
    return *id;
  }

  absl::Status Schedule(Scheduler::QueueId q, int id, bool alone = false,
                        absl::Time deadline = absl::InfiniteFuture()) {
    auto task = std::make_unique<FakeTask>();
    task->id = id;
    task->alone = alone;
    task->deadline_at = deadline;
    return scheduler_->Schedule(q, &task);
  }

  // Runs every batch that is ready now.
  void Drain() {
    while (scheduler_->ProcessReadyBatch()) {
    }
  }

  FakeClock clock_;
  size_t queue_count_ = 0;
  std::vector<std::vector<int>> batches_;
  std::vector<size_t> batch_queues_;
  std::vector<std::pair<int, absl::StatusCode>> dropped_;
  // Last: destroyed first, while the records its shutdown writes to still exist.
  std::unique_ptr<Scheduler> scheduler_ = *Scheduler::Create({.num_threads = 0}, &clock_);
};

TEST_F(BatchSchedulerTest, BatchRunsWhenFull) {
  auto q = AddQueue(3, absl::Milliseconds(1));
  ASSERT_TRUE(Schedule(q, 1).ok());
  ASSERT_TRUE(Schedule(q, 2).ok());
  EXPECT_FALSE(scheduler_->ProcessReadyBatch());
  ASSERT_TRUE(Schedule(q, 3).ok());
  EXPECT_TRUE(scheduler_->ProcessReadyBatch());
  EXPECT_THAT(batches_, ElementsAre(ElementsAre(1, 2, 3)));
  EXPECT_EQ(scheduler_->queued(q), 0);
}

TEST_F(BatchSchedulerTest, BatchRunsWhenOldestTimesOut) {
  auto q = AddQueue(8, absl::Microseconds(1000));
  ASSERT_TRUE(Schedule(q, 1).ok());
  clock_.Advance(absl::Microseconds(400));
  ASSERT_TRUE(Schedule(q, 2).ok());
  clock_.Advance(absl::Microseconds(599));
  EXPECT_FALSE(scheduler_->ProcessReadyBatch());
  clock_.Advance(absl::Microseconds(1));  // the oldest has waited exactly the timeout
  EXPECT_TRUE(scheduler_->ProcessReadyBatch());
  EXPECT_THAT(batches_, ElementsAre(ElementsAre(1, 2)));
}

TEST_F(BatchSchedulerTest, LongQueueSplitsIntoFullBatchesThenWaits) {
  auto q = AddQueue(3, absl::Milliseconds(1));
  for (int i = 1; i <= 7; ++i) ASSERT_TRUE(Schedule(q, i).ok());
  Drain();
  EXPECT_THAT(batches_, ElementsAre(ElementsAre(1, 2, 3), ElementsAre(4, 5, 6)));
  clock_.Advance(absl::Milliseconds(1));
  Drain();
  EXPECT_THAT(batches_.back(), ElementsAre(7));
}

TEST_F(BatchSchedulerTest, MaxBatchSizeOneRunsEachTaskAtOnce) {
  auto q = AddQueue(1, absl::Seconds(10));
  ASSERT_TRUE(Schedule(q, 1).ok());
  ASSERT_TRUE(Schedule(q, 2).ok());
  Drain();
  EXPECT_THAT(batches_, ElementsAre(ElementsAre(1), ElementsAre(2)));
}

TEST_F(BatchSchedulerTest, FullQueueRejectsAndKeepsOwnership) {
  auto q = AddQueue(8, absl::Milliseconds(1), /*max_queue=*/2);
  ASSERT_TRUE(Schedule(q, 1).ok());
  ASSERT_TRUE(Schedule(q, 2).ok());
  auto task = std::make_unique<FakeTask>();
  task->id = 3;
  const absl::Status s = scheduler_->Schedule(q, &task);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  ASSERT_NE(task, nullptr);
  EXPECT_EQ(task->id, 3);
  clock_.Advance(absl::Milliseconds(1));
  Drain();
  EXPECT_TRUE(Schedule(q, 4).ok());
}

TEST_F(BatchSchedulerTest, TaskThatRunsAloneGetsItsOwnBatchAtOnce) {
  auto q = AddQueue(4, absl::Milliseconds(1));
  ASSERT_TRUE(Schedule(q, 1).ok());
  ASSERT_TRUE(Schedule(q, 2, /*alone=*/true).ok());
  ASSERT_TRUE(Schedule(q, 3).ok());
  EXPECT_TRUE(scheduler_->ProcessReadyBatch());
  EXPECT_THAT(batches_, ElementsAre(ElementsAre(2)));
  EXPECT_FALSE(scheduler_->ProcessReadyBatch());
  // Alone-runners do not count towards a full batch, and never join one.
  ASSERT_TRUE(Schedule(q, 4, /*alone=*/true).ok());
  ASSERT_TRUE(Schedule(q, 5).ok());
  ASSERT_TRUE(Schedule(q, 6).ok());
  Drain();
  EXPECT_THAT(batches_, ElementsAre(ElementsAre(2), ElementsAre(1, 3, 5, 6), ElementsAre(4)));
}

TEST_F(BatchSchedulerTest, ExpiredAndCancelledTasksAreDroppedUnrun) {
  auto q = AddQueue(2, absl::Milliseconds(1));
  ASSERT_TRUE(Schedule(q, 1, false, clock_.Now() + absl::Microseconds(100)).ok());
  auto cancelled = std::make_unique<FakeTask>();
  cancelled->id = 2;
  auto flag = cancelled->cancel;
  ASSERT_TRUE(scheduler_->Schedule(q, &cancelled).ok());
  *flag = true;
  clock_.Advance(absl::Microseconds(100));
  ASSERT_TRUE(Schedule(q, 3).ok());
  ASSERT_TRUE(Schedule(q, 4).ok());
  Drain();
  EXPECT_THAT(dropped_, ElementsAre(std::make_pair(1, absl::StatusCode::kDeadlineExceeded),
                                    std::make_pair(2, absl::StatusCode::kCancelled)));
  EXPECT_THAT(batches_, ElementsAre(ElementsAre(3, 4)));
}

TEST_F(BatchSchedulerTest, QueuesTakeTurns) {
  auto a = AddQueue(1, absl::Milliseconds(1));
  auto b = AddQueue(1, absl::Milliseconds(1));
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(Schedule(a, 10 + i).ok());
    ASSERT_TRUE(Schedule(b, 20 + i).ok());
  }
  Drain();
  EXPECT_THAT(batch_queues_, ElementsAre(0, 1, 0, 1, 0, 1));
}

TEST_F(BatchSchedulerTest, ShutdownFlushesWithoutWaitingAndRejectsNewTasks) {
  auto q = AddQueue(8, absl::Hours(1));
  ASSERT_TRUE(Schedule(q, 1).ok());
  ASSERT_TRUE(Schedule(q, 2).ok());
  EXPECT_FALSE(scheduler_->ProcessReadyBatch());
  scheduler_->Shutdown();
  EXPECT_THAT(batches_, ElementsAre(ElementsAre(1, 2)));
  EXPECT_EQ(Schedule(q, 3).code(), absl::StatusCode::kUnavailable);
}

TEST_F(BatchSchedulerTest, RejectsInvalidOptions) {
  BatchingOptions o;
  o.max_batch_size = 0;
  EXPECT_EQ(scheduler_->AddQueue(o, nullptr, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Scheduler::Create({.num_threads = -1}, &clock_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// With worker threads: a full batch runs without the owner's help, and Shutdown runs what is
// left. Synchronised by notifications only.
TEST(BatchSchedulerThreadsTest, WorkersRunFullBatchesAndShutdownDrains) {
  RealClock clock;
  auto scheduler = *Scheduler::Create({.num_threads = 2}, &clock);
  absl::Mutex mu;
  std::vector<std::vector<int>> batches;
  absl::Notification first_batch;
  BatchingOptions o;
  o.max_batch_size = 4;
  o.batch_timeout = absl::Hours(1);
  auto q = *scheduler->AddQueue(
      o,
      [&](Scheduler::Batch batch) {
        std::vector<int> ids;
        for (const auto& t : batch) ids.push_back(t->id);
        absl::MutexLock lock(&mu);
        batches.push_back(ids);
        if (!first_batch.HasBeenNotified()) first_batch.Notify();
      },
      [](std::unique_ptr<FakeTask>, absl::Status) { FAIL() << "nothing should be dropped"; });
  for (int i = 1; i <= 5; ++i) {
    auto task = std::make_unique<FakeTask>();
    task->id = i;
    ASSERT_TRUE(scheduler->Schedule(q, &task).ok());
  }
  first_batch.WaitForNotification();
  scheduler->Shutdown();
  absl::MutexLock lock(&mu);
  EXPECT_THAT(batches, ElementsAre(ElementsAre(1, 2, 3, 4), ElementsAre(5)));
}

}  // namespace
}  // namespace adasoftmax::server
