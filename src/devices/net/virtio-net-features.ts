// virtio-net feature bits (virtio 1.2 §5.1.3, Linux uapi virtio_net.h), the
// set tsvisor offers, the dependency rules a driver's choice must follow
// (§5.1.3.1), and what follows from a negotiated set: the header size and the
// TAP offloads. Sets are FeatureSets (two 32-bit words), so every bit up to
// 63 is exact; a Number is still accepted from setup code and tests that name
// bits below 53, and converted once.
import { FeatureSet, type FeatureBits } from '../virtio/feature-set.js';
import { VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC } from '../virtio/virtqueue.js';
import { TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO } from '../../net/tap.js';

export const VIRTIO_NET_F_CSUM = 0;
export const VIRTIO_NET_F_GUEST_CSUM = 1;
export const VIRTIO_NET_F_CTRL_GUEST_OFFLOADS = 2;
export const VIRTIO_NET_F_MTU = 3;
export const VIRTIO_NET_F_MAC = 5;
export const VIRTIO_NET_F_GSO = 6; // legacy, never offered
export const VIRTIO_NET_F_GUEST_TSO4 = 7;
export const VIRTIO_NET_F_GUEST_TSO6 = 8;
export const VIRTIO_NET_F_GUEST_ECN = 9;
export const VIRTIO_NET_F_GUEST_UFO = 10;
export const VIRTIO_NET_F_HOST_TSO4 = 11;
export const VIRTIO_NET_F_HOST_TSO6 = 12;
export const VIRTIO_NET_F_HOST_ECN = 13;
export const VIRTIO_NET_F_HOST_UFO = 14;
export const VIRTIO_NET_F_MRG_RXBUF = 15;
export const VIRTIO_NET_F_STATUS = 16;
export const VIRTIO_NET_F_CTRL_VQ = 17;
export const VIRTIO_NET_F_CTRL_RX = 18;
export const VIRTIO_NET_F_CTRL_VLAN = 19;
export const VIRTIO_NET_F_CTRL_RX_EXTRA = 20;
export const VIRTIO_NET_F_GUEST_ANNOUNCE = 21;
export const VIRTIO_NET_F_MQ = 22;
export const VIRTIO_NET_F_CTRL_MAC_ADDR = 23;
// Transport-level bits (virtio 1.2 §6).
export const VIRTIO_F_NOTIFY_ON_EMPTY = 24;
export const VIRTIO_F_ANY_LAYOUT = 27;
export { VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_RING_F_EVENT_IDX };
export const VIRTIO_F_VERSION_1 = 32;

/** sizeof(struct virtio_net_hdr) and sizeof(struct virtio_net_hdr_mrg_rxbuf). */
export const VIRTIO_NET_HDR_LEN = 10;
export const VIRTIO_NET_HDR_MRG_RXBUF_LEN = 12;

export const FEATURE_NAMES: Readonly<Record<number, string>> = {
  [VIRTIO_NET_F_CSUM]: 'CSUM',
  [VIRTIO_NET_F_GUEST_CSUM]: 'GUEST_CSUM',
  [VIRTIO_NET_F_CTRL_GUEST_OFFLOADS]: 'CTRL_GUEST_OFFLOADS',
  [VIRTIO_NET_F_MTU]: 'MTU',
  [VIRTIO_NET_F_MAC]: 'MAC',
  [VIRTIO_NET_F_GSO]: 'GSO',
  [VIRTIO_NET_F_GUEST_TSO4]: 'GUEST_TSO4',
  [VIRTIO_NET_F_GUEST_TSO6]: 'GUEST_TSO6',
  [VIRTIO_NET_F_GUEST_ECN]: 'GUEST_ECN',
  [VIRTIO_NET_F_GUEST_UFO]: 'GUEST_UFO',
  [VIRTIO_NET_F_HOST_TSO4]: 'HOST_TSO4',
  [VIRTIO_NET_F_HOST_TSO6]: 'HOST_TSO6',
  [VIRTIO_NET_F_HOST_ECN]: 'HOST_ECN',
  [VIRTIO_NET_F_HOST_UFO]: 'HOST_UFO',
  [VIRTIO_NET_F_MRG_RXBUF]: 'MRG_RXBUF',
  [VIRTIO_NET_F_STATUS]: 'STATUS',
  [VIRTIO_NET_F_CTRL_VQ]: 'CTRL_VQ',
  [VIRTIO_NET_F_CTRL_RX]: 'CTRL_RX',
  [VIRTIO_NET_F_CTRL_VLAN]: 'CTRL_VLAN',
  [VIRTIO_NET_F_CTRL_RX_EXTRA]: 'CTRL_RX_EXTRA',
  [VIRTIO_NET_F_GUEST_ANNOUNCE]: 'GUEST_ANNOUNCE',
  [VIRTIO_NET_F_MQ]: 'MQ',
  [VIRTIO_NET_F_CTRL_MAC_ADDR]: 'CTRL_MAC_ADDR',
  [VIRTIO_F_NOTIFY_ON_EMPTY]: 'NOTIFY_ON_EMPTY',
  [VIRTIO_F_ANY_LAYOUT]: 'ANY_LAYOUT',
  [VIRTIO_RING_F_INDIRECT_DESC]: 'RING_INDIRECT_DESC',
  [VIRTIO_RING_F_EVENT_IDX]: 'RING_EVENT_IDX',
  [VIRTIO_F_VERSION_1]: 'VERSION_1',
};

