// The tsvisor native addon: only what FFI does badly. That is fd readiness
// on the main loop (fd-watch.cc), kicking a vCPU thread out of KVM_RUN with a
// signal (vcpu-kick.cc), and KVM_RUN itself, once per exit (vcpu-run.cc).
#include <napi.h>
#include "fd-watch.h"
#include "vcpu-kick.h"
#include "vcpu-run.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InitFdWatch(env, exports);
  InitVcpuKick(env, exports);
  InitVcpuRun(env, exports);
  return exports;
}

NODE_API_MODULE(tsvisor_addon, Init)
