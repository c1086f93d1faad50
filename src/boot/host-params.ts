// Kernel parameters tsvisor appends for the host it runs on. On hardware KVM
// there are none. On kvm_pvm every ring-0 guest instruction is emulated, and
// the emulator lacks some (see MEASURED.md): these parameters keep an
// unmodified Linux away from them and away from slow calibration loops.
// Shown by --verbose; replaced by --host-params.
import type { HostKind } from '../kvm/system.js';

export function defaultHostParams(hostKind: HostKind, tscKhz: number): string[] {
  if (hostKind !== 'kvm_pvm') return [];
  const hz100Lpj = tscKhz > 0 ? Math.round((tscKhz * 1000) / 100) : 1000000;
  return [
    'noxsave',            // xsave/xrstor: not emulated
    'nofsgsbase',
    // X86_FEATURE bits: 129 PCLMULQDQ, 137 SSSE3, 147 SSE4.1, 148 SSE4.2, 151 POPCNT, 153 AES, 308 SMAP (clac/stac)
    'clearcpuid=129,137,147,148,151,153,308',
    'mitigations=off',    // also keeps verw away
    `lpj=${hz100Lpj}`,    // skip delay-loop calibration (emulated, slow)
    'tsc=reliable',
    'no_timer_check',
    // Costly boot-time self-checks, minutes under emulation.
    'initcall_blacklist=ftrace_check_for_weak_functions,trace_eval_init',
    'cryptomgr.notests',
    'nosoftlockup',
    // Seed the RNG from RDRAND (which works here) instead of mixing timer
    // jitter into BLAKE2s under emulation, and keep the initrd instead of
    // poisoning its pages when freeing them: 62 s → 52 s to "Run /init".
    'random.trust_cpu=on',
    'retain_initrd',
  ];
}
