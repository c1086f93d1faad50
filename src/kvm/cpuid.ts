// The CPUID a vCPU reports: what KVM supports, with the fix-ups a VMM owes
// the guest (its APIC ID, the hypervisor bit, no PMU it cannot back) and, on
// kvm_pvm, bits hidden for instructions the host's emulator lacks.
import type { CpuidEntry, HostKind } from './system.js';

const CPUID_1_ECX_CX16 = 1 << 13;
const CPUID_1_ECX_HYPERVISOR = 1 << 31;

export function vcpuCpuid(supported: CpuidEntry[], vcpuId: number, hostKind: HostKind): CpuidEntry[] {
  return supported.map((e) => {
    const out = { ...e };
    switch (e.function) {
      case 1:
        // Initial APIC ID in EBX[31:24], one logical processor per package.
        out.ebx = ((e.ebx & 0x0000ffff) | (1 << 16) | (vcpuId << 24)) >>> 0;
        out.ecx = (e.ecx | CPUID_1_ECX_HYPERVISOR) >>> 0;
        // kvm_pvm's emulator cannot run `lock cmpxchg16b`.
        if (hostKind === 'kvm_pvm') out.ecx = (out.ecx & ~CPUID_1_ECX_CX16) >>> 0;
        break;
      case 0xa:
        // No architectural PMU: tsvisor does not virtualize performance counters.
        out.eax = out.ebx = out.ecx = out.edx = 0;
        break;
      case 0xb:
      case 0x1f:
        // x2APIC ID of this vCPU.
        out.edx = vcpuId;
        break;
    }
    return out;
  });
}
