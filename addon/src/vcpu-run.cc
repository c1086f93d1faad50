// Entering the guest: KVM_RUN on the vCPU thread. One N-API call costs less
// than one FFI call, and this one runs once per VM exit (see
// docs/performance.md for what it measured).
#include "vcpu-run.h"
#include <cerrno>
#include <sys/ioctl.h>
#include <linux/kvm.h>

namespace {

// kvmRun(vcpuFd): number — 0, or -errno (EINTR when a kick interrupted it).
Napi::Value KvmRun(const Napi::CallbackInfo& info) {
  int fd = info[0].As<Napi::Number>().Int32Value();
  int r = ioctl(fd, KVM_RUN, 0);
  return Napi::Number::New(info.Env(), r < 0 ? -errno : 0);
}

}  // namespace

Napi::Object InitVcpuRun(Napi::Env env, Napi::Object exports) {
  exports.Set("kvmRun", Napi::Function::New(env, KvmRun));
  return exports;
}
