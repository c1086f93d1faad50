// Entry point of a vCPU worker_thread: rebuilds guest memory and the vCPU from
// what the main thread passed, puts the devices on the buses (the boot
// processor's thread owns them all; an AP's buses forward every access to it,
// src/vcpu/exit-forwarding.ts), runs the loop, and reports how the run ended.
import { parentPort, workerData } from 'node:worker_threads';
import * as libc from '../sys/libc.js';
import { native } from '../native.js';
import { Vcpu } from '../kvm/vcpu.js';
import { VmHandle } from '../kvm/vm.js';
import { GuestMemory } from '../memory/guest-memory.js';
import { MmioBus, PioBus } from '../bus/io-bus.js';
import { Serial16550, COM1_BASE, COM1_IRQ } from '../devices/serial.js';
import { DebugExit, DEBUG_EXIT_IOSIZE, DEBUG_EXIT_PORT, I8042, Sink, type MachineEvent } from '../devices/platform.js';
import { FwCfg, FW_CFG_PORT_SEL } from '../devices/fw-cfg.js';
import { AcpiPm, ACPI_PM_BASE, ACPI_PM_LENGTH } from '../devices/acpi-pm.js';
import { CmosRtc, RTC_INDEX_PORT } from '../devices/cmos-rtc.js';
import { facsAddress } from '../firmware/acpi.js';
import { BIOS_AREA_START } from '../boot/layout.js';
import { SuspendToRam } from './suspend.js';
import { attachPcTestdev, madvisePageFlusher } from '../devices/pc-testdev.js';
import { DoorbellRinger } from '../loop/bottom-half.js';
import { RunLoop } from './run-loop.js';
import { SyscallCompletion } from './syscall-completion.js';
import { nameThread, threadCpu } from '../util/thread-cpu.js';
import { bugReport } from '../errors.js';
import { createPciDevices } from '../devices/virtio/vcpu-devices.js';
import { ForwardedDevice, forwardAll, kicker, MailboxServer } from './exit-forwarding.js';
import { CONTROL_CHECK_HALT, CONTROL_RUNNING, CONTROL_SAMPLE, CONTROL_STOP, CONTROL_TID, type VcpuExitMessage, type VcpuWorkerData } from './protocol.js';

// Every native buffer this thread makes is unmapped when it ends (below).
libc.trackThreadBuffers();
const data = workerData as VcpuWorkerData;
const control = new Int32Array(data.control);
Atomics.store(control, CONTROL_TID, native().currentThreadId());
nameThread(`vcpu${data.vcpuId}`);
const isBsp = data.vcpuId === 0;

const mem = new GuestMemory(data.ram.map((r) => ({ gpa: r.gpa, hostAddress: r.hostAddress, bytes: new Uint8Array(libc.view(r.hostAddress, r.size)) })));
const vcpu = new Vcpu(data.vcpuFd, data.mmapSize);
const vm = new VmHandle(data.vmFd);
const pio = new PioBus();
const mmio = new MmioBus();

let loop: RunLoop;
// An AP: every port and address forwarded to the BSP's thread, which owns the devices.
let forwarded: ForwardedDevice | undefined;
let bspRun: { address: bigint; size: number } | undefined;
if (!isBsp) {
  if (!data.smp) throw new Error(`vCPU ${data.vcpuId} started without the SMP mailbox`);
  // vcpu0's kvm_run, for its immediate_exit byte.
  bspRun = { address: libc.mmap(data.mmapSize, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, data.smp.bspVcpuFd, 0), size: data.mmapSize };
  const bspControl = new Int32Array(data.smp.bspControl);
  const kickBsp = kicker(new DataView(libc.view(bspRun.address, bspRun.size)), () => Atomics.load(bspControl, CONTROL_TID));
  forwarded = new ForwardedDevice(data.smp.mailbox, data.vcpuId, kickBsp, () => Atomics.load(control, CONTROL_STOP) !== 0);
  forwardAll(pio, mmio, forwarded);
}
const onEvent = (e: MachineEvent) => {
  if (e.kind === 'reset') loop.finish({ kind: 'reset', message: 'the guest reset the machine' });
  else if (e.kind === 'poweroff') loop.finish({ kind: 'poweroff', message: 'the guest powered off (ACPI S5)' });
  else loop.finish({ kind: 'debug-exit', code: e.code, message: `the guest wrote 0x${e.code.toString(16)} to the debug-exit port` });
};

