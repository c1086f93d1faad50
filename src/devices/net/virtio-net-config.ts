// The virtio-net device configuration space (virtio 1.2 §5.1.4) and the rest
// of the state both threads of the device share, in one SharedArrayBuffer:
//
//   bytes [0, 12)   struct virtio_net_config as the guest reads it:
//                     0 mac[6]   6 status u16   8 max_virtqueue_pairs u16   10 mtu u16
//   Int32 words     TX_WAITING per queue pair (QEMU VirtIONetQueue.tx_waiting), plus kick counters
//
// The vCPU thread answers config reads and writes from here; the main thread
// changes status (link, announce) and mac (CTRL_MAC_ADDR_SET) here. Status is
// accessed with Atomics (read-modify-write from the main thread); the mac may
// tear if the guest reads it while a CTRL_MAC command runs, which the driver
// that issued that command does not do.
import { VIRTIO_F_VERSION_1, VIRTIO_NET_F_CTRL_MAC_ADDR } from './virtio-net-features.js';
import type { FeatureBits } from '../virtio/feature-set.js';
import { TsvisorError } from '../../errors.js';
import { MAX_NET_QUEUES, macBytes, parseMac as parseMacText } from '../../net/net-option.js';

export const VIRTIO_NET_S_LINK_UP = 1;
export const VIRTIO_NET_S_ANNOUNCE = 2;

export const VIRTIO_NET_CONFIG_MAC = 0;
export const VIRTIO_NET_CONFIG_STATUS = 6;
export const VIRTIO_NET_CONFIG_MAX_VQ_PAIRS = 8;
export const VIRTIO_NET_CONFIG_MTU = 10;
/** Bytes of device config tsvisor exposes (up to and including mtu). */
export const VIRTIO_NET_CONFIG_SIZE = 12;

/** QEMU's default MAC prefix and address, stable across runs. */
export { DEFAULT_MAC } from '../../net/net-option.js';

// Int32 word indices after the config bytes: pair p's tx_waiting is NET_WORD_TX_WAITING + p.
export const NET_WORD_TX_WAITING = 0;
const WORDS_OFFSET = 16;
const WORDS = 16;
// Float64 counters the vCPU thread increments (single writer, read by the main thread).
export const NET_CTR_TX_KICKS = 0;
export const NET_CTR_RX_KICKS = 1;
export const NET_CTR_CTRL_KICKS = 2;
export const NET_CTR_TX_KICKS_COALESCED = 3;
const CTR_OFFSET = WORDS_OFFSET + 4 * WORDS;
const CTRS = 4;
export const VIRTIO_NET_SHARED_BYTES = CTR_OFFSET + 8 * CTRS;

/** Parses "52:54:00:12:34:56" into bytes; throws a usage error naming --net mac. */
export function parseMac(text: string): Uint8Array {
  return macBytes(parseMacText(text));
}

export function formatMac(mac: ArrayLike<number>): string {
  return Array.from({ length: 6 }, (_, i) => mac[i].toString(16).padStart(2, '0')).join(':');
}

/** The shared state over one SharedArrayBuffer; each thread builds its own view. */
export class VirtioNetConfig {
  readonly bytes: Uint8Array;
  private readonly dv: DataView;
  private readonly u16: Uint16Array;
  /** Int32 words (NET_WORD_*), Atomics only. */
  readonly words: Int32Array;
  /** Counters (NET_CTR_*), written by the vCPU thread only. */
  readonly counters: Float64Array;

  constructor(readonly buffer: SharedArrayBuffer) {
    if (buffer.byteLength < VIRTIO_NET_SHARED_BYTES) throw new RangeError('virtio-net shared state buffer too small');
    this.bytes = new Uint8Array(buffer, 0, VIRTIO_NET_CONFIG_SIZE);
    this.dv = new DataView(buffer, 0, VIRTIO_NET_CONFIG_SIZE);
    this.u16 = new Uint16Array(buffer, 0, VIRTIO_NET_CONFIG_SIZE / 2);
    this.words = new Int32Array(buffer, WORDS_OFFSET, WORDS);
    this.counters = new Float64Array(buffer, CTR_OFFSET, CTRS);
  }

