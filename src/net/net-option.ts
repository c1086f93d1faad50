// The --net option: how the user names the guest's network.
//   tap:NAME[,OPTS]    attach to TAP NAME (created if missing; needs CAP_NET_ADMIN then)
//   tap[,OPTS]         a new TAP with a free name (needs CAP_NET_ADMIN)
//   sandbox[,OPTS]     a network namespace made for this run, with the TAP inside,
//                      10.0.2.2/24 on the host side and 10.0.2.15 for the guest (root)
// OPTS: mac=M, queues=N (queue pairs; default one per vCPU, at most 8).
import { usageError } from '../errors.js';

export const DEFAULT_MAC = '52:54:00:12:34:56';
export const SANDBOX_HOST_IP = '10.0.2.2';
export const SANDBOX_GUEST_IP = '10.0.2.15';
export const SANDBOX_PREFIX = 24;
/** The most queue pairs a NIC may have (VIRTIO_NET_MAX_QUEUE_PAIRS). */
export const MAX_NET_QUEUES = 16;

export interface NetSpec {
  mode: 'tap' | 'sandbox';
  /** TAP name; undefined: pick a free one. */
  ifname?: string;
  mac: string;
  /** queues=N as given; undefined for the default (one pair per vCPU). */
  queues?: number;
}

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;

export function parseMac(text: string): string {
  if (!MAC_RE.test(text)) throw usageError(`--net mac "${text}" is not a MAC address`, 'write six hex pairs, e.g. mac=52:54:00:12:34:56');
  const mac = text.toLowerCase();
  if (parseInt(mac.slice(0, 2), 16) & 1) throw usageError(`--net mac ${mac} is a multicast address`, 'the first byte must be even, e.g. 52:54:00:…');
  return mac;
}

/** The MAC as 6 bytes. */
export function macBytes(mac: string): Uint8Array {
  return Uint8Array.from(mac.split(':').map((h) => parseInt(h, 16)));
}

export function parseNetOption(text: string): NetSpec {
  const [head, ...params] = text.split(',');
  let spec: NetSpec;
  const colon = head.indexOf(':');
  const kind = colon < 0 ? head : head.slice(0, colon);
  const arg = colon < 0 ? undefined : head.slice(colon + 1);
  if (kind === 'tap') {
    if (arg !== undefined && !/^[A-Za-z0-9_.-]{1,15}$/.test(arg)) {
      const why = arg.length === 0 ? 'has no interface name' : arg.length > 15 ? `names an interface of ${arg.length} characters, Linux allows 15 (IFNAMSIZ)` : `names the interface "${arg}", with characters other than letters, digits, "-", "_" or "."`;
      throw usageError(`--net ${head} ${why}`, 'use 1 to 15 letters, digits, "-", "_" or ".", e.g. --net tap:tap0');
    }
    spec = { mode: 'tap', ifname: arg, mac: DEFAULT_MAC };
  } else if (kind === 'sandbox' && arg === undefined) {
    spec = { mode: 'sandbox', mac: DEFAULT_MAC };
  } else {
    throw usageError(`--net ${text} is not understood`, 'use --net tap:NAME, --net tap or --net sandbox, optionally followed by ,mac=…');
  }
  for (const p of params) {
    const [k, v] = p.split('=', 2);
    if (k === 'mac' && v !== undefined) spec.mac = parseMac(v);
    else if (k === 'queues' && v !== undefined) {
      if (!/^\d+$/.test(v) || Number(v) < 1 || Number(v) > MAX_NET_QUEUES) throw usageError(`--net queues=${v} is not a number of queue pairs`, `give a whole number from 1 to ${MAX_NET_QUEUES}, e.g. queues=2`);
      spec.queues = Number(v);
    } else throw usageError(`--net option "${p}" is not understood`, 'the options are mac=XX:XX:XX:XX:XX:XX and queues=N');
  }
  return spec;
}

/** The kernel's own IP autoconfiguration for the sandbox (CONFIG_IP_PNP): no guest user space needed. */
export function sandboxIpParam(): string {
  return `ip=${SANDBOX_GUEST_IP}::${SANDBOX_HOST_IP}:255.255.255.0::eth0:off`;
}
