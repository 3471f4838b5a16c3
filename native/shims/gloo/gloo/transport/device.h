// Declaration-only stand-in for gloo's header (see native/shims/gloo/README.md). c10d holds devices
// and buffers only through shared_ptr / unique_ptr, so incomplete types are enough; devices are made
// by ProcessGroupGloo::createDeviceFor*, which libtorch_cpu exports.
#pragma once

namespace gloo::transport {
class Device;
class UnboundBuffer;
}  // namespace gloo::transport
