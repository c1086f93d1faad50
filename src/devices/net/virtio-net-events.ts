// How events reach virtio-net on the main thread (as Firecracker splits
// net/event_handler.rs from net/device.rs): four bottom halves, the eventfd
// doorbells that schedule them, and the watch on the backend fd. This layer
// owns those objects and dispatches each event to one method of the device;
// the device and its TX/RX paths ask for events only through the small
// interfaces they declare (TxEvents, RxEvents).
//
//   doorbell tx      ← vCPU handle_tx, or KVM ioeventfd  → BH virtio-net-tx      → onTxBottomHalf
//   doorbell rx      ← RX queue kick                      → BH virtio-net-rx-kick → onRxKick
//   doorbell ctrl    ← control queue kick                 → BH virtio-net-ctrl    → onCtrlKick
//   doorbell control ← status change, reset hand-shake    → BH virtio-net-control → onControl
//   backend fd       readable / writable / POLLERR        → onBackendReadable / onBackendWritable / onBackendError
import type { BottomHalf, Doorbell, FdHandler, MainLoop } from '../../loop/main-loop.js';
import type { RxEvents } from './virtio-net-rx.js';
import type { TxEvents } from './virtio-net-tx.js';

/** The device's handlers, one per event. */
export interface VirtioNetEventTarget {
  onTxBottomHalf(): void;
  onRxKick(): void;
  onCtrlKick(): void;
  onControl(): void;
  onBackendReadable(): void;
  onBackendWritable(): void;
  onBackendError(): void;
}

export class VirtioNetEvents implements TxEvents, RxEvents {
  /** Eventfds the vCPU side (or a KVM ioeventfd) rings, one per queue, plus `control` for status/reset. */
  readonly doorbells: { rx: Doorbell; tx: Doorbell; ctrl: Doorbell; control: Doorbell };
  readonly txBh: BottomHalf;
  readonly rxKickBh: BottomHalf;
  readonly ctrlBh: BottomHalf;
  readonly controlBh: BottomHalf;
  private readonly fd: FdHandler;

  constructor(loop: MainLoop, backendFd: number, target: VirtioNetEventTarget) {
    this.txBh = loop.newBh('virtio-net-tx', () => target.onTxBottomHalf());
    this.rxKickBh = loop.newBh('virtio-net-rx-kick', () => target.onRxKick());
    this.ctrlBh = loop.newBh('virtio-net-ctrl', () => target.onCtrlKick());
    this.controlBh = loop.newBh('virtio-net-control', () => target.onControl());
    this.doorbells = {
      tx: loop.newDoorbell('virtio-net-tx', this.txBh),
      rx: loop.newDoorbell('virtio-net-rx', this.rxKickBh),
      ctrl: loop.newDoorbell('virtio-net-ctrl', this.ctrlBh),
      control: loop.newDoorbell('virtio-net-control', this.controlBh),
    };
    this.fd = loop.watchFd(backendFd, {
      onReadable: () => target.onBackendReadable(),
      onWritable: () => target.onBackendWritable(),
      onError: () => target.onBackendError(),
    }, { readable: false, writable: false });
  }

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

  /** Kicks that arrived before DRIVER_OK found nothing active: run every queue's bottom half once. */
  scheduleAllQueues(): void {
    this.txBh.schedule();
    this.rxKickBh.schedule();
    this.ctrlBh.schedule();
  }

  /** Device reset or error: nothing pending, the backend unwatched. */
  quiesce(): void {
    this.txBh.cancel();
    this.rxKickBh.cancel();
    this.ctrlBh.cancel();
    this.fd.setReadable(false);
    this.fd.setWritable(false);
  }

  /** A guest error stopped the device: no TX run pending, the backend unwatched (RX and control runs find it stopped). */
  stopDataPath(): void {
    this.txBh.cancel();
    this.fd.setReadable(false);
    this.fd.setWritable(false);
  }

  /** The backend is gone: stop watching its fd for good. */
  closeBackendWatch(): void {
    this.fd.close();
  }

  /** Everything released (the backend fd itself stays open: its owner closes it). */
  close(): void {
    this.fd.close();
    this.txBh.delete();
    this.rxKickBh.delete();
    this.ctrlBh.delete();
    this.controlBh.delete();
    for (const d of Object.values(this.doorbells)) d.close();
  }
}
