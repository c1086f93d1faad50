// What a virtio device is to its transport (virtio 1.2 §2-§3): the status
// and ISR bits, the transport-level feature bits, and the callbacks the
// virtio-pci transport makes on the vCPU thread (VirtioDeviceVcpuSide).

import type { FeatureSet } from './feature-set.js';

// virtio 1.2 §2.1 device status bits.
export const VIRTIO_CONFIG_S_ACKNOWLEDGE = 1;
export const VIRTIO_CONFIG_S_DRIVER = 2;
export const VIRTIO_CONFIG_S_DRIVER_OK = 4;
export const VIRTIO_CONFIG_S_FEATURES_OK = 8;
export const VIRTIO_CONFIG_S_NEEDS_RESET = 0x40;
export const VIRTIO_CONFIG_S_FAILED = 0x80;

// ISR status bits (virtio 1.2 §4.1.4.5).
export const VIRTIO_ISR_QUEUE = 1;
export const VIRTIO_ISR_CONFIG = 2;

// Transport feature bits (virtio 1.2 §6).
export const VIRTIO_F_NOTIFY_ON_EMPTY = 24;
export const VIRTIO_F_ANY_LAYOUT = 27;
export const VIRTIO_F_VERSION_1 = 32;
export const VIRTIO_F_ACCESS_PLATFORM = 33;

/**
 * What a virtio device provides to the transport on the vCPU thread. The
 * transport calls these from guest register accesses; they must not block
 * (except as documented) and must not throw on guest input.
 */
export interface VirtioDeviceVcpuSide {
  /** For logs and statistics, e.g. 'virtio-net'. */
  readonly name: string;
  /** Virtio device id (virtio 1.2 §5): 1 = network. */
  readonly deviceId: number;
  /** Number of virtqueues (the transport's queue_select range). */
  readonly numQueues: number;
  /** Maximum (and reset-time) size of queue i: a power of two. */
  queueMaxSize(index: number): number;
  /** Feature bits the device offers, without VERSION_1 (the transport adds it on the modern interface). */
  readonly deviceFeatures: FeatureSet;
  /** Bytes of device-specific configuration. */
  readonly configSize: number;
  /** Reads `size` (1, 2, 4) bytes of device config at `offset` (< configSize, in range); little-endian. */
  readConfig(offset: number, size: number): number;
  writeConfig(offset: number, size: number, value: number): void;
  /**
   * FEATURES_OK check: may the driver use exactly these features (already a
   * subset of what was offered)? False when a feature lacks one it depends on.
   * `driverFeatures` is the transport's reused scratch set: read it, do not keep it.
   */
  validateFeatures(driverFeatures: FeatureSet): boolean;
  /** The guest notified (kicked) queue `index` (range-checked by the transport). On the exit path: no allocation. */
  onQueueNotify(index: number): void;
  /** Device status changed (not for a reset to 0: that is onReset). E.g. DRIVER_OK: tell the main thread to activate queues. */
  onStatusChange(oldStatus: number, newStatus: number): void;
  /** The driver reset the device; called before the shared state is cleared and the main thread is asked to reset. */
  onReset(): void;
  /**
   * Optional: queue `index` was enabled (modern queue_enable, legacy PFN ≠ 0,
   * after validation) or disabled (legacy PFN 0). The shared state already
   * holds the new configuration; `queueGeneration(index)` has been bumped.
   */
  onQueueEnabled?(index: number, enabled: boolean): void;
}
