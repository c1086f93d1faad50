// The virtio-net control queue (virtio 1.2 §5.1.6.5, QEMU
// virtio_net_handle_ctrl): each chain is a command (class, command, data) in
// its readable part and a one-byte ack in its writable part.
//
// `handleCtrlCommand` is the command set as a pure function of the RX
// filter, the negotiated features and the device config: testable without a
// queue or an fd. `ControlQueue` runs the queue: it validates each chain,
// bounds what it copies, acknowledges, and stops after a burst so that a guest
// re-queueing commands cannot keep the main loop (and SIGINT) waiting.
import type { GuestMemory } from '../../memory/guest-memory.js';
import { ChainReader, ChainWriter, DescriptorChain, type Virtqueue } from '../virtio/virtqueue.js';
import { MAC_TABLE_ENTRIES, type RxFilter } from './rx-filter.js';
import { formatMac, VIRTIO_NET_CTRL_QUEUE, VIRTIO_NET_S_ANNOUNCE, type VirtioNetConfig } from './virtio-net-config.js';
import type { NetPathContext } from './virtio-net-context.js';
import { VIRTIO_NET_F_CTRL_MAC_ADDR, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_MQ } from './virtio-net-features.js';

export const VIRTIO_NET_OK = 0;
export const VIRTIO_NET_ERR = 1;
export const VIRTIO_NET_CTRL_RX = 0;
export const VIRTIO_NET_CTRL_RX_PROMISC = 0;
export const VIRTIO_NET_CTRL_RX_ALLMULTI = 1;
export const VIRTIO_NET_CTRL_RX_ALLUNI = 2;
export const VIRTIO_NET_CTRL_RX_NOMULTI = 3;
export const VIRTIO_NET_CTRL_RX_NOUNI = 4;
export const VIRTIO_NET_CTRL_RX_NOBCAST = 5;
export const VIRTIO_NET_CTRL_MAC = 1;
export const VIRTIO_NET_CTRL_MAC_TABLE_SET = 0;
export const VIRTIO_NET_CTRL_MAC_ADDR_SET = 1;
export const VIRTIO_NET_CTRL_VLAN = 2;
export const VIRTIO_NET_CTRL_ANNOUNCE = 3;
export const VIRTIO_NET_CTRL_ANNOUNCE_ACK = 0;
export const VIRTIO_NET_CTRL_MQ = 4;
export const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET = 0;
export { MAC_TABLE_ENTRIES };
/** Largest control command read (header included): a MAC table of ~10 000 addresses; longer ones get VIRTIO_NET_ERR. */
export const CTRL_MAX_COMMAND = 2 + 8 + 6 * 10_000;
/** Commands one control-queue run handles before yielding to the main loop (the queue's size: one ring's worth). */
export const CTRL_BURST = 64;
/** Segments a control chain may have (QEMU's control queue holds 64 entries). */
const CTRL_MAX_SEGMENTS = 64;

/** What a command may read and change. */
export interface CtrlTarget {
  readonly filter: RxFilter;
  readonly config: VirtioNetConfig;
  /** Whether negotiated feature bit `bit` is set. */
  has(bit: number): boolean;
  /**
   * VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, once its value is checked: from now on
   * only pairs [0, n) carry frames. Absent: the device has one pair.
   */
  setQueuePairs?(n: number): void;
}

/** Executes one command; returns the ack (VIRTIO_NET_OK or VIRTIO_NET_ERR). */
export function handleCtrlCommand(t: CtrlTarget, cls: number, cmd: number, data: Uint8Array): number {
  switch (cls) {
    case VIRTIO_NET_CTRL_RX:
      return ctrlRx(t, cmd, data);
    case VIRTIO_NET_CTRL_MAC:
      return ctrlMac(t, cmd, data);
    case VIRTIO_NET_CTRL_ANNOUNCE:
      if (cmd === VIRTIO_NET_CTRL_ANNOUNCE_ACK && t.config.status & VIRTIO_NET_S_ANNOUNCE) {
        t.config.clearStatusBits(VIRTIO_NET_S_ANNOUNCE);
        return VIRTIO_NET_OK;
      }
      return VIRTIO_NET_ERR;
    case VIRTIO_NET_CTRL_MQ:
      return ctrlMq(t, cmd, data);
    default:
      return VIRTIO_NET_ERR;
  }
}

/** QEMU virtio_net_handle_mq: le16 virtqueue_pairs in [1, max_virtqueue_pairs]; RSS and hash reporting are not offered. */
function ctrlMq(t: CtrlTarget, cmd: number, data: Uint8Array): number {
  if (cmd !== VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET || !t.has(VIRTIO_NET_F_MQ) || data.length !== 2 || !t.setQueuePairs) return VIRTIO_NET_ERR;
  const n = data[0] | (data[1] << 8);
  if (n < 1 || n > t.config.maxQueuePairs) return VIRTIO_NET_ERR;
  t.setQueuePairs(n);
  return VIRTIO_NET_OK;
}

