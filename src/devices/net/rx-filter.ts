// The receive filter the control queue programs (virtio 1.2 §5.1.6.5.1-2,
// QEMU VirtIONet promisc/allmulti/mac_table and receive_filter without
// VLANs). Pure data and functions: no queue, no fd, testable alone.
import { formatMac } from './virtio-net-config.js';

/** QEMU MAC_TABLE_ENTRIES: more addresses than this switch to "all" for that class. */
export const MAC_TABLE_ENTRIES = 64;

export interface RxFilter {
  promisc: boolean;
  allmulti: boolean;
  alluni: boolean;
  nomulti: boolean;
  nouni: boolean;
  nobcast: boolean;
  uniOverflow: boolean;
  multiOverflow: boolean;
  unicast: string[];
  multicast: string[];
}

/** The filter after a device reset: promiscuous until the driver says otherwise (QEMU virtio_net_reset). */
export function defaultRxFilter(): RxFilter {
  return { promisc: true, allmulti: false, alluni: false, nomulti: false, nouni: false, nobcast: false, uniOverflow: false, multiOverflow: false, unicast: [], multicast: [] };
}

/**
 * Whether a frame to destination `dst` passes `f` on a device whose own MAC
 * is `ownMac`. `dst` holds the six address bytes, -1 where the frame was too
 * short to have them. Runs per received frame once the guest turns
 * promiscuous mode off, so it formats a MAC only to look it up in a
 * non-empty table.
 */
export function rxFilterAccepts(f: RxFilter, dst: ArrayLike<number>, ownMac: ArrayLike<number>): boolean {
  if (f.promisc) return true;
  if (dst[0] & 1) {
    let bcast = true;
    for (let i = 0; i < 6; i++) if (dst[i] !== 0xff) bcast = false;
    if (bcast) return !f.nobcast;
    if (f.nomulti) return false;
    if (f.allmulti || f.multiOverflow) return true;
    return f.multicast.length > 0 && f.multicast.includes(formatMac(dst));
  }
  if (f.nouni) return false;
  if (f.alluni || f.uniOverflow) return true;
  let own = true;
  for (let i = 0; i < 6; i++) if (dst[i] !== ownMac[i]) own = false;
  return own || (f.unicast.length > 0 && f.unicast.includes(formatMac(dst)));
}
