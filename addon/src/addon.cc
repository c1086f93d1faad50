// The tsvisor native addon: only what FFI does badly. Today that is fd
// readiness on the main loop (fd-watch.cc); see addon/README.md.
#include <napi.h>
#include "fd-watch.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitFdWatch(env, exports);
  return exports;
}

NODE_API_MODULE(tsvisor_addon, Init)
