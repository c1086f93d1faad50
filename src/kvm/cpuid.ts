// The CPUID a vCPU reports: what KVM supports, with the fix-ups a VMM owes
// the guest (its APIC ID, the hypervisor bit, no PMU it cannot back) and, on
// kvm_pvm, bits hidden for instructions the host's emulator lacks. Then leaf
// 0xD (XSAVE) is made to agree with the feature bits, and bootXcr0 gives the
// XCR0 the vCPU starts with.
import type { CpuidEntry, HostKind } from './system.js';

const CPUID_1_ECX_CX16 = 1 << 13;
const CPUID_1_ECX_XSAVE = 1 << 26;
const CPUID_1_ECX_HYPERVISOR = 1 << 31;
/** KVM's paravirtual feature leaf, and its features that make hypercalls: PV_UNHALT (KVM_HC_KICK_CPU), PV_SEND_IPI, PV_SCHED_YIELD. */
const KVM_CPUID_FEATURES = 0x40000001;
const KVM_HYPERCALL_FEATURES = (1 << 7) | (1 << 11) | (1 << 13);

export function vcpuCpuid(supported: CpuidEntry[], vcpuId: number, hostKind: HostKind, cpus = 1): CpuidEntry[] {
  const out = supported.map((e) => {
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
      case KVM_CPUID_FEATURES:
        // kvm_pvm's emulator never completes a guest `vmcall` (it runs it again
        // forever): no paravirtual feature that makes hypercalls. With several
        // vCPUs Linux's PV IPIs otherwise hang the first IPI it sends.
        if (hostKind === 'kvm_pvm') out.eax = (out.eax & ~KVM_HYPERCALL_FEATURES) >>> 0;
        break;
    }
    return out;
  });
  if (cpus > 1) for (const e of out) smpTopology(e, vcpuId, cpus);
  // Last, so that it sees the feature bits as the guest will.
  xsaveConsistent(out);
  return out;
}

const CPUID_1_EDX_HTT = 1 << 28;

/**
 * With several vCPUs, the topology every leaf that describes one reports:
 * one package of `cpus` cores, one thread each, the APIC id being the core's
 * (KVM's vCPU id). Host values would describe the host's topology, against
 * the APIC ids the MP table and MADT give. (One vCPU keeps KVM's table as it is.)
 */
function smpTopology(e: CpuidEntry, id: number, cpus: number): void {
  // Bits of the APIC id that number the cores.
  const coreBits = Math.ceil(Math.log2(cpus));
  switch (e.function) {
    case 1:
      // Addressable logical processor ids in the package, and "more than one".
      e.ebx = ((e.ebx & 0xff00ffff) | ((1 << coreBits) << 16)) >>> 0;
      e.edx = (e.edx | CPUID_1_EDX_HTT) >>> 0;
      break;
    case 4:
      // Intel's cache leaf: cores per package - 1 in EAX[31:26]; L1/L2 private to a core, L3 shared.
      if ((e.eax & 0x1f) === 0) break;
      e.eax = ((e.eax & 0x3fff) | (((e.eax >>> 5) & 7) === 3 ? ((1 << coreBits) - 1) << 14 : 0) | (((1 << coreBits) - 1) << 26)) >>> 0;
      break;
    case 0xb:
    case 0x1f:
      // Level 0 (SMT): one thread, no bits; level 1 (core): `coreBits` bits, `cpus` processors; no more levels.
      if (e.index === 0) Object.assign(e, { eax: 0, ebx: 1, ecx: (1 << 8) | 0 });
      else if (e.index === 1) Object.assign(e, { eax: coreBits, ebx: cpus, ecx: (2 << 8) | 1 });
      else Object.assign(e, { eax: 0, ebx: 0, ecx: e.index & 0xff });
      e.edx = id;
      break;
    case 0x80000008:
      // AMD: cores in the package - 1, and the APIC id bits that number them.
      e.ecx = ((e.ecx & ~0xf0ff) | (cpus - 1) | (coreBits << 12)) >>> 0;
      break;
    case 0x8000001e:
      // AMD: extended APIC id, core id (one thread per core), one node.
      Object.assign(e, { eax: id, ebx: id & 0xff, ecx: 0 });
      break;
  }
}

/*
 * XSAVE state components (bits of XCR0, subleaves of CPUID 0xD) and the
 * feature bit each belongs to. A guest enables a component only when its
 * feature is there: Linux's fpu__init_system_xstate drops the components
 * whose xsave_cpuid_features[] bit is clear, then checks that the XSAVE size
 * CPUID reports for what it enabled equals the size it computes itself ("XSAVE
 * consistency problem" and XSAVE off when not). QEMU builds 0xD from the
 * feature bits the same way (x86_cpu_enable_xsave_components). So a component
 * whose feature is hidden (by tsvisor, or absent from KVM's table) leaves 0xD.
 * A group is enabled whole or not at all, and only on top of the components it
 * builds on: XSETBV (and KVM's __kvm_set_xcr) refuse the rest.
 */
