// A virtual machine, as users and tests drive it: `Vm.boot()` builds the
// machine (KVM VM, RAM, irqchip, kernel loaded per its format, devices), runs
// its vCPU on a worker thread, and exposes the console, the exit and stop().
import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import * as libc from './sys/libc.js';
import { native } from './native.js';
import { vmmCpuMs } from './util/thread-cpu.js';
import { bugReport, TsvisorError, usageError } from './errors.js';
import { appendArchive, hostFilesArchive, type HostFile } from './guest/host-files.js';
import { commandEnd } from './guest/command.js';
import { hostMemoryBytes, Kvm, type HostKind } from './kvm/system.js';
import { KvmVm } from './kvm/vm.js';
import { Vcpu } from './kvm/vcpu.js';
import * as abi from './kvm/abi.js';
import { bootXcr0, vcpuCpuid } from './kvm/cpuid.js';
import { GuestMemory } from './memory/guest-memory.js';
import { BIOS_AREA_START, GiB, KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR, MiB, MPTABLE_ADDR, ramRegions } from './boot/layout.js';
import { PIC_MASTER_VECTOR_BASE, PIC_SLAVE_VECTOR_BASE } from './devices/platform.js';
import { pcGsiRoutes, writeMpTable } from './firmware/mptable.js';
import { writeAcpiTables } from './firmware/acpi.js';
import { pciIntxGsi, PCI_MAX_SLOTS } from './devices/pci/pci-bus.js';
import type { VcpuDeviceSpec } from './devices/virtio/vcpu-devices.js';
import { NetSetup, type NetBootOptions } from './devices/net/net-setup.js';
import { pciTestdevSetup } from './devices/pci-testdev.js';
import type { VirtioNet } from './devices/net/virtio-net.js';
import { findMultibootHeader, loadMultiboot, type MultibootHeader } from './boot/multiboot.js';
import { fwCfgItems, loadFwCfgFiles, type FwCfgFileSource } from './devices/fw-cfg.js';
import { loadLinux, parseLinuxKernel, type LinuxKernel } from './boot/linux.js';
import { defaultHostParams } from './boot/host-params.js';
import type { BootCpuState } from './boot/cpu-state.js';
import { createSerialShared, Serial16550 } from './devices/serial.js';
import { MainLoop } from './loop/main-loop.js';
import { collectGarbage } from './util/collect-garbage.js';
import { GuestConsole } from './console.js';
import { createMailbox, kicker } from './vcpu/exit-forwarding.js';
import { CONTROL_CHECK_HALT, CONTROL_RUNNING, CONTROL_SAMPLE, CONTROL_STOP, CONTROL_TID, CONTROL_WORDS, exitStatusOf, type ExitKind, type ExitStats, type VcpuExitMessage, type VcpuWorkerData } from './vcpu/protocol.js';

