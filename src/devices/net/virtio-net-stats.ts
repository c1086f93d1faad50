// virtio-net's counters (Firecracker keeps per-device metrics first-class,
// net/metrics.rs): plain numbers the data path increments and --stats and the
// API read. Kick counts are the vCPU thread's (shared Float64 words in
// VirtioNetConfig); the main thread copies them in when the counters are read.
import { NET_CTR_CTRL_KICKS, NET_CTR_RX_KICKS, NET_CTR_TX_KICKS, NET_CTR_TX_KICKS_COALESCED } from './virtio-net-config.js';

/** Counters for --stats and the API: plain numbers, read any time. */
export interface VirtioNetStats {
  txPackets: number;
  txBytes: number;
  rxPackets: number;
  rxBytes: number;
  /** Guest notifications per queue (counted by the vCPU side). */
  txKicks: number;
  rxKicks: number;
  ctrlKicks: number;
  /** TX kicks that found tx_waiting set (a BH run already pending). */
  txKicksCoalesced: number;
  txBhRuns: number;
  /** TX BH runs that hit txBurst and rescheduled themselves. */
  txBurstReschedules: number;
  /** TX BH runs whose re-check after re-enabling kicks found more work. */
  txRaceRechecks: number;
  /** writev returned EAGAIN: a chain was parked until the fd became writable. */
  txParked: number;
  txResumed: number;
  txInterrupts: number;
  rxInterrupts: number;
  ctrlInterrupts: number;
  configInterrupts: number;
  /** Times RX stopped reading the backend for lack of guest buffers, and resumed. */
  rxStalls: number;
  rxResumes: number;
  rxReadableCallbacks: number;
  /** RX pump runs that delivered at least one frame (each ends with at most one interrupt). */
  rxBatches: number;
  /** Looks at the backend right after a TX bottom half sent frames that found a frame waiting (an answer made inside the writev). */
  rxAfterTx: number;
  ctrlCommands: number;
  ctrlErrors: number;
  /** Control-queue runs that hit the burst limit and rescheduled themselves. */
  ctrlBurstReschedules: number;
  /** Poll errors the backend fd reported (POLLERR: a TAP deleted under us). */
  backendErrors: number;
  drops: {
    txZeroLength: number;
    txLinkDown: number;
    txWriteError: number;
    /** A chain parked on EAGAIN when the backend fd's watch failed, and still EAGAIN on the retry. */
    txPollError: number;
    rxTruncated: number;
    rxTooBig: number;
    rxRunt: number;
    rxFiltered: number;
    rxReadError: number;
  };
  /** Guest errors that made the device NEEDS_RESET (first few, as text). */
  deviceErrors: string[];
  lastErrno: number;
  /** Why the backend went away for good (see VirtioNet.backendLost), or null. */
  backendLost: string | null;
}

/** How many device errors the counters keep as text. */
export const DEVICE_ERRORS_KEPT = 8;

export function emptyStats(): VirtioNetStats {
  return {
    txPackets: 0, txBytes: 0, rxPackets: 0, rxBytes: 0, txKicks: 0, rxKicks: 0, ctrlKicks: 0, txKicksCoalesced: 0,
    txBhRuns: 0, txBurstReschedules: 0, txRaceRechecks: 0, txParked: 0, txResumed: 0,
    txInterrupts: 0, rxInterrupts: 0, ctrlInterrupts: 0, configInterrupts: 0,
    rxStalls: 0, rxResumes: 0, rxReadableCallbacks: 0, rxBatches: 0, rxAfterTx: 0, ctrlCommands: 0, ctrlErrors: 0, ctrlBurstReschedules: 0, backendErrors: 0,
    drops: { txZeroLength: 0, txLinkDown: 0, txWriteError: 0, txPollError: 0, rxTruncated: 0, rxTooBig: 0, rxRunt: 0, rxFiltered: 0, rxReadError: 0 },
    deviceErrors: [], lastErrno: 0, backendLost: null,
  };
}

/** Copies the vCPU thread's kick counters (shared words) into `s`. */
export function readKickCounters(s: VirtioNetStats, counters: Float64Array): void {
  s.txKicks = counters[NET_CTR_TX_KICKS];
  s.rxKicks = counters[NET_CTR_RX_KICKS];
  s.ctrlKicks = counters[NET_CTR_CTRL_KICKS];
  s.txKicksCoalesced = counters[NET_CTR_TX_KICKS_COALESCED];
}