interface XstateGroup {
  components: number[];
  needs: number[];
  feature: { leaf: number; subleaf: number; reg: 'ebx' | 'ecx' | 'edx'; bit: number };
}
const XSTATE_GROUPS: XstateGroup[] = [
  { components: [2], needs: [1], feature: { leaf: 1, subleaf: 0, reg: 'ecx', bit: 28 } }, // YMM: AVX
  { components: [3, 4], needs: [], feature: { leaf: 7, subleaf: 0, reg: 'ebx', bit: 14 } }, // BNDREGS, BNDCSR: MPX
  { components: [5, 6, 7], needs: [2], feature: { leaf: 7, subleaf: 0, reg: 'ebx', bit: 16 } }, // opmask, ZMM_Hi256, Hi16_ZMM: AVX512F
  { components: [9], needs: [], feature: { leaf: 7, subleaf: 0, reg: 'ecx', bit: 3 } }, // PKRU: PKU
  { components: [17, 18], needs: [], feature: { leaf: 7, subleaf: 0, reg: 'edx', bit: 24 } }, // XTILECFG, XTILEDATA: AMX-TILE
  { components: [19], needs: [], feature: { leaf: 7, subleaf: 1, reg: 'edx', bit: 21 } }, // APX: APX_F
];
/** The legacy region (x87, SSE) and the XSAVE header: where extended components start. */
const XSAVE_LEGACY_AND_HEADER = 512 + 64;

function find(entries: CpuidEntry[], leaf: number, subleaf: number): CpuidEntry | undefined {
  return entries.find((e) => e.function === leaf && e.index === subleaf);
}

/** Component `i`'s bit in 0xD.0 (EAX: components 0-31, EDX: 32-63). */
function has(d0: CpuidEntry, i: number): boolean {
  return i < 32 ? ((d0.eax >>> i) & 1) === 1 : ((d0.edx >>> (i - 32)) & 1) === 1;
}

/**
 * Makes leaf 0xD agree with the feature bits, in place: drops from 0xD.0
 * EDX:EAX (and zeroes the subleaf of) every component whose feature bit is
 * clear, whose group is incomplete or whose subleaf gives no size, and
 * recomputes the sizes from what is left. 0xD.0 ECX is the XSAVE area for
 * all of them (standard format: the end of the furthest component); EBX, the
 * area for the XCR0 in force, is set to the same, the XCR0 bootXcr0 gives
 * (KVM rewrites EBX, and 0xD.1 EBX, from the vCPU's XCR0 as it changes).
 * A table already consistent, as KVM reports it, comes out unchanged.
 */
export function xsaveConsistent(entries: CpuidEntry[]): void {
  const d0 = find(entries, 0xd, 0);
  if (!d0) return;
  const featureOn = (f: XstateGroup['feature']) => ((((find(entries, f.leaf, f.subleaf)?.[f.reg] ?? 0) >>> f.bit) & 1) === 1);
  const sized = (i: number) => (find(entries, 0xd, i)?.eax ?? 0) > 0;
  const drop = (i: number) => {
    if (i < 32) d0.eax = (d0.eax & ~(1 << i)) >>> 0;
    else d0.edx = (d0.edx & ~(1 << (i - 32))) >>> 0;
    const sub = find(entries, 0xd, i);
    if (sub) sub.eax = sub.ebx = sub.ecx = sub.edx = 0;
  };
  // In order: a group's `needs` come before it (AVX-512 goes when YMM does).
  for (const g of XSTATE_GROUPS) {
    const present = g.components.filter((i) => has(d0, i));
    if (present.length === 0) continue;
    const whole = present.length === g.components.length && g.components.every(sized);
    if (!whole || !featureOn(g.feature) || !g.needs.every((i) => has(d0, i))) for (const i of g.components) drop(i);
  }
  // Any other component (one tsvisor has no feature bit for) stays, but not without its size.
  for (let i = 2; i < 64; i++) if (has(d0, i) && !sized(i)) drop(i);
  let size = XSAVE_LEGACY_AND_HEADER;
  for (let i = 2; i < 64; i++) {
    if (!has(d0, i)) continue;
    const sub = find(entries, 0xd, i)!;
    size = Math.max(size, sub.ebx + sub.eax);
  }
  d0.ecx = d0.ebx = size;
}

/**
 * The XCR0 a vCPU starts with: every component in its CPUID 0xD.0 (after
 * xsaveConsistent), which is what a Linux guest enables at boot; null when the
 * guest has no XSAVE, or on kvm_pvm (its guests boot with `noxsave`).
 *
 * Why not the architectural reset value 1 (x87 only): a vCPU's XCR0 matters
 * only once the guest sets CR4.OSXSAVE, and a guest sets XCR0 itself right
 * after; until then XSAVE and the AVX instructions fault whatever XCR0 holds.
 * But KVM learns the guest's XCR0 only from the XSETBV exit, and computes 0xD.0
 * EBX and loads XCR0 on each entry from what it learned. A host that fails to
 * deliver that exit (QEMU's TCG before 8.2 does not check SVM's XSETBV
 * intercept, so the hardware-KVM lane's kvm_amd runs the guest's XSETBV
 * itself) keeps KVM at XCR0 = 1: the guest reads 0xD.0 EBX = 576 for the
 * features it enabled ("XSAVE consistency problem: size 2696 != kernel_size
 * 576"), turns XSAVE off, and would lose its XCR0 at the next exit anyway.
 * Starting KVM at the XCR0 the guest is going to pick keeps the two in step
 * there, and changes nothing where the exit arrives.
 */
export function bootXcr0(entries: CpuidEntry[], hostKind: HostKind): bigint | null {
  if (hostKind === 'kvm_pvm') return null;
  const leaf1 = find(entries, 1, 0);
  const d0 = find(entries, 0xd, 0);
  if (!leaf1 || !(leaf1.ecx & CPUID_1_ECX_XSAVE) || !d0) return null;
  return (BigInt(d0.edx >>> 0) << 32n) | BigInt((d0.eax | 1) >>> 0);
}