export interface BootOptions {
  /** Path to a bzImage, vmlinux or multiboot image, or its bytes. */
  kernel: string | Uint8Array;
  /** Path to an initramfs, or its bytes. */
  initrd?: string | Uint8Array | null;
  /** The kernel command line (host parameters are appended, see `hostParams`). */
  cmdline?: string;
  /** Guest RAM in MiB (default 256). */
  memMiB?: number;
  /**
   * vCPUs (`--cpus`, default 1): one KVM vCPU and one worker thread each. The
   * first starts in the boot state; the others wait for the guest's INIT/SIPI.
   */
  cpus?: number;
  /** Parameters appended for Linux kernels only (a multiboot image gets its own name, a space and `cmdline`, as from QEMU). */
  linuxParams?: string[];
  /** Parameters appended for this host kind; default: `defaultHostParams` (none on hardware KVM). */
  hostParams?: string[];
  /** Wall-clock limit; the run ends with kind 'timeout' after it. */
  timeoutMs?: number;
  /** Sample guest RIP every N ms (boot profiling); results in `stats.ripSamples`. */
  sampleRipMs?: number;
  /** Device file, default /dev/kvm. */
  kvmPath?: string;
  /** A virtio-net NIC on a TAP (PCI slot 4): `{ tap: 'tap0', mac?, txBurst?, ioeventfd? }`. */
  net?: NetBootOptions;
  /**
   * More devices by name (`--device`): 'pci-testdev' (QEMU's PCI test device,
   * in PCI slots from 5 up) and 'pc-testdev' (QEMU's ISA test device, at fixed
   * ports and addresses, no slot, at most once); both for kvm-unit-tests.
   */
  devices?: DeviceName[];
  /**
   * A shell command for the guest's init (guest/init: the default guest's, or
   * any initramfs built with it) to run instead of a shell. The run ends with
   * the command's exit status (`VmExit.kind` 'command', `status`), or with a
   * status of its own when the guest panics, never reaches init, or times out
   * (COMMAND_EXIT). Linux kernels only.
   */
  command?: string;
  /** Host files and directories added to the initramfs for this run (`--add`). */
  addFiles?: HostFile[];
  /** Named files in the guest's fw_cfg directory (`--fw-cfg`): `{ name: 'opt/…', path }` or `{ name, data }`. */
  fwCfgFiles?: FwCfgFileSource[];
  /**
   * Complete guest SYSCALLs in userspace (src/vcpu/syscall-completion.ts):
   * 'auto' (default) does it where KVM leaves them half done (kvm_pvm); 'on'
   * forces it anywhere (tests of the mechanism on hardware KVM).
   */
  syscallCompletion?: 'auto' | 'on' | 'off';
  /**
   * ACPI tables and the PM block they describe (src/firmware/acpi.ts), on
   * unless 'off': kvm-unit-tests reads the FADT, and Linux with ACPI finds
   * PCI through the DSDT, the PM timer as a clock, and powers off by S5.
   * Linux always gets the MP table too (for kernels without ACPI, or acpi=off).
   */
  acpi?: 'auto' | 'on' | 'off';
  /**
   * Whether the in-kernel PIT re-injects ticks the guest missed (KVM's and
   * QEMU's default, 'on'); 'off' discards them, as QEMU's
   * `kvm-pit.lost_tick_policy=discard` (KVM_REINJECT_CONTROL).
   */
  pitReinject?: 'on' | 'off';
}

export interface VmExit {
  /** Process exit status the CLI uses: 0 for a guest reset/poweroff. */
  status: number;
  kind: ExitKind;
  code?: number;
  reason: string;
  stats: ExitStats;
  /** The NIC's counters at the end (packets, bytes, kicks, BH runs, interrupts, drops), when there was one. */
  net?: Record<string, unknown>;
}

export interface BootInfo {
  format: 'bzImage' | 'vmlinux' | 'multiboot';
  compression?: string;
  cmdline: string;
  hostKind: HostKind;
  hostParams: string[];
  memMiB: number;
  /** The guest's TSC frequency in kHz (KVM_GET_TSC_KHZ), 0 if unknown. */
  tscKhz: number;
}

const MIN_MEM_MIB = 8;
/** The most vCPUs tsvisor runs, below KVM's own limit: each is a thread with its own JavaScript heap. */
export const MAX_CPUS = 64;

/** Devices `--device` / BootOptions.devices can add. */
export const DEVICE_NAMES = ['pci-testdev', 'pc-testdev'] as const;
export type DeviceName = (typeof DEVICE_NAMES)[number];
/** The ISA ones: fixed ports and addresses, no PCI slot, so at most one each. */
const ISA_DEVICE_NAMES: readonly DeviceName[] = ['pc-testdev'];
/** The PCI ones' slots start here (3 and 4 are the NICs'). */
const FIRST_DEVICE_SLOT = 5;
/** How often to check whether the guest halted with interrupts off. */
const HALT_CHECK_MS = 250;

function readInput(what: string, value: string | Uint8Array): Uint8Array {
  if (typeof value !== 'string') return value;
  try {
    return readFileSync(value);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new TsvisorError(`${what} ${value} does not exist`, 2, `check the --${what} path`);
    if (code === 'EACCES') throw new TsvisorError(`${what} ${value} is not readable by this user`, 2, `make it readable, e.g. chmod a+r ${value}, or run as a user who can read it`);
    if (code === 'EISDIR') throw new TsvisorError(`${what} ${value} is a directory`, 2, `pass the ${what} file itself`);
    throw new TsvisorError(`cannot read ${what} ${value}: ${(e as Error).message}`, 2);
  }
}

