// The device-reset hand-shake between the threads: the vCPU thread (where the
// driver writes status 0) must not return to the guest while the main thread
// may still touch rings the driver frees once the write returns.
import type { TransportState } from './transport-state.js';

/** How long a guest reset waits for the main thread before going on regardless. */
export const RESET_ACK_TIMEOUT_MS = 1000;

/**
 * vCPU side of a device reset: the transport has already cleared the shared
 * state (`resetDeviceState`); this tells the main thread to drop its queues
 * and waits (bounded) until it has, so the device never touches rings the
 * driver frees after the reset write returns.
 */
export class VcpuResetHandshake {
  /** Resets whose acknowledgement did not come within the timeout. */
  timeouts = 0;
  constructor(private readonly state: TransportState, private readonly ring: () => void, private readonly timeoutMs = RESET_ACK_TIMEOUT_MS) {}

  /** Returns true when the main thread acknowledged (or is not attached). */
  resetAndWait(): boolean {
    const gen = this.state.bumpResetGeneration();
    if (!this.state.mainAttached) {
      // Nobody on the main side: acknowledge ourselves so a later attach starts in step.
      this.state.ackReset(gen);
      return true;
    }
    this.ring();
    if (this.state.waitResetAck(gen, this.timeoutMs)) return true;
    this.timeouts++;
    return false;
  }
}

/**
 * Main-thread side of the reset hand-shake. Call `attach()` once at set-up;
 * in the bottom half the reset doorbell schedules, call `poll(resetQueues)`:
 * when a reset is outstanding it runs `resetQueues()` (drop Virtqueue state,
 * cancel BHs, forget parked elements) and then acknowledges.
 */
export class MainResetHandshake {
  private seen = 0;
  constructor(private readonly state: TransportState) {}

  attach(): void {
    this.seen = this.state.resetGeneration;
    this.state.mainAttached = true;
  }

  /** True while the vCPU side waits for an acknowledgement. */
  get pending(): boolean {
    return this.state.resetGeneration !== this.state.resetAck;
  }

  /** Handles an outstanding reset, if any; returns whether one was handled. */
  poll(resetQueues: () => void): boolean {
    const gen = this.state.resetGeneration;
    if (gen === this.seen && gen === this.state.resetAck) return false;
    this.seen = gen;
    try {
      resetQueues();
    } finally {
      this.state.ackReset(gen);
    }
    return true;
  }
}

