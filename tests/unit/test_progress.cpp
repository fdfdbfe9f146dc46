// The console progress line on a terminal: one line redrawn with '\r', percent and ETA; a resumed run's
// ETA counts only the steps this run has taken.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "train/metrics.h"

namespace dsv::train {
namespace {

std::string read_all(std::FILE* f) {
  std::rewind(f);
  std::string text;
  char buf[512];
  while (std::fgets(buf, sizeof buf, f)) text += buf;
  return text;
}

TEST(Progress, TerminalRedrawsOneLine) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  ConsoleProgress p(/*total_steps=*/4, /*log_interval=*/100, f, /*is_tty=*/true);
  StepMetrics m;
  m.loss = 3.0;
  m.tokens_per_second = 12345;
  for (int64_t s = 1; s <= 4; ++s) {
    m.step = s;
    p.update(m, 2.0 * static_cast<double>(s));
  }
  const std::string before_finish = read_all(f);
  EXPECT_EQ(before_finish.find('\n'), std::string::npos) << before_finish;  // every step, no new line
  EXPECT_EQ(std::count(before_finish.begin(), before_finish.end(), '\r'), 4);
  EXPECT_NE(before_finish.find("\r[##########----------] step 2/4 (50%) | loss 3.0000"), std::string::npos) << before_finish;
  EXPECT_NE(before_finish.find("12.3K tok/s"), std::string::npos);
  EXPECT_NE(before_finish.find("ETA 4s"), std::string::npos);  // step 2: 2 s per step x 2 left
  p.warn("careful");  // ends the open line first
  p.finish();
  const std::string text = read_all(f);
  EXPECT_NE(text.find("ETA 0s\x1b[K\ndsv: warning: careful\n"), std::string::npos) << text;
  EXPECT_EQ(text.back(), '\n');
  std::fclose(f);
}

TEST(Progress, ResumedRunEtaUsesThisRunsPace) {
  StepMetrics m;
  m.step = 110;
  // Resumed at step 101: 10 steps in 20 s, 90 left -> 180 s (not 20 / 110 * 90).
  EXPECT_NE(progress_text(m, 200, 20.0, /*first_step_of_run=*/101).find("ETA 3m00s"), std::string::npos);
  EXPECT_NE(progress_text(m, 200, 20.0).find("(55%)"), std::string::npos);

  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  ConsoleProgress p(200, 10, f, /*is_tty=*/false);
  for (int64_t s = 101; s <= 110; ++s) {
    m.step = s;
    p.update(m, 2.0 * static_cast<double>(s - 100));
  }
  const std::string text = read_all(f);
  EXPECT_NE(text.find("step 110/200 (55%)"), std::string::npos) << text;
  EXPECT_NE(text.find("ETA 3m00s"), std::string::npos) << text;
  std::fclose(f);
}

}  // namespace
}  // namespace dsv::train