/**
 * How long console output may wait in the UART's ring before it is written
 * out: one frame of a 60 Hz screen. Each drain is a main-loop wake-up and a
 * write(2); 4 ms left tsvisor at 2.2 % of a Linux boot, 16 ms at 1.7 %.
 */
const CONSOLE_COALESCE_MS = 16;

/** One vCPU as the main thread holds it: its worker thread, control words and kvm_run (for kicks). */
interface VcpuThread {
  vcpu: Vcpu;
  worker: Worker;
  control: Int32Array;
  /** Gets the vCPU out of KVM_RUN (src/vcpu/exit-forwarding.ts's kicker, as an AP kicks vcpu0). */
  kick: () => void;
  /** The worker's end, once it has reported (or died). */
  end?: VcpuExitMessage;
}

export class Vm {
  readonly console: GuestConsole;
  readonly exited: Promise<VmExit>;
  readonly info: BootInfo;
  private readonly threads: VcpuThread[];
  private readonly runPageSize: number;
  private finished = false;
  private timers: NodeJS.Timeout[] = [];

  private constructor(
    private readonly kvm: Kvm,
    private readonly kvmVm: KvmVm,
    vcpus: Vcpu[],
    private readonly ram: { address: bigint; size: number },
    workerData: VcpuWorkerData[],
    serial: Serial16550,
    private readonly loop: MainLoop,
    info: BootInfo,
    opts: BootOptions,
    private readonly netSetup: NetSetup | null = null,
    private readonly releaseDevices: () => void = () => {},
  ) {
    this.info = info;
    // A bottom half or fd callback that throws is a bug in tsvisor: stop the guest, report it, release everything.
    loop.onFault = (e, where) => this.stopOnBug(e, where);
    this.runPageSize = workerData[0].mmapSize;
    this.console = new GuestConsole((bytes) => {
      let off = 0;
      off += serial.receive(bytes);
      // Input beyond the UART's buffer waits for the guest to read.
      if (off < bytes.length) setTimeout(() => this.console.write(bytes.subarray(off)), 10);
    });
    const drain = () => this.console.feed(serial.tx.drain());
    // Serial output wakes the main loop through a doorbell the vCPU rings; a bottom half drains it.
    // The worker rings only when its push made the ring non-empty; a push that
    // races with drain() (sees the old tail) does not ring, so look again after draining.
    // The drain waits CONSOLE_COALESCE_MS after the ring: a guest prints a byte per
    // exit, and draining each one cost a wake-up and a write(2) per byte or two
    // (a fifth of tsvisor's CPU in a Linux boot); meanwhile the ring fills without ringing.
    let drainTimer: NodeJS.Timeout | undefined;
    const drainSoon = () => {
      drainTimer = undefined;
      drain();
      if (serial.tx.length > 0) drainBh.schedule();
    };
    const drainBh = loop.newBh('console', () => { drainTimer ??= setTimeout(drainSoon, CONSOLE_COALESCE_MS); });
    const consoleBell = loop.newDoorbell('console', drainBh);
    native().installKickHandler();
    this.threads = vcpus.map((vcpu, i) => {
      const data = { ...workerData[i], consoleDoorbellFd: consoleBell.fd };
      const control = new Int32Array(data.control);
      return { vcpu, worker: new Worker(new URL('./vcpu/worker.js', import.meta.url), { workerData: data }), control, kick: kicker(vcpu.run, () => Atomics.load(control, CONTROL_TID)) };
    });
    this.exited = new Promise<VmExit>((resolve) => {
      // The run ends with the first vCPU whose loop ends (the BSP's, unless an AP
      // triple-faults or fails); the others are stopped, and the run reports once all have.
      let first: VcpuExitMessage | undefined;
      const reported = (t: VcpuThread, m: VcpuExitMessage) => {
        if (t.end) return;
        t.end = m;
        if (!first) {
          first = m;
          this.stopVcpus();
        }
        if (this.threads.every((x) => x.end)) done({ ...first, stats: mergeStats(this.threads.map((x) => x.end!.stats)) });
      };
      const done = (m: VcpuExitMessage) => {
        if (this.finished) return;
        this.finished = true;
        clearTimeout(drainTimer);
        drain();
        for (const t of this.timers) clearTimeout(t);
        this.console.end(m.message);
        const net = this.net?.snapshot();
        if (m.stats.cpu) {
          // The vCPU thread has reported and is ending; its time is in the process totals.
          const { user, system } = process.cpuUsage();
          const c = m.stats.cpu;
          c.processUserMs = user / 1000;
          c.processSysMs = system / 1000;
          c.vmmMs = vmmCpuMs(c.processUserMs, c.processSysMs, c.vcpu);
        }
        this.release();
        if (opts.command !== undefined) {
          const end = commandEnd(m.kind, m.code, m.message, this.console.output);
          resolve({ status: end.status, kind: end.kind, code: end.kind === 'command' ? end.status : m.code, reason: end.reason, stats: m.stats, net });
          return;
        }
        resolve({ status: exitStatusOf(m.kind, m.code), kind: m.kind, code: m.code, reason: m.message, stats: m.stats, net });
      };
      for (const t of this.threads) {
        t.worker.on('message', (m: VcpuExitMessage) => {
          // A stop the VMM asked for keeps its reason, and where the vCPU was.
          if (this.pendingKind && m.kind === 'stopped') m = { ...m, kind: this.pendingKind, message: `${this.pendingMessage}${/ \(the vCPU was .*\)$/.exec(m.message)?.[0] ?? ''}` };
          reported(t, m);
        });
        t.worker.on('error', (e) => reported(t, { type: 'exit', kind: 'vmm-bug', message: bugReport('the vCPU thread', e), stats: emptyStats() }));
        t.worker.on('exit', () => reported(t, { type: 'exit', kind: 'error', message: 'vCPU thread ended without reporting', stats: emptyStats() }));
      }
    });
    if (opts.timeoutMs) {
      const t = setTimeout(() => this.requestStop('timeout', `no exit within ${opts.timeoutMs} ms (--timeout)`), opts.timeoutMs);
      this.timers.push(t);
    }
    // Notice a guest that halted for good (Linux's power-off without ACPI).
    this.timers.push(setInterval(() => this.kickAll(CONTROL_CHECK_HALT), HALT_CHECK_MS));
    if (opts.sampleRipMs) {
      const t = setInterval(() => this.kickAll(CONTROL_SAMPLE), opts.sampleRipMs);
      this.timers.push(t);
    }
  }

