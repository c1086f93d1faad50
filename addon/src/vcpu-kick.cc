// Kicking a vCPU thread out of KVM_RUN: a signal with a do-nothing handler,
// installed without SA_RESTART, makes the ioctl return EINTR (KVM checks for
// pending signals). JS cannot install a real signal handler, so it lives here.
#include "vcpu-kick.h"
#include <csignal>
#include <cerrno>
#include <unistd.h>
#include <sys/syscall.h>

namespace {

int KickSignal() { return SIGRTMIN + 3; }

void OnKick(int) {}

// installKickHandler(): number — the signal used for kicks.
Napi::Value InstallKickHandler(const Napi::CallbackInfo& info) {
  struct sigaction sa = {};
  sa.sa_handler = OnKick;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  if (sigaction(KickSignal(), &sa, nullptr) != 0) {
    Napi::Error::New(info.Env(), "sigaction failed").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  return Napi::Number::New(info.Env(), KickSignal());
}

// kickThread(tid): number — 0, or -errno.
Napi::Value KickThread(const Napi::CallbackInfo& info) {
  int tid = info[0].As<Napi::Number>().Int32Value();
  long r = syscall(SYS_tgkill, getpid(), tid, KickSignal());
  return Napi::Number::New(info.Env(), r == 0 ? 0 : -errno);
}

// currentThreadId(): number — the kernel thread id of the calling thread.
Napi::Value CurrentThreadId(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(syscall(SYS_gettid)));
}

}  // namespace

Napi::Object InitVcpuKick(Napi::Env env, Napi::Object exports) {
  exports.Set("installKickHandler", Napi::Function::New(env, InstallKickHandler));
  exports.Set("kickThread", Napi::Function::New(env, KickThread));
  exports.Set("currentThreadId", Napi::Function::New(env, CurrentThreadId));
  return exports;
}
