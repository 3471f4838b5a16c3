// Declaration-only stand-in for gloo's header (see native/shims/gloo/README.md): ProcessGroupGloo.hpp
// includes it but names nothing from it.
#pragma once