  private pendingKind: ExitKind | undefined;
  private pendingMessage = '';

  static async boot(opts: BootOptions): Promise<Vm> {
    const memMiB = opts.memMiB ?? 256;
    if (!Number.isInteger(memMiB) || memMiB < MIN_MEM_MIB) throw new TsvisorError(`--mem ${memMiB} is too small`, 2, `give at least ${MIN_MEM_MIB} MiB`);
    const memBytes = memMiB * MiB;
    const cpus = opts.cpus ?? 1;
    if (!Number.isInteger(cpus) || cpus < 1) throw usageError(`--cpus ${String(cpus)} is not a number of vCPUs`, 'write a whole number from 1, e.g. --cpus 2');
    const hostBytes = hostMemoryBytes();
    if (hostBytes > 0 && memBytes > hostBytes)
      throw new TsvisorError(`--mem ${memMiB} is more than this host has (${Math.floor(hostBytes / MiB)} MiB of RAM and swap)`, 2, 'lower --mem');
    const extraDevices = opts.devices ?? [];
    for (const name of extraDevices) {
      if (!DEVICE_NAMES.includes(name)) throw usageError(`unknown device "${String(name)}"`, `known devices: ${DEVICE_NAMES.join(', ')}`);
    }
    for (const name of ISA_DEVICE_NAMES) {
      const n = extraDevices.filter((d) => d === name).length;
      if (n > 1) throw usageError(`--device ${name} is given ${n} times`, `give it once: its ports and addresses are fixed`);
    }
    const pciDevices = extraDevices.filter((d) => !ISA_DEVICE_NAMES.includes(d));
    if (FIRST_DEVICE_SLOT + pciDevices.length > PCI_MAX_SLOTS) throw usageError(`${pciDevices.length} PCI devices do not fit on the PCI bus`, `give at most ${PCI_MAX_SLOTS - FIRST_DEVICE_SLOT}`);
    const pitReinject = opts.pitReinject ?? 'on';
    if (pitReinject !== 'on' && pitReinject !== 'off') throw usageError(`--pit-reinject ${String(pitReinject)} is not on or off`, 'write --pit-reinject on or --pit-reinject off');
    const kernelBytes = readInput('kernel', opts.kernel);
    let initrd = opts.initrd ? readInput('initrd', opts.initrd) : null;
    // A command and added files travel as a second archive after the initramfs.
    const extra = [...(opts.addFiles ?? [])];
    const additions = extra.length > 0 || opts.command !== undefined ? hostFilesArchive(extra, opts.command) : null;
    if (additions) {
      if (!initrd) throw usageError(opts.command !== undefined ? 'a command needs an initramfs with tsvisor\'s init' : '--add needs an initramfs to add to', 'use the default guest, or pass --initrd built with guest/init');
      initrd = appendArchive(initrd, additions);
    }
    const kernelName = typeof opts.kernel === 'string' ? opts.kernel : 'kernel';
    const fwCfgFiles = loadFwCfgFiles(opts.fwCfgFiles ?? []);
    // Recognize the kernel before taking anything from the host, so a file that
    // is not a kernel is reported as such even where /dev/kvm is missing.
    const mb = findMultibootHeader(kernelBytes);
    if (mb && additions) throw usageError('a command and --add need a Linux kernel; this is a multiboot image', 'pass a Linux kernel, or leave out the command and --add');
    const image: { multiboot: MultibootHeader } | { linux: LinuxKernel } = mb ? { multiboot: mb } : { linux: parseLinuxKernel(kernelBytes, kernelName) };

    const kvm = new Kvm(opts.kvmPath);
    // What was acquired so far, released in reverse if anything fails before the Vm exists.
    const undo: Array<() => void> = [() => kvm.close()];
    try {
      kvm.requireExtensions({
        KVM_CAP_IRQCHIP: abi.KVM_CAP_IRQCHIP, KVM_CAP_USER_MEMORY: abi.KVM_CAP_USER_MEMORY, KVM_CAP_SET_TSS_ADDR: abi.KVM_CAP_SET_TSS_ADDR,
        KVM_CAP_EXT_CPUID: abi.KVM_CAP_EXT_CPUID, KVM_CAP_PIT2: abi.KVM_CAP_PIT2, KVM_CAP_VCPU_EVENTS: abi.KVM_CAP_VCPU_EVENTS,
        KVM_CAP_IMMEDIATE_EXIT: abi.KVM_CAP_IMMEDIATE_EXIT,
      });
      // KVM's limit (MAX_VCPUS, or NR_VCPUS on kernels without it; 4 if neither answers, as the API says).
      const kvmMax = kvm.checkExtension(abi.KVM_CAP_MAX_VCPUS) || kvm.checkExtension(abi.KVM_CAP_NR_VCPUS) || 4;
      const maxCpus = Math.min(kvmMax, MAX_CPUS);
      if (cpus > maxCpus) throw usageError(`--cpus ${cpus} is more than tsvisor runs here (at most ${maxCpus}: KVM allows ${kvmMax}, tsvisor ${MAX_CPUS})`, `give --cpus ${maxCpus} or fewer`);
      const vm = new KvmVm(kvm);
      undo.push(() => vm.close());
      // Guest RAM: one anonymous shared mapping, registered in slots of at most 2 GiB
      // so that each has a JavaScript view.
      let ramAddress: bigint;
      try {
        ramAddress = libc.mmap(memBytes, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED | libc.MAP_ANONYMOUS | libc.MAP_NORESERVE);
      } catch (e) {
        throw new TsvisorError(`cannot allocate ${memMiB} MiB of guest RAM: ${(e as Error).message}`, 2, 'lower --mem');
      }
      undo.push(() => libc.munmap(ramAddress, memBytes));
      const ram: VcpuWorkerData['ram'] = [];
      let hostOff = 0;
      for (const r of ramRegions(memBytes)) {
        for (let off = 0; off < r.size; off += 2 * GiB) {
          const size = Math.min(2 * GiB, r.size - off);
          const hostAddress = ramAddress + BigInt(hostOff);
          vm.setUserMemoryRegion(r.gpa + off, size, hostAddress);
          ram.push({ gpa: r.gpa + off, size, hostAddress });
          hostOff += size;
        }
      }
      const mem = new GuestMemory(ram.map((r) => ({ gpa: r.gpa, hostAddress: r.hostAddress, bytes: new Uint8Array(libc.view(r.hostAddress, r.size)) })));
      vm.setTssAddr(KVM_TSS_ADDR);
      vm.setIdentityMapAddr(KVM_IDENTITY_MAP_ADDR);
      vm.createIrqchip();
      vm.setPicVectorBases(PIC_MASTER_VECTOR_BASE, PIC_SLAVE_VECTOR_BASE);
      // The PC's wiring (PIT on IOAPIC pin 2), which the MP table describes.
      vm.setGsiRouting(pcGsiRoutes());
      vm.createPit2();
      // Re-injection is KVM's default: only 'off' needs the ioctl (as QEMU calls it only for lost_tick_policy=discard).
      if (pitReinject === 'off') {
        if (kvm.checkExtension(abi.KVM_CAP_REINJECT_CONTROL) <= 0) throw new TsvisorError('this host\'s KVM lacks KVM_CAP_REINJECT_CONTROL, which --pit-reinject off needs', 1, 'leave out --pit-reinject off, or use a newer kernel');
        vm.reinjectControl(false);
      }

      // PCI devices (register exits on the vCPU thread, see VcpuWorkerData.devices).
      const devices: VcpuDeviceSpec[] = [];

      let netSetup: NetSetup | null = null;
      if (opts.net) {
        const slot = 4;
        const setup = new NetSetup(opts.net, slot, pciIntxGsi(slot), cpus);
        netSetup = setup;
        undo.push(() => setup.close());
        devices.push(setup.spec);
      }
      const deviceClosers: Array<() => void> = [];
      pciDevices.forEach((_name, i) => {
        // 'pci-testdev' is the only PCI name so far.
        const d = pciTestdevSetup(FIRST_DEVICE_SLOT + i);
        undo.push(d.close);
        deviceClosers.push(d.close);
        devices.push(d.spec);
      });

      // vCPU 0 is the boot processor (KVM's default BSP); with the in-kernel LAPIC the others wait for INIT/SIPI.
      const mmapSize = kvm.vcpuMmapSize();
      const vcpus: Vcpu[] = [];
      for (let id = 0; id < cpus; id++) {
        const fd = vm.createVcpuFd(id);
        undo.push(() => libc.close(fd));
        const v = new Vcpu(fd, mmapSize);
        undo.push(() => libc.munmap(v.runAddress, mmapSize));
        vcpus.push(v);
      }
      const vcpu = vcpus[0];
      const supportedCpuid = kvm.supportedCpuid();
      const tscKhz = Math.max(0, libc.ioctl(vcpu.fd, abi.KVM_GET_TSC_KHZ, 0));

      // Load the kernel by what it is.
      let cpu: BootCpuState;
      let info: BootInfo;
      const hostParams = opts.hostParams ?? defaultHostParams(kvm.hostKind, tscKhz);
      if ('multiboot' in image) {
        // --initrd is module 0 (kvm-unit-tests reads its environment there), named by its path.
        const module = initrd ? { data: initrd, name: typeof opts.initrd === 'string' ? opts.initrd : 'initrd' } : null;
        const loaded = loadMultiboot(mem, memBytes, kernelBytes, image.multiboot, { cmdline: opts.cmdline ?? '', kernelName, module });
        cpu = loaded;
        info = { format: 'multiboot', cmdline: loaded.cmdline, hostKind: kvm.hostKind, hostParams: [], memMiB, tscKhz };
      } else {
        const kernel = image.linux;
        const cmdline = [opts.cmdline ?? '', ...(opts.linuxParams ?? []), ...hostParams].filter((s) => s.length > 0).join(' ');
        cpu = loadLinux(mem, memBytes, kernel, cmdline, initrd);
        const leaf1 = supportedCpuid.find((e) => e.function === 1);
        writeMpTable(mem, MPTABLE_ADDR, {
          cpus, cpuSignature: leaf1?.eax ?? 0, cpuFeatures: leaf1?.edx ?? 0,
          pciIrqs: devices.map((d) => ({ slot: d.pciSlot, pin: 1, gsi: pciIntxGsi(d.pciSlot) })),
        });
        info = { format: kernel.format, compression: kernel.compression, cmdline, hostKind: kvm.hostKind, hostParams, memMiB, tscKhz };
      }
      const acpi = (opts.acpi ?? 'auto') !== 'off';

      // In the BIOS area below the MP table, where a guest scans for the RSDP.
      if (acpi) writeAcpiTables(mem, BIOS_AREA_START, { apicIds: vcpus.map((_v, id) => id) });

      vcpus.forEach((v, id) => {
        // Each vCPU's CPUID names its own APIC id (= KVM's vCPU id).
        const cpuid = vcpuCpuid(supportedCpuid, id, kvm.hostKind, cpus);
        v.setCpuid(cpuid);
        // XCR0 as the guest will set it, so that KVM's copy agrees even where the XSETBV exit is lost (bootXcr0 says why).
        const xcr0 = bootXcr0(cpuid, kvm.hostKind);
        if (xcr0 !== null) kvm.setVcpuXcr0(v.fd, xcr0);
        // LINT0 ExtINT and LINT1 NMI on the BSP, as the BIOS leaves them under QEMU; Linux programs the APs' itself.
        if (id === 0) v.setupLapicLints();
      });
      vcpu.setSregs(cpu.sregs);
      vcpu.setRegs(cpu.regs);

      const serialShared = createSerialShared();
      // The main thread's view of the UART raises the receive interrupt for typed input.
      const serial = new Serial16550(serialShared, (level) => vm.irqLine(4, level));
      const loop = new MainLoop();
      undo.push(() => loop.close());
      // The NIC's data path runs on this loop; its doorbell fds go to the worker in the device spec.
      netSetup?.start(loop, mem, vm);
      const bspControl = new SharedArrayBuffer(CONTROL_WORDS * 4);
      const smp = cpus > 1 ? { mailbox: createMailbox(cpus), bspVcpuFd: vcpu.fd, bspControl } : undefined;
      const syscallCompletion = opts.syscallCompletion === 'on' || ((opts.syscallCompletion ?? 'auto') === 'auto' && kvm.hostKind === 'kvm_pvm');
      const data: VcpuWorkerData[] = vcpus.map((v, id) => ({
        vcpuId: id, vcpuFd: v.fd, vmFd: vm.fd, mmapSize, ram, serial: serialShared,
        control: id === 0 ? bspControl : new SharedArrayBuffer(CONTROL_WORDS * 4),
        consoleDoorbellFd: -1, hostKind: kvm.hostKind, syscallCompletion, smp,
        // The devices: on the BSP's thread only (src/vcpu/exit-forwarding.ts).
        ...(id === 0 ? {
          devices,
          acpi,
          pcTestdev: extraDevices.includes('pc-testdev'),
          // Every guest gets fw_cfg, as under QEMU (kvm-unit-tests needs its CPU count).
          fwCfg: fwCfgItems({ ramBytes: memBytes, cpus, files: fwCfgFiles }),
        } : {}),
      }));
      // Once boot() has returned, its copies of the kernel and initrd are garbage: collect them then.
      setImmediate(collectGarbage);
      return new Vm(kvm, vm, vcpus, { address: ramAddress, size: memBytes }, data, serial, loop, info, opts, netSetup, () => deviceClosers.forEach((close) => close()));
    } catch (e) {
      for (const release of undo.reverse()) {
        try {
          release();
        } catch {
          /* keep releasing the rest */
        }
      }
      throw e;
    }
  }

