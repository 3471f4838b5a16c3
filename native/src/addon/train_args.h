// JS objects -> train/ configs, shared by the standalone optimizer handle (train.cc) and the
// model handle's optimizer (model.cc). Errors name the field as "<field>.<key>".
#pragma once

#include <napi.h>

#include <string>

#include "train/optimizer.h"
#include "train/schedule.h"

namespace tiller::addon {

std::string string_field(const Napi::Object& o, const char* key, const std::string& field);
// `fallback` when the key is undefined.
double number_field(const Napi::Object& o, const char* key, const std::string& field, double fallback);

// {lr, beta1?, beta2?, eps?, weightDecay?, noDecay?: "biases-and-norms" | string[]}
train::AdamWConfig adamw_config_from_js(const Napi::Object& o, const std::string& field);

// {kind, warmupSteps?, totalSteps?, minLrRatio?, numCycles?} with the peak rate `lr` (validated).
train::LrSchedule schedule_from_js(const Napi::Object& o, const std::string& field, double lr);

}  // namespace tiller::addon
