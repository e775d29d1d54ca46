#include <gtest/gtest.h>

#include <sstream>

#include "kvbench/cli/progress_display.h"

namespace kvbench {
namespace {

TEST(ProgressDisplay, PlainOutputIsSparse) {
  std::ostringstream os;
  double now = 0;
  ProgressDisplay p(os, /*tty=*/false, /*interval_s=*/30, [&] { return now; });
  p.begin("cell", 3);
  now = 1;
  p.advance("a");
  p.end();
  EXPECT_EQ(os.str(), "");  // short work says nothing
  p.begin("cell", 3);
  now = 40;
  p.advance("b");
  now = 45;
  p.advance("c");  // within the interval of the last line
  now = 80;
  p.end();
  EXPECT_EQ(os.str(), "progress: cell 1/3 (b, 39 s)\nprogress: cell done 2/3 in 79 s\n");
}

TEST(ProgressDisplay, TerminalRedrawsABar) {
  std::ostringstream os;
  ProgressDisplay p(os, /*tty=*/true, 30, [] { return 0.0; });
  p.begin("cell", 2);
  p.advance("ctx=1024");
  const std::string s = os.str();
  EXPECT_NE(s.find('\r'), std::string::npos);
  EXPECT_NE(s.find("[###############...............] 1/2  ctx=1024"), std::string::npos);
  EXPECT_EQ(s.find('\n'), std::string::npos);
  p.end();
  EXPECT_EQ(os.str().substr(os.str().size() - 4), "\r\033[K");
  p.advance("ignored after end");
  EXPECT_EQ(os.str().substr(os.str().size() - 4), "\r\033[K");
}

}  // namespace
}  // namespace kvbench
