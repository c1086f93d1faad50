// The virtio-net device configuration space (virtio 1.2 §5.1.4) and the rest
// of the state both threads of the device share, in one SharedArrayBuffer:
//
//   bytes [0, 12)   struct virtio_net_config as the guest reads it:
//                     0 mac[6]   6 status u16   8 max_virtqueue_pairs u16   10 mtu u16
//   Int32 words     TX_WAITING (QEMU VirtIONetQueue.tx_waiting), plus kick counters
//
// The vCPU thread answers config reads and writes from here; the main thread
// changes status (link, announce) and mac (CTRL_MAC_ADDR_SET) here. Status is
// accessed with Atomics (read-modify-write from the main thread); the mac may
// tear if the guest reads it while a CTRL_MAC command runs, which the driver
// that issued that command does not do.
import { VIRTIO_F_VERSION_1, VIRTIO_NET_F_CTRL_MAC_ADDR } from './virtio-net-features.js';
import type { FeatureBits } from '../virtio/feature-set.js';
import { TsvisorError } from '../../errors.js';
import { macBytes, parseMac as parseMacText } from '../../net/net-option.js';

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

// Int32 word indices after the config bytes.
export const NET_WORD_TX_WAITING = 0;
const WORDS_OFFSET = 16;
const WORDS = 4;
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

  /** A fresh shared state: `mac`, link up, one queue pair, `mtu`. */
  static create(mac: Uint8Array, mtu = 1500): VirtioNetConfig {
    const c = new VirtioNetConfig(new SharedArrayBuffer(VIRTIO_NET_SHARED_BYTES));
    c.setMac(mac);
    c.status = VIRTIO_NET_S_LINK_UP;
    c.dv.setUint16(VIRTIO_NET_CONFIG_MAX_VQ_PAIRS, 1, true);
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

/** Queue indices: one RX/TX pair, then the control queue (virtio 1.2 §5.1.2). */
export const VIRTIO_NET_RX_QUEUE = 0;
export const VIRTIO_NET_TX_QUEUE = 1;
export const VIRTIO_NET_CTRL_QUEUE = 2;
export const VIRTIO_NET_NUM_QUEUES = 3;
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

/** Max sizes of [rx, tx, ctrl], validated. */
export function netQueueSizes(opts: { rxQueueSize?: number; txQueueSize?: number }): number[] {
  return [checkQueueSize('the net option rxQueueSize', opts.rxQueueSize), checkQueueSize('the net option txQueueSize', opts.txQueueSize), VIRTIO_NET_CTRL_QUEUE_SIZE];
}
