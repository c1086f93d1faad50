#pragma once
#include <napi.h>

Napi::Object InitVcpuKick(Napi::Env env, Napi::Object exports);
