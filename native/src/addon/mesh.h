// Mesh handles (addon/dist.cc): what model.cc needs to take a mesh argument.
#pragma once

#include <napi.h>

#include <memory>

#include "parallel/mesh.h"

namespace tiller::addon {

// The mesh behind a handle made by meshCreate; throws std::invalid_argument for anything else.
std::shared_ptr<parallel::Mesh> mesh_of(const Napi::Value& value);

}  // namespace tiller::addon
