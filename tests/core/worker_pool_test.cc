#include "core/worker_pool.h"

#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace adasoftmax {
namespace {

TEST(WorkerPoolTest, RunsEveryIndexExactlyOnce) {
  for (size_t count : {0, 1, 2, 3, 1000}) {
    std::vector<std::atomic<int>> runs(count);
    ParallelFor(count, [&](size_t i) { runs[i].fetch_add(1); });
    for (size_t i = 0; i < count; ++i) {
      EXPECT_EQ(runs[i].load(), 1) << "count " << count << ", index " << i;
    }
  }
}

// The threads that ran 100 items slow enough that a worker wakes up before the caller has taken
// them all.
size_t ThreadsRunningSlowItems() {
  std::mutex mu;
  std::set<std::thread::id> threads;
  ParallelFor(100, [&](size_t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(3));
    std::lock_guard<std::mutex> lock(mu);
    threads.insert(std::this_thread::get_id());
  });
  return threads.size();
}

TEST(WorkerPoolTest, UsesTheWorkersWhenThereAreSome) {
  EXPECT_EQ(ThreadsRunningSlowItems(), std::min<size_t>(ParallelWidth(), 100));
}

TEST(WorkerPoolTest, WidthIsFixedOnceThePoolRuns) {
  ParallelFor(8, [](size_t) {});
  const size_t width = ParallelWidth();
  EXPECT_FALSE(SetParallelWidth(width + 1));
  EXPECT_EQ(ParallelWidth(), width);
}

TEST(WorkerPoolTest, ConcurrentCallersEachGetAllTheirItems) {
  constexpr int kCallers = 4;
  constexpr size_t kItems = 500;
  std::vector<std::atomic<uint64_t>> sums(kCallers);
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      for (int round = 0; round < 20; ++round) {
        ParallelFor(kItems, [&](size_t i) { sums[c].fetch_add(i + 1); });
      }
    });
  }
  for (std::thread& t : callers) t.join();
  for (int c = 0; c < kCallers; ++c) EXPECT_EQ(sums[c].load(), 20 * kItems * (kItems + 1) / 2);
}

TEST(WorkerPoolTest, WokenWorkersStillTakeEveryTaskAndLoseNoItem) {
  std::atomic<bool> done{false};
  std::thread waker([&] {
    while (!done.load()) WakeWorkers();
  });
  std::vector<std::atomic<int>> runs(2000);
  for (int round = 0; round < 50; ++round) {
    ParallelFor(runs.size(), [&](size_t i) { runs[i].fetch_add(1); });
  }
  done.store(true);
  waker.join();
  for (size_t i = 0; i < runs.size(); ++i) EXPECT_EQ(runs[i].load(), 50) << "index " << i;

  // Woken from sleep (past their spin) with no task to take, the workers then take the next.
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  WakeWorkers();
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_EQ(ThreadsRunningSlowItems(), std::min<size_t>(ParallelWidth(), 100));
}

double ThreadCpuSeconds() {
  timespec now;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec);
}

// Spins until the calling thread has used `seconds` more CPU; returns what it used.
double Burn(double seconds) {
  const double start = ThreadCpuSeconds();
  double used = 0;
  while (used < seconds) used = ThreadCpuSeconds() - start;
  return used;
}

struct BurnReport {
  double busy = 0;     // the BusyTimer's seconds over them
  double burnt = 0;    // the CPU the items measured themselves
  size_t threads = 0;  // that ran them
};

// Runs `items` items that each burn 5 ms of CPU (nested: each runs a ParallelFor of `items` such
// items).
BurnReport BurnItems(size_t items, bool nested) {
  std::mutex mu;
  BurnReport report;
  std::set<std::thread::id> threads;
  auto burn = [&](size_t) {
    const double used = Burn(0.005);
    std::lock_guard<std::mutex> lock(mu);
    report.burnt += used;
    threads.insert(std::this_thread::get_id());
  };
  const BusyTimer timer;
  ParallelFor(items, [&](size_t i) {
    if (nested) {
      ParallelFor(items, burn);
    } else {
      burn(i);
    }
  });
  report.busy = timer.Seconds();
  report.threads = threads.size();
  return report;
}

TEST(WorkerPoolTest, BusyTimerCountsTheCpuOfItemsRunByTheWorkers) {
  for (bool nested : {false, true}) {
    const BurnReport report = BurnItems(8, nested);
    // The workers ran items too, whenever there are some.
    EXPECT_EQ(report.threads > 1, ParallelWidth() > 1) << "nested " << nested;
    // Each item's CPU, whichever thread ran it, and little else (the caller's own bookkeeping
    // and at most 200 us of watching for a helper).
    EXPECT_GE(report.busy, report.burnt) << "nested " << nested;
    EXPECT_LE(report.busy, report.burnt + 0.02) << "nested " << nested;
  }
}

TEST(WorkerPoolTest, BusyTimerLeavesOutTimeAsleep) {
  const BusyTimer timer;
  ParallelFor(8, [](size_t) { std::this_thread::sleep_for(std::chrono::milliseconds(10)); });
  EXPECT_LT(timer.Seconds(), 0.02);  // of the 80 ms the items took
}

}  // namespace
}  // namespace adasoftmax
