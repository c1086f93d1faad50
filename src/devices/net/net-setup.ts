// Wiring virtio-net into a machine (main thread): opens the TAP, lays out the
// shared state, describes the device for the vCPU worker (a VcpuDeviceSpec of
// kind 'virtio-net', built there by vcpu-devices.ts), and once the main loop
// exists, starts the data path (VirtioNet) with an InterruptSender of its own.
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { MainLoop } from '../../loop/main-loop.js';
import { DoorbellRinger } from '../../loop/bottom-half.js';
import type { VmHandle } from '../../kvm/vm.js';
import { close, eventfd, errno, SyscallError, EFD_CLOEXEC } from '../../sys/libc.js';
import { Tap, type NetBackend } from '../../net/tap.js';
import { createTransportState, TransportState } from '../virtio/transport-state.js';
import { InterruptSender, type IrqSink } from '../virtio/interrupt-sender.js';
import type { VcpuDeviceSpec } from '../virtio/vcpu-devices.js';
import { offeredFeatureSet, VIRTIO_F_VERSION_1 } from './virtio-net-features.js';
import { FeatureSet } from '../virtio/feature-set.js';
import { VirtioNetConfig, netQueueCount, netQueueSizes } from './virtio-net-config.js';
import { VirtioNet } from './virtio-net.js';
import { defaultQueuePairs, resolveNetOptions, type ResolvedNetOptions, type VirtioNetOptions } from './virtio-net-options.js';
import { TsvisorError } from '../../errors.js';
import type { VirtioNetVcpuData } from './virtio-net-vcpu.js';

export interface NetBootOptions extends VirtioNetOptions {
  /** TAP interface name to open (created if missing, needs CAP_NET_ADMIN), or a backend opened already (e.g. inside a namespace). */
  tap: string | NetBackend;
  /**
   * Bind queue notifications to KVM ioeventfds: the guest's notify write
   * signals the queue's doorbell eventfd inside the kernel, with no exit to
   * userspace, and the main loop's bottom half does the rest. Default: the
   * exit path (the write exits and handle_tx runs on the vCPU thread).
   */
  ioeventfd?: boolean;
  /**
   * Deliver MSI-X interrupts through irqfds, as QEMU does with KVM (default
   * true): the main loop writes an eventfd and KVM injects the message the
   * vector's route holds. false: one KVM_SIGNAL_MSI ioctl per interrupt from
   * the main thread, which measured ~9 % fewer TX frames/s (docs/performance.md).
   */
  msiViaIrqfd?: boolean;
  /**
   * Told once, in one line, when the TAP goes away under the running guest
   * (deleted on the host). The guest keeps running with its link down.
   */
  onBackendLost?: (message: string) => void;
}

/** How often the TAP's host-side state is looked at. */
const LINK_POLL_MS = 500;

/** GSIs of the irqfd routes, above the IOAPIC's 24 pins. */
const IRQFD_GSI_BASE = 32;


export class NetSetup {
  readonly spec: VcpuDeviceSpec;
  readonly state: TransportState;
  readonly config: VirtioNetConfig;
  readonly backend: NetBackend;
  private readonly ownsBackend: boolean;
  private readonly vcpuData: VirtioNetVcpuData;
  /** The options, validated once. */
  private readonly resolved: ResolvedNetOptions;
  private device: VirtioNet | null = null;
  private irqfds: number[] = [];
  private linkTimer: NodeJS.Timeout | undefined;
  /** MSI-X vectors: one per queue plus config (QEMU's virtio-net: 2 * pairs + 2). */
  private readonly msixVectors: number;

  /**
   * Validates options and opens the TAP (TsvisorError on anything a user can
   * fix). `cpus` sizes the default number of queue pairs.
   */
  constructor(readonly opts: NetBootOptions, pciSlot: number, intxGsi: number, cpus = 1) {
    const o = resolveNetOptions(opts);
    this.resolved = o;
    this.ownsBackend = typeof opts.tap === 'string';
    this.backend = typeof opts.tap === 'string' ? openTap(opts.tap, o.queues, cpus) : opts.tap;
    try {
      const pairs = 1 + (this.backend.moreQueues?.length ?? 0);
      if (o.queues !== undefined && o.queues !== pairs) {
        throw new TsvisorError(`--net queues=${o.queues} does not match the ${pairs} queue(s) of the backend ${this.backend.name} given opened`, 2, `give queues=${pairs}, or open the backend with ${o.queues} queues`);
      }
      // The transport adds VERSION_1 on the modern interface only. Words, not a set: this crosses to the worker.
      const deviceFeatures = offeredFeatureSet({ backendOffloads: this.backend.supportedOffloads, mtu: o.mtuGiven, queuePairs: pairs }).without(FeatureSet.of(VIRTIO_F_VERSION_1)).toWords();
      this.config = VirtioNetConfig.create(o.mac, o.mtu, pairs);
      const queueSizes = netQueueSizes(opts, pairs);
      this.msixVectors = netQueueCount(pairs) + 1;
      const sab = createTransportState({ numQueues: netQueueCount(pairs), queueMaxSizes: queueSizes, msixVectors: this.msixVectors, deviceFeatures, intxGsi });
      this.state = new TransportState(sab);
      this.vcpuData = { shared: this.config.buffer, queueSizes, deviceFeatures, doorbellFds: { queues: [], control: -1 } };
      this.spec = { kind: 'virtio-net', pciSlot, sharedState: sab, doorbellFds: { reset: -1 }, deviceState: this.config.buffer, options: { net: this.vcpuData } };
    } catch (e) {
      if (this.ownsBackend) this.backend.close();
      throw e;
    }
  }

