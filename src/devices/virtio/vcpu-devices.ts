// The vCPU worker's side of PCI devices: builds the PCI bus (host bridge on
// 0xCF8-0xCFF) and, for each device the main thread described in workerData,
// its vCPU-side virtio device and virtio-pci transport.
//
// A device kind maps to a factory of its `VirtioDeviceVcpuSide`.
// PCI functions that are not virtio (pci-testdev) have factories of their own
// (`plainPciFactories`) and get no transport.
import type { MmioBus, PioBus } from '../../bus/io-bus.js';
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { VmHandle } from '../../kvm/vm.js';
import { DoorbellRinger } from '../../loop/bottom-half.js';
import { PciBus } from '../pci/pci-bus.js';
import type { PciDevice } from '../pci/config-space.js';
import { PciTestdev } from '../pci-testdev.js';
import { TransportState } from './transport-state.js';
import type { IrqSink } from './interrupt-sender.js';
import type { VirtioDeviceVcpuSide } from './virtio-device.js';
import { VirtioPciDevice } from './virtio-pci.js';
import { pcGsiRoutes } from '../../firmware/mptable.js';
import { GuestErrorLog } from './guest-error-log.js';
import { VirtioNetVcpu, type VirtioNetVcpuData } from '../net/virtio-net-vcpu.js';

/** A device the main thread asks the worker to put on the PCI bus (part of VcpuWorkerData). */
export interface VcpuDeviceSpec {
  kind: string;
  /** PCI slot on bus 0 (1-31); fixes its INTx GSI (pciIntxGsi) and its place in the MP table. */
  pciSlot: number;
  /** The device's TransportState buffer (createTransportState); virtio devices only. */
  sharedState?: SharedArrayBuffer;
  /**
   * eventfds of main-loop doorbells. 'reset': the transport rings it when the
   * driver resets the device (the main thread then resets its queues and
   * acknowledges, see MainResetHandshake). Device kinds add their own.
   */
  doorbellFds: Record<string, number>;
  /** Device-specific shared state (e.g. virtio-net's config buffer). */
  deviceState?: SharedArrayBuffer;
  /** Device-specific plain options (structured-cloneable). */
  options?: Record<string, unknown>;
  /**
   * --ioeventfd: per queue, the eventfd KVM signals on that queue's notify
   * write instead of exiting to userspace (the main thread's doorbell fds).
   */
  ioeventfdFds?: number[];
  /**
   * --ioeventfd: MSI-X vector v is delivered through an irqfd on GSI
   * `gsiBase + v`; the worker keeps those GSIs' routes equal to the table.
   */
  irqfdGsiBase?: number;
}

export interface VcpuDeviceContext {
  mem: GuestMemory;
  irq: IrqSink;
  /** For KVM_IOEVENTFD bindings (devices described with `ioeventfdFds`). */
  vm?: VmHandle;
}

export type VcpuDeviceFactory = (spec: VcpuDeviceSpec, state: TransportState, ctx: VcpuDeviceContext) => VirtioDeviceVcpuSide;

/**
 * Device kinds the worker can build. A fixed table: the worker runs its own
 * copy of every module, so a kind registered at run time on the main thread
 * would never be seen here.
 */
const factories = new Map<string, VcpuDeviceFactory>([
  // The real virtio-net: spec.options.net is its VirtioNetVcpuData; its doorbells are rung from the exit path.
  ['virtio-net', (spec, state, ctx) => {
    const data = spec.options?.net as VirtioNetVcpuData;
    const f = data.doorbellFds;
    const dev = new VirtioNetVcpu(ctx.mem, data, { queues: f.queues.map((fd) => new DoorbellRinger(fd)), control: new DoorbellRinger(f.control) });
    dev.attach(state);
    return dev;
  }],
]);

/** PCI functions without a virtio transport, built from their spec alone. */
const plainPciFactories = new Map<string, (spec: VcpuDeviceSpec, ctx: VcpuDeviceContext) => PciDevice>([
  ['pci-testdev', (spec, ctx) => PciTestdev.fromSpec(spec, ctx)],
]);