  /** A fresh shared state: `mac`, link up, `pairs` queue pairs (max_virtqueue_pairs), `mtu`. */
  static create(mac: Uint8Array, mtu = 1500, pairs = 1): VirtioNetConfig {
    const c = new VirtioNetConfig(new SharedArrayBuffer(VIRTIO_NET_SHARED_BYTES));
    c.setMac(mac);
    c.status = VIRTIO_NET_S_LINK_UP;
    c.dv.setUint16(VIRTIO_NET_CONFIG_MAX_VQ_PAIRS, pairs, true);
    c.dv.setUint16(VIRTIO_NET_CONFIG_MTU, mtu, true);
    return c;
  }

  get mac(): Uint8Array {
    return this.bytes.slice(0, 6);
  }

  setMac(mac: ArrayLike<number>): void {
    for (let i = 0; i < 6; i++) this.bytes[i] = mac[i];
  }

  get status(): number {
    return Atomics.load(this.u16, VIRTIO_NET_CONFIG_STATUS / 2);
  }

  set status(v: number) {
    Atomics.store(this.u16, VIRTIO_NET_CONFIG_STATUS / 2, v);
  }

  setStatusBits(bits: number): void {
    Atomics.or(this.u16, VIRTIO_NET_CONFIG_STATUS / 2, bits);
  }

  clearStatusBits(bits: number): void {
    Atomics.and(this.u16, VIRTIO_NET_CONFIG_STATUS / 2, ~bits & 0xffff);
  }

  /** max_virtqueue_pairs: the queue pairs the device has. */
  get maxQueuePairs(): number {
    return this.dv.getUint16(VIRTIO_NET_CONFIG_MAX_VQ_PAIRS, true);
  }

  get mtu(): number {
    return this.dv.getUint16(VIRTIO_NET_CONFIG_MTU, true);
  }

  /**
   * A guest read of `size` bytes at `offset` of the device config
   * (little-endian: VERSION_1 mandates it, legacy is guest-native, x86).
   * Bytes past the end read as 0.
   */
  read(offset: number, size: number): number {
    let v = 0;
    for (let i = size - 1; i >= 0; i--) {
      const at = offset + i;
      v = v * 256 + (at >= 0 && at < VIRTIO_NET_CONFIG_SIZE ? (at === 6 || at === 7 ? this.statusByte(at) : this.bytes[at]) : 0);
    }
    return v;
  }

  /**
   * A guest write to the device config. Only the mac is writable, and only by
   * a legacy driver without CTRL_MAC_ADDR (QEMU virtio_net_set_config); false
   * when the write was ignored.
   */
  write(offset: number, size: number, value: number, driverFeatures: FeatureBits): boolean {
    if (driverFeatures.has(VIRTIO_F_VERSION_1) || driverFeatures.has(VIRTIO_NET_F_CTRL_MAC_ADDR)) return false;
    if (offset < 0 || offset + size > 6) return false;
    for (let i = 0; i < size; i++) {
      this.bytes[offset + i] = value % 256;
      value = Math.floor(value / 256);
    }
    return true;
  }

  private statusByte(at: number): number {
    const s = this.status;
    return at === 6 ? s & 0xff : s >>> 8;
  }
}

// ---- device shape ----

/**
 * Queue indices (virtio 1.2 §5.1.2): receiveq1, transmitq1, …, receiveqN,
 * transmitqN, then controlq at 2N, N being max_virtqueue_pairs once the driver
 * has negotiated VIRTIO_NET_F_MQ. Without MQ, N is 1 whatever the device has:
 * controlq is queue 2 and the queues after it carry nothing. (QEMU re-creates
 * its queues once the driver's features are known, virtio_net_set_multiqueue;
 * tsvisor keeps 2N+1 in the transport and reads an index by this layout.)
 */
