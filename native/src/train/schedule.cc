#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace tiller::train {

void validate(const LrSchedule& s) {
  if (!(s.lr >= 0)) throw std::invalid_argument("lr: must be >= 0, got " + std::to_string(s.lr));
  if (s.warmup_steps < 0) throw std::invalid_argument("warmupSteps: must be >= 0");
  if (s.kind == ScheduleKind::kWarmupCosine) {
    if (s.total_steps <= 0) throw std::invalid_argument("totalSteps: must be > 0 for a cosine schedule");
    if (!(s.min_lr_ratio >= 0 && s.min_lr_ratio <= 1)) throw std::invalid_argument("minLrRatio: must be in [0, 1]");
  }
}

double lr_at(const LrSchedule& s, int64_t step) {
  if (step < 0) throw std::invalid_argument("step: must be >= 0, got " + std::to_string(step));
  const double warmup = static_cast<double>(std::max<int64_t>(1, s.warmup_steps));
  switch (s.kind) {
    case ScheduleKind::kConstant:
      return s.lr;
    case ScheduleKind::kConstantWithWarmup:
      return s.lr * std::min(1.0, static_cast<double>(step) / warmup);
    case ScheduleKind::kWarmupCosine: {
      const double floor = s.min_lr_ratio;
      if (step < s.warmup_steps) return s.lr * (floor + (1.0 - floor) * (static_cast<double>(step) / warmup));
      const double progress = static_cast<double>(step - s.warmup_steps) /
                              static_cast<double>(std::max<int64_t>(1, s.total_steps - s.warmup_steps));
      const double x = std::cos(M_PI * s.num_cycles * 2.0 * progress);
      // coef * x + intercept maps x in [-1, 1] onto [floor, 1].
      return s.lr * std::max(floor, x * (1.0 - floor) * 0.5 + (1.0 + floor) * 0.5);
    }
  }
  throw std::invalid_argument("kind: unknown schedule");
}

}  // namespace tiller::train
