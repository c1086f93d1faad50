// How events reach virtio-net on the main thread (as Firecracker splits
// net/event_handler.rs from net/device.rs): a bottom half and an eventfd
// doorbell per queue, one for status changes, and a watch on each queue
// pair's backend fd. This layer owns those objects and dispatches each event
// to one method of the device; the device and its TX/RX paths ask for events
// only through the small interfaces they declare (TxEvents, RxEvents).
//
//   doorbell queue i ← vCPU notify, or KVM ioeventfd → BH virtio-net-qI → onQueueEvent(i)
//                      (i is an RX, TX or the control queue by virtio-net-config.ts's layout;
//                      a TX queue's BH is its bottom half, QEMU's tx_bh)
//   doorbell control ← status change, reset hand-shake → BH virtio-net-control → onControl
//   pair p's backend fd: readable / writable / POLLERR → onBackendReadable(p) / onBackendWritable(p) / onBackendError(p)
import type { BottomHalf, Doorbell, FdHandler, MainLoop } from '../../loop/main-loop.js';
import type { RxEvents } from './virtio-net-rx.js';
import type { TxEvents } from './virtio-net-tx.js';
import { netQueueCount, rxQueueIndex, txQueueIndex } from './virtio-net-config.js';

/** The device's handlers, one per event. */
export interface VirtioNetEventTarget {
  /** Queue `index` was kicked, or its bottom half rescheduled. */
  onQueueEvent(index: number): void;
  onControl(): void;
  onBackendReadable(pair: number): void;
  onBackendWritable(pair: number): void;
  onBackendError(pair: number): void;
}

/** One queue pair's events: its TX bottom half and its backend fd. */
class PairEvents implements TxEvents, RxEvents {
  constructor(private readonly txBh: BottomHalf, private readonly fd: FdHandler) {}

  scheduleTx(): void {
    this.txBh.schedule();
  }

  watchWritable(on: boolean): void {
    this.fd.setWritable(on);
  }

  get watchingWritable(): boolean {
    return this.fd.isWritable;
  }

  watchReadable(on: boolean): void {
    this.fd.setReadable(on);
  }

  unwatch(): void {
    this.fd.setReadable(false);
    this.fd.setWritable(false);
  }

  close(): void {
    this.fd.close();
  }
}

export class VirtioNetEvents {
  /** Eventfds the vCPU side (or a KVM ioeventfd) rings: one per queue index, plus `control` for status/reset. */
  readonly doorbells: { queues: Doorbell[]; control: Doorbell };
  /** Per queue index. */
  readonly queueBhs: BottomHalf[];
  readonly controlBh: BottomHalf;
  /** Per queue pair. */
  readonly pairs: PairEvents[];

  /** `backendFds[p]` is queue pair p's; the device has 2 * pairs + 1 queues. */
  constructor(loop: MainLoop, backendFds: readonly number[], target: VirtioNetEventTarget) {
    const queues = netQueueCount(backendFds.length);
    this.queueBhs = Array.from({ length: queues }, (_, i) => loop.newBh(`virtio-net-q${i}`, () => target.onQueueEvent(i)));
    this.controlBh = loop.newBh('virtio-net-control', () => target.onControl());
    this.doorbells = {
      queues: this.queueBhs.map((bh, i) => loop.newDoorbell(`virtio-net-q${i}`, bh)),
      control: loop.newDoorbell('virtio-net-control', this.controlBh),
    };
    this.pairs = backendFds.map((fd, p) => new PairEvents(this.queueBhs[txQueueIndex(p)], loop.watchFd(fd, {
      onReadable: () => target.onBackendReadable(p),
      onWritable: () => target.onBackendWritable(p),
      onError: () => target.onBackendError(p),
    }, { readable: false, writable: false })));
  }

  scheduleQueue(index: number): void {
    this.queueBhs[index]?.schedule();
  }

  /** Kicks that arrived before DRIVER_OK found nothing active: run every queue's bottom half once. */
  scheduleAllQueues(): void {
    for (const bh of this.queueBhs) bh.schedule();
  }

  /** Device reset: nothing pending, the backends unwatched. */
  quiesce(): void {
    for (const bh of this.queueBhs) bh.cancel();
    for (const p of this.pairs) p.unwatch();
  }

  /** A guest error stopped the device: no TX run pending, the backends unwatched (RX and control runs find it stopped). */
  stopDataPath(): void {
    for (let p = 0; p < this.pairs.length; p++) {
      this.queueBhs[txQueueIndex(p)].cancel();
      this.pairs[p].unwatch();
    }
  }

  /** Pair `p` was turned off (VIRTIO_NET_CTRL_MQ): nothing pending for it, its backend unwatched. */
  stopPair(p: number): void {
    this.queueBhs[rxQueueIndex(p)].cancel();
    this.queueBhs[txQueueIndex(p)].cancel();
    this.pairs[p].unwatch();
  }

  /** The backend is gone: stop watching its fds for good. */
  closeBackendWatch(): void {
    for (const p of this.pairs) p.close();
  }

  /** Everything released (the backend fds themselves stay open: their owner closes them). */
  close(): void {
    for (const p of this.pairs) p.close();
    for (const bh of this.queueBhs) bh.delete();
    this.controlBh.delete();
    for (const d of this.doorbells.queues) d.close();
    this.doorbells.control.close();
  }
}