/** A feature set, or its Number form from setup code and tests (exact up to bit 52 only). */
export type FeatureInput = FeatureBits | number;

/** The set itself, or a FeatureSet made from a Number (setup time: this allocates). */
function asBits(f: FeatureInput): FeatureBits {
  return typeof f === 'number' ? FeatureSet.from(f) : f;
}

/** Whether feature bit `b` is set in `features`. */
export function hasFeature(features: FeatureInput, b: number): boolean {
  return asBits(features).has(b);
}

/**
 * The union of `bits` as a Number, for setup code and tests that still do
 * arithmetic on sets; bits above 52 cannot be named this way (use FeatureSet.of).
 */
export function featureSet(...bits: number[]): number {
  let f = 0;
  for (const b of new Set(bits)) {
    if (!Number.isInteger(b) || b < 0 || b > 52) throw new RangeError(`feature bit ${b} does not fit a Number set; use FeatureSet.of`);
    f += 2 ** b;
  }
  return f;
}

/** Names of the bits set, low to high ("bit N" for unnamed ones). */
export function featureNames(features: FeatureInput): string[] {
  const f = asBits(features);
  const out: string[] = [];
  for (let b = 0; b < 64; b++) if (f.has(b)) out.push(FEATURE_NAMES[b] ?? `bit ${b}`);
  return out;
}

export interface OfferOptions {
  /** TUN_F_* the backend accepts (Tap.supportedOffloads). UFO bits are offered only with TUN_F_UFO. */
  backendOffloads: number;
  /** Offer VIRTIO_NET_F_MTU (config `mtu`). */
  mtu?: boolean;
  /** Queue pairs (config max_virtqueue_pairs); more than one offers VIRTIO_NET_F_MQ. Default 1. */
  queuePairs?: number;
}

/**
 * The device features tsvisor offers (QEMU's virtio-net defaults, minus
 * CTRL_VLAN, CTRL_GUEST_OFFLOADS and the rest it does not implement; MQ with
 * more than one queue pair, as QEMU offers it only then). Guest
 * offloads (GUEST_*) are offered only when the backend can hand such packets
 * over; host offloads (HOST_*) need the backend to take GSO frames, which a
 * vnet_hdr TAP does (the kernel segments them).
 */
export function offeredFeatureSet(opts: OfferOptions): FeatureSet {
  const bits = [
    VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_STATUS,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_CTRL_RX,
    VIRTIO_NET_F_CTRL_MAC_ADDR,
    VIRTIO_NET_F_GUEST_ANNOUNCE,
    VIRTIO_F_VERSION_1,
    VIRTIO_F_ANY_LAYOUT,
    VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC,
  ];
  if (opts.mtu) bits.push(VIRTIO_NET_F_MTU);
  if ((opts.queuePairs ?? 1) > 1) bits.push(VIRTIO_NET_F_MQ);
  const off = opts.backendOffloads;
  if (off & TUN_F_CSUM) {
    bits.push(VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM);
    bits.push(VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_ECN);
    if (off & TUN_F_TSO4) bits.push(VIRTIO_NET_F_GUEST_TSO4);
    if (off & TUN_F_TSO6) bits.push(VIRTIO_NET_F_GUEST_TSO6);
    if (off & TUN_F_TSO_ECN && off & (TUN_F_TSO4 | TUN_F_TSO6)) bits.push(VIRTIO_NET_F_GUEST_ECN);
    if (off & TUN_F_UFO) bits.push(VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_UFO);
  }
  return FeatureSet.of(...bits);
}

/** offeredFeatureSet as a Number, for callers that still do arithmetic on it (every offered bit is below 53). */
export function offeredFeatures(opts: OfferOptions): number {
  const f = offeredFeatureSet(opts);
  return f.hi * 0x100000000 + f.lo;
}

