// SteadyBuffers (what the paged caches keep for their steady-state evictions between layers and
// steps): a layer's rows go up again only when they change, each layer and launch keeps its own,
// the workspace is reused while large enough and grows by a quarter when not, and a device named
// without its index (as a config's "cuda" is) counts as the same device at every call (a
// tensor's device() carries an index: comparing with it would upload at every layer).
#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include <vector>

#include "kvbench/kv/steady_buffers.h"

namespace kvbench {
namespace {

TEST(SteadyBuffersTest, UploadsALayersRowsOnlyWhenTheyChange) {
  SteadyBuffers buffers;
  const at::Device cpu(at::kCPU);
  const int* first = buffers.steps(3, 0, {0, 2, 1, 0}, cpu);
  EXPECT_EQ(std::vector<int>(first, first + 4), (std::vector<int>{0, 2, 1, 0}));
  EXPECT_EQ(buffers.steps(3, 0, {0, 2, 1, 0}, cpu), first);  // the same rows: the same upload
  const int* other = buffers.steps(0, 0, {5, 7}, cpu);       // another layer keeps its own
  EXPECT_EQ(std::vector<int>(other, other + 2), (std::vector<int>{5, 7}));
  EXPECT_EQ(buffers.steps(3, 0, {0, 2, 1, 0}, cpu), first);
  const int* changed = buffers.steps(3, 0, {0, 2, 1, 3}, cpu);
  EXPECT_EQ(std::vector<int>(changed, changed + 4), (std::vector<int>{0, 2, 1, 3}));
  // A layer's second launch (another group of sequences) keeps its own rows beside the first's.
  const int* second = buffers.steps(3, 1, {1, 0}, cpu);
  EXPECT_EQ(std::vector<int>(second, second + 2), (std::vector<int>{1, 0}));
  EXPECT_EQ(buffers.steps(3, 0, {0, 2, 1, 3}, cpu), changed);
  EXPECT_EQ(buffers.steps(3, 1, {1, 0}, cpu), second);
}

TEST(SteadyGroupsTest, GroupsBySharedListLengthAndHeldCount) {
  SteadyGroups g;
  EXPECT_TRUE(g.empty());
  g.add(0, 23, 40);
  g.add(2, 17, 30);
  g.add(3, 23, 40);
  g.add(5, 23, 41);
  ASSERT_EQ(g.groups().size(), 3u);
  EXPECT_EQ(g.groups()[0], (std::vector<size_t>{0, 3}));
  EXPECT_EQ(g.groups()[1], (std::vector<size_t>{2}));
  EXPECT_EQ(g.groups()[2], (std::vector<size_t>{5}));
  EXPECT_TRUE(g.contains(3));
  EXPECT_FALSE(g.contains(1));
}

TEST(SteadyBuffersTest, ADeviceNamedWithoutItsIndexIsTheSameAtEveryCall) {
  // cpu:0 stands for "cuda" here: a tensor made there reports cpu, without the index.
  const at::Device indexed(at::kCPU, 0);
  ASSERT_NE(at::empty({1}, at::TensorOptions().device(indexed)).device(), indexed);
  SteadyBuffers buffers;
  const int* rows = buffers.steps(1, 0, {4, 0}, indexed);
  EXPECT_EQ(buffers.steps(1, 0, {4, 0}, indexed), rows);
  float* work = buffers.workspace(100, indexed);
  EXPECT_EQ(buffers.workspace(100, indexed), work);
}

TEST(SteadyBuffersTest, TheWorkspaceIsKeptWhileLargeEnoughAndGrowsByAQuarter) {
  SteadyBuffers buffers;
  const at::Device cpu(at::kCPU);
  float* work = buffers.workspace(1000, cpu);
  work[999] = 1.f;  // all of it is there
  EXPECT_EQ(buffers.workspace(10, cpu), work);
  EXPECT_EQ(buffers.workspace(1000, cpu), work);
  float* grown = buffers.workspace(1001, cpu);
  grown[1249] = 1.f;  // 1000 * 5 / 4 floats: the next few layers' growth fits
  EXPECT_EQ(buffers.workspace(1250, cpu), grown);
}

}  // namespace
}  // namespace kvbench
