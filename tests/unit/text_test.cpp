#include <gtest/gtest.h>

#include <sstream>

#include "kvbench/core/rng.h"
#include "kvbench/core/table.h"
#include "kvbench/core/text.h"

namespace kvbench {
namespace {

TEST(Text, Utf8IsCheckedAndInvalidBytesPrinted) {
  EXPECT_TRUE(is_valid_utf8(""));
  EXPECT_TRUE(is_valid_utf8("plain \xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
  for (const char* bad :
       {"\xff", "a\x80", "\xc3", "\xc0\xaf" /* overlong '/' */, "\xed\xa0\x80" /* a surrogate */,
        "\xf4\x90\x80\x80" /* > U+10FFFF */, "\xe2\x82" /* cut short */})
    EXPECT_FALSE(is_valid_utf8(bad)) << printable_utf8(bad);
  EXPECT_EQ(printable_utf8("ok \xc3\xa9"), "ok \xc3\xa9");
  EXPECT_EQ(printable_utf8("last read: '\xff'"), "last read: '\\xff'");
  EXPECT_EQ(printable_utf8("\xe2\x82x\xc0\xaf"), "\\xe2\\x82x\\xc0\\xaf");
  EXPECT_TRUE(is_valid_utf8(printable_utf8("\x80\xff\xfe a")));
}

TEST(Text, EditDistance) {
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);
  EXPECT_EQ(edit_distance("", "abc"), 3u);
  EXPECT_EQ(edit_distance("threads", "threads"), 0u);
}

TEST(Text, ClosestMatchSuggestsTyposOnly) {
  std::vector<std::string> keys = {"threads", "seed", "device", "methods", "suites"};
  EXPECT_EQ(closest_match("thread", keys), "threads");
  EXPECT_EQ(closest_match("sed", keys), "seed");
  EXPECT_EQ(closest_match("completely_different", keys), "");
}

TEST(Text, ReplaceAll) {
  EXPECT_EQ(replace_all("a b  c", " ", "\u2581"), "a\u2581b\u2581\u2581c");
  EXPECT_EQ(replace_all("aaa", "aa", "b"), "ba");  // non-overlapping, left to right
  EXPECT_EQ(replace_all("abc", "", "x"), "abc");
}

TEST(Text, FormatBytes) {
  EXPECT_EQ(format_bytes(512), "512 B");
  EXPECT_EQ(format_bytes(1536), "1.50 KiB");
  EXPECT_EQ(format_bytes(32.0 * 1024 * 1024), "32.00 MiB");
}

TEST(Rng, DeterministicAndInRange) {
  Rng a(5), b(5), c(6);
  bool differs = false;
  for (int i = 0; i < 100; ++i) {
    uint64_t x = a.next();
    EXPECT_EQ(x, b.next());
    differs = differs || x != c.next();
  }
  EXPECT_TRUE(differs);
  Rng r(1);
  std::vector<int> counts(7, 0);
  for (int i = 0; i < 7000; ++i) {
    uint64_t v = r.below(7);
    ASSERT_LT(v, 7u);
    ++counts[v];
  }
  for (int c : counts) EXPECT_GT(c, 800);  // expected 1000 each
  double u = r.uniform();
  EXPECT_GE(u, 0.0);
  EXPECT_LT(u, 1.0);
}

}  // namespace
}  // namespace kvbench

namespace kvbench {
namespace {

// Numbers right-aligned whatever their sign, so "+5.0%" lines up with "-3.2%".
TEST(Table, SignedNumbersAlignRight) {
  Table t;
  t.columns = {"name", "change"};
  t.rows = {{"a", "+5.0%"}, {"bb", "-13.2%"}, {"c", "7"}};
  std::ostringstream os;
  print_table(os, t);
  EXPECT_EQ(os.str(),
            "name  change\n"
            "----  ------\n"
            "a      +5.0%\n"
            "bb    -13.2%\n"
            "c          7\n");
}

}  // namespace
}  // namespace kvbench
