// JS objects -> train/ configs, shared by the standalone optimizer handle (train.cc) and the
// model handle's optimizer (model.cc). Errors name the field as "<field>.<key>".
#pragma once

#include <napi.h>

#include <string>

#include "train/optimizer.h"
#include "train/policy_loss.h"
#include "train/schedule.h"

namespace tiller::addon {

std::string string_field(const Napi::Object& o, const char* key, const std::string& field);
// `fallback` when the key is undefined.
double number_field(const Napi::Object& o, const char* key, const std::string& field, double fallback);

// {lr, beta1?, beta2?, eps?, weightDecay?, noDecay?: "biases-and-norms" | string[]}
train::AdamWConfig adamw_config_from_js(const Napi::Object& o, const std::string& field);

// {kind, warmupSteps?, totalSteps?, minLrRatio?, numCycles?} with the peak rate `lr` (validated).
train::LrSchedule schedule_from_js(const Napi::Object& o, const std::string& field, double lr);

// {lossMode?, clipRatioLow?, clipRatioHigh?, clipRatioC?, aggMode?, lossScaleFactor?, entropyCoeff?, tauPos?,
//  tauNeg?, clipCovRatio?, clipCovLb?, clipCovUb?, klCovRatio?, ppoKlCoef?, seed?,
//  kl?: {type: "none" | "k1" | "kl" | "k2" | "mse" | "k3" | "low_var_kl" | "abs" (each but none also with a
//  trailing "+"), coeff?}}; absent keys keep the defaults.
train::PolicyLossConfig policy_loss_config_from_js(const Napi::Object& o, const std::string& field);

// {pgLoss, pgClipfrac?, pgClipfracLower?, ppoKl?, entropy, klLoss}: a key is absent when the mode does not
// measure it.
Napi::Object policy_metrics_to_js(Napi::Env env, const train::PolicyLossMetrics& m);

// o[key] as a [tokens] fp32 tensor owning its memory; an undefined key gives an undefined tensor
// unless `required`.
at::Tensor float_tokens_field(const Napi::Object& o, const char* key, const std::string& field, int64_t tokens,
                              bool required);

}  // namespace tiller::addon