/** Creates the PCI bus on `pio`/`mmio` and plugs in every described device. */
export function createPciDevices(specs: VcpuDeviceSpec[], buses: { pio: PioBus; mmio: MmioBus }, ctx: VcpuDeviceContext): { bus: PciBus; devices: VirtioPciDevice[] } {
  const bus = new PciBus(buses);
  bus.register();
  const devices: VirtioPciDevice[] = [];
  for (const spec of specs) {
    const plain = plainPciFactories.get(spec.kind);
    if (plain) {
      bus.plug(plain(spec, ctx), spec.pciSlot);
      continue;
    }
    const factory = factories.get(spec.kind);
    if (!factory) throw new Error(`no vCPU-side factory for device kind '${spec.kind}'`);
    if (!spec.sharedState) throw new Error(`virtio device kind '${spec.kind}' has no sharedState`);
    const state = new TransportState(spec.sharedState);
    const device = factory(spec, state, ctx);
    const fd = spec.doorbellFds.reset;
    const bell = fd !== undefined && fd >= 0 ? new DoorbellRinger(fd) : null;
    const vm = ctx.vm;
    const gsiBase = spec.irqfdGsiBase;
    const log = new GuestErrorLog(device.name);
    const failures = bindingFailures(log);
    const onMsixMessageChanged = vm && gsiBase !== undefined
      ? () => failures.guard('MSI-X route update', () => vm.setGsiRouting([...pcGsiRoutes(), ...msixRoutes(state, gsiBase)]))
      : undefined;
    const pci = new VirtioPciDevice({ device, state, mem: ctx.mem, irq: ctx.irq, ringReset: bell ? () => bell.ring() : () => {}, onMsixMessageChanged, log });
    bus.plug(pci, spec.pciSlot);
    if (spec.ioeventfdFds && ctx.vm) followNotifyIoeventfds(pci, ctx.vm, spec.ioeventfdFds, failures);
    devices.push(pci);
  }
  return { bus, devices };
}

/** Per device: guest-triggered KVM bindings (MSI routes, ioeventfds) that failed. */
export interface BindingFailures {
  count: number;
  lastError: string;
  /** Runs `what`; an exception is counted and logged (rate-limited), never thrown into the exit loop. */
  guard(what: string, f: () => void): void;
}

/**
 * A guest moving a BAR or rewriting an MSI-X entry makes the vCPU thread
 * re-issue KVM ioctls (KVM_SET_GSI_ROUTING, KVM_IOEVENTFD). One that fails
 * (an ENOSPC from KVM, an address KVM refuses) is the guest's doing or the
 * host's limit, not a reason to end the exit loop: the guest keeps running
 * with the old binding, and the failure is counted and logged once per burst.
 */
export function bindingFailures(log: GuestErrorLog): BindingFailures {
  const f: BindingFailures = {
    count: 0,
    lastError: '',
    guard(what, fn) {
      try {
        fn();
      } catch (e) {
        f.count++;
        f.lastError = `${what}: ${(e as Error).message}`;
        if (log.admit()) log.write(`${f.lastError} (the guest keeps running with the previous binding)`);
      }
    },
  };
  return f;
}

/**
 * Keeps `pci`'s queue notifies bound to `fds` (one per queue) wherever the
 * guest maps its BARs; a rebind KVM refuses is counted in `failures`, never
 * thrown into the exit loop. Exported so the PCI fuzz drives the same path
 * against a fake KVM.
 */
export function followNotifyIoeventfds(pci: VirtioPciDevice, vm: Pick<VmHandle, 'ioeventfd'>, fds: number[], failures: BindingFailures): void {
  const rebind = notifyIoeventfds(vm, fds);
  pci.followNotifyAddresses((dev) => failures.guard('ioeventfd rebind', () => rebind(dev)));
}

/**
 * Binds each queue's notify write to its eventfd with KVM_IOEVENTFD, on the
 * modern notify address (a 2-byte write, one address per queue) and the
 * legacy QUEUE_NOTIFY port (2 bytes, matched on the queue index); rebinds
 * when the guest moves a BAR. The write then never leaves the kernel.
 */
function notifyIoeventfds(vm: Pick<VmHandle, 'ioeventfd'>, fds: number[]): (dev: VirtioPciDevice) => void {
  let bound: Array<{ addr: number; len: number; eventfd: number; pio?: boolean; datamatch?: number }> = [];
  return (dev) => {
    // Each binding on its own: one KVM refuses must not leave the others stale.
    // Notifies whose binding failed still exit to userspace and work (slower).
    let firstError: unknown = null;
    for (const b of bound) {
      try { vm.ioeventfd({ ...b, deassign: true }); } catch (e) { firstError ??= e; }
    }
    const wanted: typeof bound = [];
    fds.forEach((eventfd, queue) => {
      const { legacyPort, modernGpa } = dev.notifyAddresses(queue);
      if (modernGpa >= 0) wanted.push({ addr: modernGpa, len: 2, eventfd });
      if (legacyPort >= 0) wanted.push({ addr: legacyPort, len: 2, eventfd, pio: true, datamatch: queue });
    });
    bound = [];
    for (const b of wanted) {
      try {
        vm.ioeventfd(b);
        bound.push(b);
      } catch (e) {
        firstError ??= e;
      }
    }
    if (firstError !== null) throw firstError;
  };
}

/** One MSI route per MSI-X vector, carrying the message the guest programmed (irqfd delivers through them). */
export function msixRoutes(state: TransportState, gsiBase: number): Array<{ gsi: number; type: 'msi'; addressLo: number; addressHi: number; data: number }> {
  const routes = [];
  for (let v = 0; v < state.msixVectors; v++) {
    routes.push({ gsi: gsiBase + v, type: 'msi' as const, addressLo: state.msix.entryWord(v, 0), addressHi: state.msix.entryWord(v, 1), data: state.msix.entryWord(v, 2) });
  }
  return routes;
}
