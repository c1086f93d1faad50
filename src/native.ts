// The native addon (addon/), typed. Built by `npm install` (node-gyp).
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { existsSync } from 'node:fs';
import { TsvisorError } from './errors.js';
import type { FdWatchClass } from './loop/addon.js';

export interface NativeAddon {
  FdWatch: FdWatchClass;
  installKickHandler(): number;
  kickThread(tid: number): number;
  currentThreadId(): number;
  /** KVM_RUN on a vCPU fd: 0, or -errno. */
  kvmRun(vcpuFd: number): number;
}

/** The package root: the nearest directory above this module holding addon/ (dist/src/ or a dist/bundle/ file). */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'addon', 'binding.gyp')) && dirname(dir) !== dir) dir = dirname(dir);
  return dir;
}
const root = packageRoot();
let cached: NativeAddon | undefined;

export function native(): NativeAddon {
  if (cached) return cached;
  try {
    cached = createRequire(import.meta.url)(join(root, 'addon/build/Release/tsvisor_addon.node')) as NativeAddon;
  } catch (e) {
    throw new TsvisorError(`the native addon is not built (${(e as Error).message.split('\n')[0]})`, 1, 'run npm install (it builds addon/ with node-gyp)');
  }
  return cached;
}