  private kick(t: VcpuThread): void {
    if (!this.finished && !t.end) t.kick();
  }

  /** Sets a control word of every vCPU and kicks them all to look at it. */
  private kickAll(word: number): void {
    for (const t of this.threads) {
      Atomics.store(t.control, word, 1);
      this.kick(t);
    }
  }

  private requestStop(kind: ExitKind, message: string): void {
    if (this.finished) return;
    if (!this.pendingKind) {
      this.pendingKind = kind;
      this.pendingMessage = message;
    }
    this.stopVcpus();
  }

  /** Tells every vCPU to leave its loop, and kicks each until it has (a kick can land before it enters KVM_RUN). */
  private stopVcpus(): void {
    for (const t of this.threads) {
      Atomics.store(t.control, CONTROL_STOP, 1);
      const tryKick = () => {
        if (this.finished || t.end) return;
        this.kick(t);
        if (Atomics.load(t.control, CONTROL_RUNNING) !== 0 || Atomics.load(t.control, CONTROL_TID) === 0) this.timers.push(setTimeout(tryKick, 20));
      };
      tryKick();
    }
  }

  /**
   * Stops the guest because tsvisor's own code threw (`where` it ran): the run
   * ends with kind 'vmm-bug', status 70, and one line naming the error.
   */
  stopOnBug(error: unknown, where: string): void {
    this.requestStop('vmm-bug', bugReport(where, error));
  }

