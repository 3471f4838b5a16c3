// Learning-rate schedules as verl defines them (verl/utils/torch_functional.py), as pure
// functions of the step: no optimizer, no state.
#pragma once

#include <cstdint>

namespace tiller::train {

enum class ScheduleKind {
  kConstant,            // lr
  kConstantWithWarmup,  // lr * min(1, step / warmup_steps)
  kWarmupCosine,        // warmup from min_lr_ratio, then a half cosine down to min_lr_ratio
};

struct LrSchedule {
  ScheduleKind kind = ScheduleKind::kConstant;
  double lr = 0;              // the peak rate
  int64_t warmup_steps = 0;   // steps of linear warmup
  int64_t total_steps = 0;    // cosine: the step at which the rate reaches its floor
  double min_lr_ratio = 0;    // cosine: floor (and warmup start) as a fraction of lr
  double num_cycles = 0.5;    // cosine: 0.5 is one half wave, from lr down to the floor
};

// Checks ranges; throws std::invalid_argument naming the field.
void validate(const LrSchedule& schedule);

// The rate of optimizer step `step`, counted from 0 (the first update uses lr_at(s, 0)), as
// torch's LambdaLR with verl's lambdas gives it.
double lr_at(const LrSchedule& schedule, int64_t step);

}  // namespace tiller::train