const consoleBell = new DoorbellRinger(data.consoleDoorbellFd);
if (isBsp) {
  const serial = new Serial16550(
    data.serial,
    (level) => vm.irqLine(COM1_IRQ, level),
    // Ring only when this byte made the ring non-empty: the reader drains all of it.
    () => { if (serial.tx.length === 1) consoleBell.ring(); },
  );
  pio.register(serial, COM1_BASE, 8);
  const i8042 = new I8042(onEvent);
  pio.register(i8042, 0x60, 1);
  pio.register(i8042, 0x64, 1);
  pio.register(new DebugExit(onEvent), DEBUG_EXIT_PORT, DEBUG_EXIT_IOSIZE);
  pio.register(new Sink('post'), 0x80, 1);
  // fw_cfg: the selector and data ports.
  if (data.fwCfg) pio.register(new FwCfg(data.fwCfg), FW_CFG_PORT_SEL, 2);
  // The RTC and CMOS RAM: the time of day, and the alarm that wakes the machine from S3.
  const rtc = new CmosRtc();
  pio.register(rtc, RTC_INDEX_PORT, 2);
  // The ACPI PM block the FADT names: PM timer, power-off and suspend to RAM through PM1a control.
  if (data.acpi) {
    const pm: AcpiPm = new AcpiPm(() => onEvent({ kind: 'poweroff' }), undefined, () => loop.sleep(s3));
    const s3 = new SuspendToRam(vcpu, mem, facsAddress(BIOS_AREA_START), pm, rtc);
    pio.register(pm, ACPI_PM_BASE, ACPI_PM_LENGTH);
  }
  // QEMU's ISA test device: scratch and flush ports, IRQ lines through KVM_IRQ_LINE, 64 KiB of MMIO at 0xff000000.
  if (data.pcTestdev) attachPcTestdev({ pio, mmio }, vm, madvisePageFlusher(data.ram));
  // PCI: host bridge and devices at 0xCF8-0xCFF, their BARs on the buses.
  createPciDevices(data.devices ?? [], { pio, mmio }, { mem, irq: vm, vm });
}
// The BSP answers the APs' forwarded exits with the buses it just filled.
const server = isBsp && data.smp ? new MailboxServer(data.smp.mailbox, pio, mmio) : undefined;

const syscalls = data.syscallCompletion ? new SyscallCompletion(vcpu, mem) : null;
loop = new RunLoop(vcpu, mem, pio, mmio, control, CONTROL_STOP, CONTROL_SAMPLE, CONTROL_CHECK_HALT, syscalls, { server, forwarded, vcpuId: data.smp ? data.vcpuId : undefined, pollStart: data.hostKind === 'kvm_pvm' });
Atomics.store(control, CONTROL_RUNNING, 1);
let message: VcpuExitMessage;
try {
  const end = loop.loop();
  message = { type: 'exit', ...end, stats: loop.stats((p) => pio.lookup(p)?.name ?? 'unclaimed', mmio.ranges.map((r) => r.device.name)) };
} catch (e) {
  message = { type: 'exit', kind: 'vmm-bug', message: bugReport('the vCPU thread', e), stats: loop.stats(() => '', []) };
}
Atomics.store(control, CONTROL_RUNNING, 0);
// No AP waits for an answer from a BSP that has stopped.
server?.close();
try {
  message.stats.cpu = { vcpu: threadCpu(), processUserMs: 0, processSysMs: 0, vmmMs: 0 };
} catch {
  /* no procfs: no CPU figures */
}
// Flush any console bytes the reader has not seen yet.
consoleBell.ring();
// Unmap what this thread mapped: its kvm_run mapping holds the vCPU file, and
// with it the whole KVM VM (PIT thread included), after the main thread closed
// its fds; native buffers get no finalizers when a thread ends.
libc.munmap(vcpu.runAddress, data.mmapSize);
if (bspRun) libc.munmap(bspRun.address, bspRun.size);
libc.releaseThreadBuffers();
parentPort!.postMessage(message);