  /** Stops the guest and releases everything; resolves with the exit. */
  async stop(): Promise<VmExit> {
    this.requestStop('stopped', 'stopped by the VMM');
    return this.exited;
  }

  /** The virtio-net data path (counters: `net.snapshot()`), when BootOptions.net was given. */
  get net(): VirtioNet | null {
    return this.netSetup?.net ?? null;
  }

  private release(): void {
    for (const t of this.threads) void t.worker.terminate();
    this.netSetup?.close();
    this.releaseDevices();
    this.loop.close();
    for (const t of this.threads) {
      libc.munmap(t.vcpu.runAddress, this.runPageSize);
      libc.close(t.vcpu.fd);
    }
    this.kvmVm.close();
    this.kvm.close();
    libc.munmap(this.ram.address, this.ram.size);
  }
}

/**
 * One run's statistics from every vCPU's: exits and fix-ups summed, the
 * per-port and per-region counts from the BSP (whose buses also count the
 * APs' forwarded accesses), CPU time summed over the vCPU threads, and each
 * vCPU's own exits under `vcpus`.
 */
function mergeStats(all: ExitStats[]): ExitStats {
  const [bsp, ...aps] = all;
  if (aps.length === 0) return bsp;
  const sum = (maps: Array<Record<string, number> | undefined>) => {
    const out: Record<string, number> = {};
    for (const m of maps) for (const [k, n] of Object.entries(m ?? {})) out[k] = (out[k] ?? 0) + n;
    return out;
  };
  const merged: ExitStats = {
    ...bsp,
    exitsByReason: sum(all.map((s) => s.exitsByReason)),
    fixups: sum(all.map((s) => s.fixups)),
    totalExits: all.reduce((n, s) => n + s.totalExits, 0),
    ripSamples: all.some((s) => s.ripSamples) ? sum(all.map((s) => s.ripSamples)) : undefined,
    vcpus: all.map((s, id) => ({ id, totalExits: s.totalExits, exitsByReason: s.exitsByReason, cpu: s.cpu?.vcpu })),
  };
  if (all.every((s) => s.cpu)) {
    const vcpu = { userMs: 0, sysMs: 0, guestMs: 0 };
    for (const s of all) {
      vcpu.userMs += s.cpu!.vcpu.userMs;
      vcpu.sysMs += s.cpu!.vcpu.sysMs;
      vcpu.guestMs += s.cpu!.vcpu.guestMs;
    }
    merged.cpu = { ...bsp.cpu!, vcpu };
  }
  if (aps.some((s) => s.syscalls) && bsp.syscalls) {
    const sc = { ...bsp.syscalls };
    for (const s of aps) {
      if (!s.syscalls) continue;
      sc.completed += s.syscalls.completed;
      sc.faultsStepped += s.syscalls.faultsStepped;
      sc.debugReinjected += s.syscalls.debugReinjected;
      sc.handlerChanges += s.syscalls.handlerChanges;
    }
    merged.syscalls = sc;
  }
  return merged;
}

function emptyStats(): ExitStats {
  return { exitsByReason: {}, pioByPort: {}, mmioByRegion: {}, fixups: {}, unclaimedPio: 0, unclaimedMmio: 0, totalExits: 0, runMs: 0 };
}
