// The KVM system handle: /dev/kvm, the API version, capabilities, and the
// host facts a VMM adapts to (supported CPUID, and whether this is kvm_pvm).
import { existsSync, readFileSync } from 'node:fs';
import * as libc from '../sys/libc.js';
import { TsvisorError } from '../errors.js';
import * as abi from './abi.js';

/** One CPUID entry (struct kvm_cpuid_entry2). */
export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

export const CPUID_ENTRY_SIZE = 40;
export const KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1;

// KVM_SET_XCRS, a vCPU ioctl: _IOW(KVMIO, 0xa7, struct kvm_xcrs), 392 bytes
// (nr_xcrs, flags, then 16 of { u32 xcr, u32 reserved, u64 value }, padding).
const KVM_XCRS_SIZE = 392;
const KVM_SET_XCRS = ((1 << 30) | (KVM_XCRS_SIZE << 16) | (0xae << 8) | 0xa7) >>> 0;
const KVM_CAP_XCRS = 56;

/** What kind of KVM this host offers: hardware VMX/SVM, or kvm_pvm's software virtualization. */
export type HostKind = 'hardware' | 'kvm_pvm';

export function detectHostKind(): HostKind {
  return existsSync('/sys/module/kvm_pvm') ? 'kvm_pvm' : 'hardware';
}

/**
 * The most guest RAM this host can back: its RAM plus swap (/proc/meminfo), in
 * bytes; 0 if unknown. Guest RAM is mapped MAP_NORESERVE, so without this
 * bound a --mem beyond the host would only fail when the guest touches it.
 */
export function hostMemoryBytes(): number {
  let text: string;
  try {
    text = readFileSync('/proc/meminfo', 'utf8');
  } catch {
    return 0;
  }
  const kib = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0);
  return (kib('MemTotal') + kib('SwapTotal')) * 1024;
}

export class Kvm {
  readonly fd: number;
  readonly hostKind: HostKind;
  private readonly scratch = new libc.NativeBuffer(8 + 256 * CPUID_ENTRY_SIZE);

  constructor(path = '/dev/kvm') {
    const fd = libc.open(path, libc.O_RDWR | libc.O_CLOEXEC, 0);
    if (fd < 0) {
      const e = libc.errno();
      if (e === libc.ENOENT || e === libc.ENXIO || e === libc.ENODEV)
        throw new TsvisorError(`${path} does not exist`, 1, 'load the kvm module with modprobe kvm_intel or kvm_amd, or run on a host with virtualization enabled');
      if (e === libc.EACCES || e === libc.EPERM)
        throw new TsvisorError(`permission denied opening ${path}`, 1, 'add your user to the kvm group or run as root');
      throw new TsvisorError(`cannot open ${path}: ${libc.strerror(e)}`);
    }
    this.fd = fd;
    const version = libc.ioctl(fd, abi.KVM_GET_API_VERSION, 0);
    if (version !== abi.KVM_API_VERSION) {
      libc.close(fd);
      throw new TsvisorError(`${path} speaks KVM API version ${version}, tsvisor needs ${abi.KVM_API_VERSION}`);
    }
    this.hostKind = detectHostKind();
  }

  checkExtension(cap: number): number {
    return libc.ioctl(this.fd, abi.KVM_CHECK_EXTENSION, cap);
  }

  /** Throws, naming the capability, unless every one listed is present. */
  requireExtensions(caps: Record<string, number>): void {
    for (const [name, cap] of Object.entries(caps)) {
      if (this.checkExtension(cap) <= 0) throw new TsvisorError(`this host's KVM lacks ${name}, which tsvisor needs`, 1, 'use a newer kernel');
    }
  }

  vcpuMmapSize(): number {
    const n = libc.ioctl(this.fd, abi.KVM_GET_VCPU_MMAP_SIZE, 0);
    if (n <= 0) throw new libc.SyscallError('KVM_GET_VCPU_MMAP_SIZE', libc.errno());
    return n;
  }

  supportedCpuid(): CpuidEntry[] {
    const b = this.scratch;
    b.clear();
    b.dv.setUint32(0, 256, true);
    if (libc.ioctl(this.fd, abi.KVM_GET_SUPPORTED_CPUID, b.address) < 0) throw new libc.SyscallError('KVM_GET_SUPPORTED_CPUID', libc.errno());
    const n = b.dv.getUint32(0, true);
    const out: CpuidEntry[] = [];
    for (let i = 0; i < n; i++) {
      const o = 8 + i * CPUID_ENTRY_SIZE;
      out.push({
        function: b.dv.getUint32(o, true), index: b.dv.getUint32(o + 4, true), flags: b.dv.getUint32(o + 8, true),
        eax: b.dv.getUint32(o + 12, true), ebx: b.dv.getUint32(o + 16, true), ecx: b.dv.getUint32(o + 20, true), edx: b.dv.getUint32(o + 24, true),
      });
    }
    return out;
  }

  /**
   * Sets XCR0 of the vCPU `vcpuFd` (KVM_SET_XCRS), after its CPUID (KVM
   * refuses bits the CPUID's 0xD.0 lacks). Best effort: false when this KVM
   * lacks KVM_CAP_XCRS or refuses the value; the vCPU then keeps XCR0 = 1 until
   * the guest's XSETBV, as on any reset (see bootXcr0 for why tsvisor sets it).
   */
  setVcpuXcr0(vcpuFd: number, xcr0: bigint): boolean {
    if (this.checkExtension(KVM_CAP_XCRS) <= 0) return false;
    const b = this.scratch;
    b.clear();
    b.dv.setUint32(0, 1, true); // nr_xcrs
    b.dv.setUint32(8, 0, true); // xcrs[0].xcr: XCR0
    b.dv.setBigUint64(16, xcr0, true);
    return libc.ioctl(vcpuFd, KVM_SET_XCRS, b.address) >= 0;
  }

  close(): void {
    libc.close(this.fd);
  }
}
