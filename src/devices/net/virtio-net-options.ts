// virtio-net's tunables, validated once (NetSetup resolves them and hands the
// result to VirtioNet). Every message names the option as the user gave it:
// `--tx-burst` on the command line, the `net` option of Vm.boot() otherwise.
import { TsvisorError } from '../../errors.js';
import { DEFAULT_MAC, netQueueSizes, parseMac, VIRTIO_NET_MAX_QUEUE_PAIRS } from './virtio-net-config.js';

export interface VirtioNetOptions {
  /** MAC address, default 52:54:00:12:34:56. */
  mac?: string;
  /** Packets one TX bottom-half run sends before rescheduling itself (QEMU tx_burst; --tx-burst), default 256. */
  txBurst?: number;
  /** Frames one readable callback delivers before yielding to the loop, default 256. */
  rxBurst?: number;
  /** RX/TX queue sizes, powers of two in [256, 1024], default 256. */
  rxQueueSize?: number;
  txQueueSize?: number;
  /** MTU the guest is told when VIRTIO_NET_F_MTU is offered; also bounds frames without guest GSO. Default 1500. */
  mtu?: number;
  /**
   * Queue pairs (`--net …,queues=N`): with more than one the device offers
   * VIRTIO_NET_F_MQ and the TAP is opened with one queue per pair. Default:
   * one per vCPU, at most DEFAULT_MAX_QUEUE_PAIRS. A backend given opened has
   * as many pairs as it has queues.
   */
  queues?: number;
}

/** The default cap on queue pairs (one per vCPU up to it), as Linux's virtio_net sizes its default by CPUs. */
export const DEFAULT_MAX_QUEUE_PAIRS = 8;

/** Queue pairs when the user gave none: one per vCPU, capped. */
export function defaultQueuePairs(cpus: number): number {
  return Math.max(1, Math.min(cpus, DEFAULT_MAX_QUEUE_PAIRS));
}

/** Validates a queues= value; a one-line error names the option and the range. */
export function checkQueuePairs(queues: number): number {
  if (!Number.isInteger(queues) || queues < 1 || queues > VIRTIO_NET_MAX_QUEUE_PAIRS) {
    throw new TsvisorError(`--net queues=${queues} is invalid`, 2, `give a whole number of queue pairs from 1 to ${VIRTIO_NET_MAX_QUEUE_PAIRS}, e.g. queues=2`);
  }
  return queues;
}

export interface ResolvedNetOptions {
  mac: Uint8Array;
  txBurst: number;
  rxBurst: number;
  mtu: number;
  /** Max sizes of [rx, tx, ctrl] for one pair (netQueueSizes gives them for more). */
  queueSizes: number[];
  /** queues= as given (checked), or undefined for the default. */
  queues: number | undefined;
  /** Whether the user set an MTU (then VIRTIO_NET_F_MTU is offered). */
  mtuGiven: boolean;
}

function burst(name: string, v: number): number {
  if (!Number.isInteger(v) || v < 1 || v > 65536) throw new TsvisorError(`${name} ${v} is invalid`, 2, 'give a whole number from 1 to 65536');
  return v;
}

/** Validated, defaulted options. */
export function resolveNetOptions(opts: VirtioNetOptions): ResolvedNetOptions {
  const txBurst = burst('--tx-burst', opts.txBurst ?? 256);
  const rxBurst = burst('the net option rxBurst', opts.rxBurst ?? 256);
  const mtu = opts.mtu ?? 1500;
  if (!Number.isInteger(mtu) || mtu < 68 || mtu > 65535) throw new TsvisorError(`the net option mtu ${mtu} is invalid`, 2, 'give a value from 68 to 65535');
  const queues = opts.queues === undefined ? undefined : checkQueuePairs(opts.queues);
  return { mac: parseMac(opts.mac ?? DEFAULT_MAC), txBurst, rxBurst, mtu, queueSizes: netQueueSizes(opts), mtuGiven: opts.mtu !== undefined, queues };
}
