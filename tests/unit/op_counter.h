// OpCounter: the ATen operators a test's thread dispatches, counted by name (the host's share
// of a GPU step: each top-level operator is a launch or a dispatch there).
#pragma once

#include <ATen/record_function.h>

#include <map>
#include <memory>
#include <stdexcept>
#include <string>

namespace kvbench::testing_support {

// Counts the ATen operators this thread dispatches at the top level (not those they call), by
// name, while it lives.
class OpCounter {
 public:
  OpCounter()
      : live_(claim()),
        handle_(at::addThreadLocalCallback(
            at::RecordFunctionCallback(
                [](const at::RecordFunction& fn) -> std::unique_ptr<at::ObserverContext> {
                  if (depth()++ == 0) ++counts()[fn.name()];
                  return nullptr;
                },
                [](const at::RecordFunction&, at::ObserverContext*) { --depth(); })
                .scopes({at::RecordScope::FUNCTION}))) {
    clear();
  }
  ~OpCounter() {
    at::removeCallback(handle_);
    live() = false;
  }
  OpCounter(const OpCounter&) = delete;
  OpCounter& operator=(const OpCounter&) = delete;
  void clear() { counts().clear(); }
  int64_t operator[](const std::string& name) const {
    const auto it = counts().find(name);
    return it == counts().end() ? 0 : it->second;
  }
  // Every operator counted, by name (to say what a step issued when a count is off).
  const std::map<std::string, int64_t>& all() const { return counts(); }
  int64_t total() const {
    int64_t n = 0;
    for (const auto& [name, count] : counts()) n += count;
    return n;
  }

 private:
  // One counter per thread at a time: the counts are the thread's.
  static bool& live() {
    static thread_local bool l = false;
    return l;
  }
  static bool claim() {
    if (live()) throw std::logic_error("OpCounter: one per thread at a time");
    return live() = true;
  }
  static std::map<std::string, int64_t>& counts() {
    static thread_local std::map<std::string, int64_t> c;
    return c;
  }
  static int64_t& depth() {
    static thread_local int64_t d = 0;
    return d;
  }
  bool live_;
  at::CallbackHandle handle_;
};

}  // namespace kvbench::testing_support
