// Raising a virtio device's interrupts (virtio 1.2 §4.1.4.5 ISR, §4.1.5.1.2
// MSI-X) from the shared transport state, on either thread.
import type { MsiSink } from '../pci/msix.js';
import { MSIX_NO_VECTOR } from '../pci/msix.js';
import type { TransportState } from './transport-state.js';
import { VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_ISR_CONFIG, VIRTIO_ISR_QUEUE } from './virtio-device.js';

/** The interrupt controller calls an InterruptSender needs (`VmHandle` provides them). */
export interface IrqSink extends MsiSink {
  irqLine(gsi: number, level: 0 | 1): void;
}

/**
 * Raises the device's interrupts from the shared state; on the main thread
 * (the data path) and on the vCPU thread (the transport). Give each thread its
 * own instance and its own `VmHandle` (VmHandle methods share a native buffer).
 *
 * - MSI-X enabled: vector from the queue (or the config vector); NO_VECTOR or
 *   out of range → nothing; entry or function masked → the PBA bit is set
 *   (delivered when unmasked, by the vCPU side); else `signalMsi(addr, data)`.
 * - MSI-X disabled: INTx. ISR |= 1 (queue) or 2 (config) and the line goes
 *   high (level-triggered); the guest's ISR read on the vCPU thread clears ISR
 *   and drops the line.
 */
export class InterruptSender {
  constructor(readonly state: TransportState, private readonly sink: IrqSink) {}

  /** Used buffers on queue `queue`. */
  sendQueueInterrupt(queue: number): void {
    const s = this.state;
    if (s.msix.enabled) {
      if (queue >= 0 && queue < s.numQueues) this.sendVector(s.queueVector(queue));
    } else {
      this.raiseIntx(VIRTIO_ISR_QUEUE);
    }
  }

  /** Device configuration changed (bump `configGeneration` first), or NEEDS_RESET was set. */
  sendConfigInterrupt(): void {
    const s = this.state;
    if (s.msix.enabled) this.sendVector(s.configVector);
    else this.raiseIntx(VIRTIO_ISR_CONFIG);
  }

  /**
   * Marks the device broken (virtio 1.2 §2.1.2, QEMU virtio_error): a modern
   * driver gets NEEDS_RESET and a config interrupt, once DRIVER_OK. Legacy
   * (virtio 0.9.5) has no such bit: there the caller's data path just stops.
   */
  needsReset(): void {
    if (!this.state.modern) return;
    const st = this.state.orStatus(VIRTIO_CONFIG_S_NEEDS_RESET);
    if (st & VIRTIO_CONFIG_S_NEEDS_RESET) return;
    if (st & VIRTIO_CONFIG_S_DRIVER_OK) this.sendConfigInterrupt();
  }

  private sendVector(vector: number): void {
    const s = this.state;
    if (vector === MSIX_NO_VECTOR || vector >= s.msixVectors) return;
    const r = s.msix.notify(vector, this.sink);
    if (r === 1) s.countSent();
    else if (r === 0) s.countPended();
  }

  private raiseIntx(bit: number): void {
    const s = this.state;
    const gsi = s.intxGsi;
    s.irqLock.lock();
    try {
      s.orIsrLocked(bit);
      if (gsi >= 0 && s.intxLevel === 0) {
        s.setIntxLevelLocked(1);
        this.sink.irqLine(gsi, 1);
      }
    } finally {
      s.irqLock.unlock();
    }
    s.countSent();
  }

  /** vCPU side: the guest read ISR. Returns the bits and clears them, dropping the line. */
  readAndClearIsr(): number {
    const s = this.state;
    s.irqLock.lock();
    let v: number;
    try {
      v = s.takeIsrLocked();
      if (s.intxLevel !== 0) {
        s.setIntxLevelLocked(0);
        if (s.intxGsi >= 0) this.sink.irqLine(s.intxGsi, 0);
      }
    } finally {
      s.irqLock.unlock();
    }
    return v;
  }

  /** vCPU side: drop INTx (reset, or MSI-X just enabled) without reading ISR. */
  lowerIntx(): void {
    const s = this.state;
    s.irqLock.lock();
    try {
      if (s.intxLevel !== 0) {
        s.setIntxLevelLocked(0);
        if (s.intxGsi >= 0) this.sink.irqLine(s.intxGsi, 0);
      }
    } finally {
      s.irqLock.unlock();
    }
  }
}

