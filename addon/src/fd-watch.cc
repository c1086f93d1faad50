#include "fd-watch.h"
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>
#include <uv.h>

namespace {

// One uv_poll_t per watch. The JS callback receives (readable, writable, error).
// The handle memory is freed in the uv close callback, after libuv is done with it.
//
// The uv_poll_t polls a duplicate of the caller's fd that this watch owns, not
// the caller's fd number. libuv's uv_poll_stop, uv_poll_start and uv_close all
// issue EPOLL_CTL_DEL for the handle's fd *number* (uv__poll_stop ->
// uv__platform_invalidate_fd), whether or not the handle is active. Had the
// handle held the caller's number, then a watch that was stopped (libuv says
// the fd may then be closed), whose fd the owner closed, and that was stopped,
// re-armed, closed or garbage-collected later, deleted the epoll registration
// of whatever fd had been given that number since -- another watch's, which
// then never fired again. A number the watch owns cannot be reused until the
// watch closes it, right after uv_close (the DEL is done by then).
class FdWatch : public Napi::ObjectWrap<FdWatch> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FdWatch", {
      InstanceMethod("start", &FdWatch::Start),
      InstanceMethod("stop", &FdWatch::Stop),
      InstanceMethod("close", &FdWatch::Close),
    });
  }

  // new FdWatch(fd, callback)
  explicit FdWatch(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FdWatch>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsFunction()) {
      Napi::TypeError::New(env, "FdWatch(fd, callback)").ThrowAsJavaScriptException();
      return;
    }
    int fd = info[0].As<Napi::Number>().Int32Value();
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    fd_ = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (fd_ < 0) {
      Napi::Error::New(env, std::string("FdWatch: dup of fd ") + std::to_string(fd) + ": " + std::strerror(errno)).ThrowAsJavaScriptException();
      return;
    }
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    poll_ = new uv_poll_t;
    int rc = uv_poll_init(loop, poll_, fd_);
    if (rc != 0) {
      delete poll_;
      poll_ = nullptr;
      ::close(fd_);
      fd_ = -1;
      Napi::Error::New(env, std::string("uv_poll_init: ") + uv_strerror(rc)).ThrowAsJavaScriptException();
      return;
    }
    poll_->data = this;
  }

  ~FdWatch() override { CloseHandle(); }

 private:
  // start(readable: boolean, writable: boolean): (re)arms the watch.
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (poll_ == nullptr) return env.Undefined();
    int events = 0;
    if (info.Length() > 0 && info[0].ToBoolean()) events |= UV_READABLE;
    if (info.Length() > 1 && info[1].ToBoolean()) events |= UV_WRITABLE;
    if (events == 0) {
      uv_poll_stop(poll_);
      if (!refHeld_) return env.Undefined();
      Unref();
      refHeld_ = false;
      return env.Undefined();
    }
    int rc = uv_poll_start(poll_, events, OnEvent);
    if (rc != 0) {
      Napi::Error::New(env, std::string("uv_poll_start: ") + uv_strerror(rc)).ThrowAsJavaScriptException();
      return env.Undefined();
    }
    // Keep the JS object alive while libuv may call back into it.
    if (!refHeld_) { Ref(); refHeld_ = true; }
    return env.Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    if (poll_ != nullptr) uv_poll_stop(poll_);
    if (refHeld_) { Unref(); refHeld_ = false; }
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Stop(info);
    CloseHandle();
    return info.Env().Undefined();
  }

  // Also run by the destructor, for completeness: in practice a watch is only
  // released by close(), since its callback (a persistent handle) reaches it.
  void CloseHandle() {
    if (poll_ == nullptr) return;
    poll_->data = nullptr;
    // uv_close stops the poll (EPOLL_CTL_DEL on fd_) before it returns, so
    // fd_ may be closed at once (libuv's uv_poll documentation says as much).
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    poll_ = nullptr;
    ::close(fd_);
    fd_ = -1;
  }

  static void OnEvent(uv_poll_t* handle, int status, int events) {
    auto* self = static_cast<FdWatch*>(handle->data);
    if (self == nullptr) return;
    Napi::Env env = self->callback_.Env();
    Napi::HandleScope scope(env);
    bool error = status < 0;
    napi_value argv[3];
    napi_get_boolean(env, error || (events & UV_READABLE) != 0, &argv[0]);
    napi_get_boolean(env, error || (events & UV_WRITABLE) != 0, &argv[1]);
    napi_get_boolean(env, error, &argv[2]);
    // MakeCallback runs microtasks afterwards, as a libuv callback from Node would.
    self->callback_.MakeCallback(env.Global(), {argv[0], argv[1], argv[2]});
  }

  int fd_ = -1;  // the watch's own duplicate of the caller's fd
  uv_poll_t* poll_ = nullptr;
  bool refHeld_ = false;
  Napi::FunctionReference callback_;
};

}  // namespace

Napi::Object InitFdWatch(Napi::Env env, Napi::Object exports) {
  exports.Set("FdWatch", FdWatch::Define(env));
  return exports;
}
