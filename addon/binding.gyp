{
  "targets": [
    {
      "target_name": "tsvisor_addon",
      "sources": ["src/addon.cc", "src/fd-watch.cc", "src/vcpu-kick.cc", "src/vcpu-run.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall"]
    }
  ]
}
