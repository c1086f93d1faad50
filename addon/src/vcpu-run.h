#pragma once
#include <napi.h>

Napi::Object InitVcpuRun(Napi::Env env, Napi::Object exports);