/** [feature, "needs one of"] pairs from virtio 1.2 §5.1.3.1. */
export const FEATURE_DEPENDENCIES: ReadonlyArray<[number, number[]]> = [
  [VIRTIO_NET_F_GUEST_TSO4, [VIRTIO_NET_F_GUEST_CSUM]],
  [VIRTIO_NET_F_GUEST_TSO6, [VIRTIO_NET_F_GUEST_CSUM]],
  [VIRTIO_NET_F_GUEST_ECN, [VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6]],
  [VIRTIO_NET_F_GUEST_UFO, [VIRTIO_NET_F_GUEST_CSUM]],
  [VIRTIO_NET_F_HOST_TSO4, [VIRTIO_NET_F_CSUM]],
  [VIRTIO_NET_F_HOST_TSO6, [VIRTIO_NET_F_CSUM]],
  [VIRTIO_NET_F_HOST_ECN, [VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6]],
  [VIRTIO_NET_F_HOST_UFO, [VIRTIO_NET_F_CSUM]],
  [VIRTIO_NET_F_CTRL_RX, [VIRTIO_NET_F_CTRL_VQ]],
  [VIRTIO_NET_F_CTRL_VLAN, [VIRTIO_NET_F_CTRL_VQ]],
  [VIRTIO_NET_F_GUEST_ANNOUNCE, [VIRTIO_NET_F_CTRL_VQ]],
  [VIRTIO_NET_F_MQ, [VIRTIO_NET_F_CTRL_VQ]],
  [VIRTIO_NET_F_CTRL_MAC_ADDR, [VIRTIO_NET_F_CTRL_VQ]],
  [VIRTIO_NET_F_CTRL_RX_EXTRA, [VIRTIO_NET_F_CTRL_RX]],
  [VIRTIO_NET_F_CTRL_GUEST_OFFLOADS, [VIRTIO_NET_F_CTRL_VQ]],
];

/**
 * Checks a driver's feature choice (virtio 1.2 §5.1.3.1): null when it is
 * acceptable, else the first violated rule as text ("GUEST_TSO4 needs
 * GUEST_CSUM"). Bits outside `offered` are refused as well when given.
 * Called through VirtioNetVcpu.validateFeatures when a modern driver sets
 * FEATURES_OK (the transport then leaves FEATURES_OK clear) and when a legacy
 * driver sets DRIVER_OK (the transport then leaves DRIVER_OK clear).
 */
export function validateFeatures(driverInput: FeatureInput, offeredInput?: FeatureInput): string | null {
  const driver = asBits(driverInput);
  if (offeredInput !== undefined) {
    const offered = asBits(offeredInput);
    const extra: number[] = [];
    for (let b = 0; b < 64; b++) if (driver.has(b) && !offered.has(b)) extra.push(b);
    if (extra.length > 0) return `driver accepted features the device did not offer: ${extra.map((b) => FEATURE_NAMES[b] ?? `bit ${b}`).join(', ')}`;
  }
  // Plain loops: a FEATURES_OK write is a vCPU exit, and an accepted set must cost no allocation.
  for (let i = 0; i < FEATURE_DEPENDENCIES.length; i++) {
    const dep = FEATURE_DEPENDENCIES[i];
    if (!driver.has(dep[0])) continue;
    const needs = dep[1];
    let met = false;
    for (let j = 0; j < needs.length && !met; j++) met = driver.has(needs[j]);
    if (!met) return `${FEATURE_NAMES[dep[0]]} needs ${needs.map((n) => FEATURE_NAMES[n]).join(' or ')}`;
  }
  return null;
}

/** Header size on both rings: 12 with VERSION_1 or MRG_RXBUF, else 10 (QEMU virtio_net_set_mrg_rx_bufs). */
export function vnetHeaderSize(input: FeatureInput): number {
  const features = asBits(input);
  return features.has(VIRTIO_F_VERSION_1) || features.has(VIRTIO_NET_F_MRG_RXBUF)
    ? VIRTIO_NET_HDR_MRG_RXBUF_LEN
    : VIRTIO_NET_HDR_LEN;
}

/** TAP offloads for what the guest takes on RX (QEMU virtio_net_apply_guest_offloads). */
export function tunOffloadsFor(input: FeatureInput): number {
  const features = asBits(input);
  if (!features.has(VIRTIO_NET_F_GUEST_CSUM)) return 0;
  let f = TUN_F_CSUM;
  if (features.has(VIRTIO_NET_F_GUEST_TSO4)) f |= TUN_F_TSO4;
  if (features.has(VIRTIO_NET_F_GUEST_TSO6)) f |= TUN_F_TSO6;
  if (features.has(VIRTIO_NET_F_GUEST_ECN)) f |= TUN_F_TSO_ECN;
  if (features.has(VIRTIO_NET_F_GUEST_UFO)) f |= TUN_F_UFO;
  return f;
}

/** Whether the guest may receive frames beyond the MTU (any guest GSO). */
export function guestTakesGso(input: FeatureInput): boolean {
  const features = asBits(input);
  return features.has(VIRTIO_NET_F_GUEST_TSO4) || features.has(VIRTIO_NET_F_GUEST_TSO6) || features.has(VIRTIO_NET_F_GUEST_UFO);
}