  /**
   * MSI-X through irqfds: vector v's interrupt is a write to its eventfd, and
   * KVM injects the MSI its route holds (the worker keeps the routes equal to
   * the MSI-X table). INTx still goes through KVM_IRQ_LINE. Without irqfd
   * support, the VM itself (KVM_SIGNAL_MSI) is the sink.
   */
  private irqfdSink(vm: VmHandle): IrqSink {
    try {
      const ringers = Array.from({ length: this.msixVectors }, (_, v) => {
        const fd = eventfd(0, EFD_CLOEXEC);
        if (fd < 0) throw new SyscallError('eventfd', errno());
        this.irqfds.push(fd);
        vm.irqfd(fd, IRQFD_GSI_BASE + v);
        return new DoorbellRinger(fd);
      });
      this.spec.irqfdGsiBase = IRQFD_GSI_BASE;
      return {
        irqLine: (gsi, level) => vm.irqLine(gsi, level),
        signalMsi: (_lo, _hi, _data, vector) => {
          ringers[vector].ring();
          return 1;
        },
      };
    } catch {
      for (const fd of this.irqfds) close(fd);
      this.irqfds = [];
      return vm;
    }
  }

  /**
   * Starts the data path on `loop` and fills in the doorbell fds of the spec.
   * Call before the worker is created (the spec travels in its workerData).
   */
  start(loop: MainLoop, memory: GuestMemory, vm: VmHandle): VirtioNet {
    const irq = this.opts.msiViaIrqfd === false ? vm : this.irqfdSink(vm);
    const sender = new InterruptSender(this.state, irq);
    const dev = new VirtioNet(loop, memory, this.backend, this.state, this.config, sender, this.resolved);
    const d = dev.doorbells;
    const queueFds = d.queues.map((b) => b.fd);
    this.vcpuData.doorbellFds = { queues: queueFds, control: d.control.fd };
    // The transport's reset hand-shake rings the same control doorbell.
    this.spec.doorbellFds.reset = d.control.fd;
    // One per queue index, in the transport's order (virtio-net-config.ts's layout).
    if (this.opts.ioeventfd) this.spec.ioeventfdFds = queueFds;
    this.device = dev;
    dev.onBackendLost = (message) => {
      if (this.linkTimer) clearInterval(this.linkTimer);
      this.opts.onBackendLost?.(message);
    };
    // The host setting the TAP down or up reaches the guest as VIRTIO_NET_S_LINK_UP
    // and a config interrupt (when it negotiated STATUS). A deleted TAP is noticed
    // here too when its fd is not being watched (RX waiting for guest buffers).
    this.linkTimer = setInterval(() => {
      if (this.backend.attached?.() === false) {
        dev.backendLost('the interface was deleted');
        return;
      }
      const up = this.backend.hostUp?.();
      if (up !== null && up !== undefined && up !== dev.linkUp) dev.setLinkUp(up);
    }, LINK_POLL_MS);
    this.linkTimer.unref();
    return dev;
  }

  get net(): VirtioNet | null {
    return this.device;
  }

  close(): void {
    if (this.linkTimer) clearInterval(this.linkTimer);
    this.device?.close();
    this.device = null;
    for (const fd of this.irqfds) close(fd);
    this.irqfds = [];
    if (this.ownsBackend) this.backend.close();
  }
}

/**
 * Opens TAP `name` with `queues` queues (one per pair), or by default one per
 * vCPU. An existing single-queue TAP cannot take IFF_MULTI_QUEUE: without an
 * explicit queues= the NIC then gets one pair, as before multiqueue.
 */
function openTap(name: string, queues: number | undefined, cpus: number): Tap {
  const n = queues ?? defaultQueuePairs(cpus);
  try {
    return Tap.open(name, { queues: n });
  } catch (e) {
    if (queues !== undefined || n === 1) throw e;
    return Tap.open(name);
  }
}
