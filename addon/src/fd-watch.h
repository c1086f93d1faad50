// FdWatch: fd readiness on the Node main loop through libuv's uv_poll_t.
// Node cannot watch a TAP or eventfd by itself (net.Socket rejects the fd type,
// fs.read parks a thread-pool thread per read), so this is the one thing the
// main loop needs from native code.
#pragma once
#include <napi.h>

Napi::Object InitFdWatch(Napi::Env env, Napi::Object exports);