export const VIRTIO_NET_RX_QUEUE = 0;
export const VIRTIO_NET_TX_QUEUE = 1;
/** The control queue's index with one queue pair (or without MQ). */
export const VIRTIO_NET_CTRL_QUEUE = 2;
/** Queue pairs a device can have here (QEMU allows more; a pair costs a TAP fd, a bottom half and two MSI-X vectors). */
export const VIRTIO_NET_MAX_QUEUE_PAIRS = MAX_NET_QUEUES;

// What a queue index is (queueRole).
export const QUEUE_RX = 0;
export const QUEUE_TX = 1;
export const QUEUE_CTRL = 2;
/** Past the control queue: no queue the driver may use. */
export const QUEUE_NONE = 3;

/** Queues a device with `pairs` queue pairs has: 2N + 1. */
export function netQueueCount(pairs: number): number {
  return 2 * pairs + 1;
}

/** The control queue's index: 2N with MQ negotiated, else 2. */
export function ctrlQueueIndex(pairs: number, mq: boolean): number {
  return mq ? 2 * pairs : VIRTIO_NET_CTRL_QUEUE;
}

/** What queue `index` is (QUEUE_*); its pair is `index >> 1`. Allocation-free: it runs on the exit path. */
export function queueRole(index: number, pairs: number, mq: boolean): number {
  const ctrl = ctrlQueueIndex(pairs, mq);
  if (index === ctrl) return QUEUE_CTRL;
  if (!(index >= 0 && index < ctrl)) return QUEUE_NONE;
  return index & 1 ? QUEUE_TX : QUEUE_RX;
}

export const rxQueueIndex = (pair: number): number => 2 * pair;
export const txQueueIndex = (pair: number): number => 2 * pair + 1;
/** Virtio device id of a network card. */
export const VIRTIO_ID_NET = 1;

/** QEMU's bounds for its rx_queue_size / tx_queue_size (our rxQueueSize / txQueueSize) (VIRTIO_NET_RX_QUEUE_MIN_SIZE .. VIRTQUEUE_MAX_SIZE). */
export const VIRTIO_NET_QUEUE_MIN_SIZE = 256;
export const VIRTIO_NET_QUEUE_MAX_SIZE = 1024;
export const VIRTIO_NET_QUEUE_DEFAULT_SIZE = 256;
export const VIRTIO_NET_CTRL_QUEUE_SIZE = 64;

/**
 * Validates a queue size option like virtio_net_device_realize: a power of
 * two in [256, 1024]. Throws a TsvisorError naming the option.
 */
export function checkQueueSize(option: string, size: number | undefined): number {
  const s = size ?? VIRTIO_NET_QUEUE_DEFAULT_SIZE;
  if (!Number.isInteger(s) || s < VIRTIO_NET_QUEUE_MIN_SIZE || s > VIRTIO_NET_QUEUE_MAX_SIZE || (s & (s - 1)) !== 0) {
    throw new TsvisorError(
      `${option} ${s} is invalid`,
      2,
      `it must be a power of two between ${VIRTIO_NET_QUEUE_MIN_SIZE} and ${VIRTIO_NET_QUEUE_MAX_SIZE}`,
    );
  }
  return s;
}

/**
 * Max sizes of every queue index of a device with `pairs` pairs, validated:
 * [rx, tx, …, rx, tx, ctrl]. (Without MQ, queue 2 is the control queue with
 * an RX queue's larger maximum: the driver picks any size up to it.)
 */
export function netQueueSizes(opts: { rxQueueSize?: number; txQueueSize?: number }, pairs = 1): number[] {
  const rx = checkQueueSize('the net option rxQueueSize', opts.rxQueueSize);
  const tx = checkQueueSize('the net option txQueueSize', opts.txQueueSize);
  const sizes: number[] = [];
  for (let p = 0; p < pairs; p++) sizes.push(rx, tx);
  sizes.push(VIRTIO_NET_CTRL_QUEUE_SIZE);
  return sizes;
}