function ctrlRx(t: CtrlTarget, cmd: number, data: Uint8Array): number {
  if (!t.has(VIRTIO_NET_F_CTRL_RX) || data.length !== 1) return VIRTIO_NET_ERR;
  const on = data[0] !== 0;
  const f = t.filter;
  switch (cmd) {
    case VIRTIO_NET_CTRL_RX_PROMISC: f.promisc = on; break;
    case VIRTIO_NET_CTRL_RX_ALLMULTI: f.allmulti = on; break;
    // The RX_EXTRA commands (not offered; QEMU accepts them anyway).
    case VIRTIO_NET_CTRL_RX_ALLUNI: f.alluni = on; break;
    case VIRTIO_NET_CTRL_RX_NOMULTI: f.nomulti = on; break;
    case VIRTIO_NET_CTRL_RX_NOUNI: f.nouni = on; break;
    case VIRTIO_NET_CTRL_RX_NOBCAST: f.nobcast = on; break;
    default: return VIRTIO_NET_ERR;
  }
  return VIRTIO_NET_OK;
}

function ctrlMac(t: CtrlTarget, cmd: number, data: Uint8Array): number {
  if (cmd === VIRTIO_NET_CTRL_MAC_ADDR_SET) {
    if (!t.has(VIRTIO_NET_F_CTRL_MAC_ADDR) || data.length !== 6) return VIRTIO_NET_ERR;
    t.config.setMac(data);
    return VIRTIO_NET_OK;
  }
  if (cmd !== VIRTIO_NET_CTRL_MAC_TABLE_SET) return VIRTIO_NET_ERR;
  // Two tables: le32 entries, then entries * 6 bytes; unicast first, then multicast.
  const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const tables: string[][] = [[], []];
  const overflow = [false, false];
  let off = 0;
  for (let k = 0; k < 2; k++) {
    if (off + 4 > data.length) return VIRTIO_NET_ERR;
    const entries = dv.getUint32(off, true);
    off += 4;
    if (entries > (data.length - off) / 6) return VIRTIO_NET_ERR;
    if (entries > MAC_TABLE_ENTRIES) overflow[k] = true;
    else for (let e = 0; e < entries; e++) tables[k].push(formatMac(data.subarray(off + 6 * e, off + 6 * e + 6)));
    off += 6 * entries;
  }
  if (off !== data.length) return VIRTIO_NET_ERR;
  const f = t.filter;
  f.unicast = tables[0];
  f.multicast = tables[1];
  f.uniOverflow = overflow[0];
  f.multiOverflow = overflow[1];
  return VIRTIO_NET_OK;
}

/** Results of ControlQueue.run(). */
export const CTRL_IDLE = 0;
/** The burst limit was reached: run again on the next loop iteration. */
export const CTRL_MORE = 1;

export class ControlQueue {
  private readonly chain = new DescriptorChain(CTRL_MAX_SEGMENTS);
  private readonly reader: ChainReader;
  private readonly writer: ChainWriter;

  constructor(
    readonly queue: Virtqueue,
    memory: GuestMemory,
    private readonly ctx: NetPathContext,
    private readonly target: CtrlTarget,
    private readonly burst = CTRL_BURST,
    /** The control queue's index now (it moves to 2N when the driver negotiates MQ). */
    private readonly queueIndex: () => number = () => VIRTIO_NET_CTRL_QUEUE,
  ) {
    this.reader = new ChainReader(memory);
    this.writer = new ChainWriter(memory);
  }

  /** Handles available commands, at most `burst`; one interrupt at the end. */
  run(): number {
    const ctx = this.ctx;
    const q = this.queue;
    if (!ctx.running || !q.ready) return CTRL_IDLE;
    const c = this.chain;
    const s = ctx.counters;
    let pushed = 0;
    let result = CTRL_IDLE;
    for (;;) {
      if (pushed >= this.burst) {
        result = CTRL_MORE;
        s.ctrlBurstReschedules++;
        break;
      }
      if (!q.pop(c)) {
        if (q.broken) {
          ctx.deviceError(`control queue: ${q.brokenReason}`);
          break;
        }
        // Going idle: ask for the next kick (with EVENT_IDX this writes avail_event,
        // without which the driver never kicks again) and look once more.
        if (q.enableNotificationAndCheck()) continue;
        break;
      }
      if (c.readableBytes < 2 || c.writableBytes < 1) {
        ctx.deviceError('virtio-net ctrl missing headers');
        break;
      }
      let status: number;
      if (c.readableBytes > CTRL_MAX_COMMAND) {
        // The copy below is sized by the guest: refuse what no command needs
        // (64 segments of all RAM would be an allocation the host cannot make).
        status = VIRTIO_NET_ERR;
      } else {
        const data = new Uint8Array(c.readableBytes);
        this.reader.bind(c).copyTo(data);
        status = handleCtrlCommand(this.target, data[0], data[1], data.subarray(2));
      }
      s.ctrlCommands++;
      if (status !== VIRTIO_NET_OK) s.ctrlErrors++;
      this.writer.bind(c).writeU8(0, status);
      q.push(c.head, 1);
      pushed++;
    }
    if (pushed > 0 && q.needsNotification()) {
      ctx.irq.sendQueueInterrupt(this.queueIndex());
      s.ctrlInterrupts++;
    }
    return result;
  }
}
