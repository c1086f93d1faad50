// What the TX, RX and control paths share with the device that owns them
// (VirtioNet): the negotiated state, the counters, the backend, and the two
// ways a path stops the device. Each path gets this one object; none of them
// knows of the others, of the bottom halves or of the fd watch (those are the
// event layer's, virtio-net-events.ts).
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { NetBackend } from '../../net/tap.js';
import type { VirtioNetConfig } from './virtio-net-config.js';
import type { VirtioNetStats } from './virtio-net-stats.js';

/** What the device raises interrupts through (InterruptSender from the transport provides it). */
export interface NetInterrupts {
  sendQueueInterrupt(queue: number): void;
  sendConfigInterrupt(): void;
  /** Sets NEEDS_RESET (virtio_error) and tells the driver. */
  needsReset(): void;
}

/** The feature-dependent facts the data path uses, fixed at DRIVER_OK. */
export interface NetNegotiated {
  /** virtio-net header length on both rings: 10 or 12. */
  hdrLen: number;
  /** VIRTIO_NET_F_MRG_RXBUF. */
  mergeable: boolean;
  /** Largest frame (header included) the guest can be handed. */
  rxMaxFrame: number;
  /** Whether negotiated feature bit `bit` is set. */
  has(bit: number): boolean;
}

export interface NetPathContext {
  readonly memory: GuestMemory;
  readonly backend: NetBackend;
  readonly config: VirtioNetConfig;
  readonly irq: NetInterrupts;
  /** The counters (the device's own object, mutated in place). */
  readonly counters: VirtioNetStats;
  readonly negotiated: NetNegotiated;
  /** DRIVER_OK seen and queues built (until a reset). */
  readonly active: boolean;
  /** Active, and no guest error since. */
  readonly running: boolean;
  /** The backend went away for good (a deleted TAP), or null. */
  readonly backendGone: string | null;
  /** A guest error (QEMU virtio_error): stop the data path, NEEDS_RESET. */
  deviceError(reason: string): void;
  /** The backend is gone for good: stop watching it, report the link down. */
  backendLost(reason: string): void;
}
