// The tsvisor native addon: only what FFI does badly. That is fd readiness
// on the main loop (fd-watch.cc) and kicking a vCPU thread out of KVM_RUN
// with a signal (vcpu-kick.cc).
#include <napi.h>
#include "fd-watch.h"
#include "vcpu-kick.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitFdWatch(env, exports);
  InitVcpuKick(env, exports);
  return exports;
}

NODE_API_MODULE(tsvisor_addon, Init)
