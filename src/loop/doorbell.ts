// A doorbell: how another thread wakes the main loop. An eventfd that the
// ringing side writes and the main loop watches through the addon's uv_poll;
// rings that arrive before the main loop looks coalesce into one wake-up.
import * as libc from '../sys/libc.js';
import { native, type FdWatchHandle } from '../native.js';

/** Main-thread side: owns the eventfd and calls `onRing` on the main loop. */
export class Doorbell {
  readonly fd: number;
  private readonly watch: FdWatchHandle;
  private readonly buf = new libc.NativeBuffer(8);

  /** Called on the main loop after the doorbell rang (coalesced). */
  onRing: () => void;

  constructor(onRing: () => void = () => {}) {
    this.onRing = onRing;
    this.fd = libc.eventfd(0, libc.EFD_NONBLOCK | libc.EFD_CLOEXEC);
    if (this.fd < 0) throw new libc.SyscallError('eventfd', libc.errno());
    this.watch = new (native().FdWatch)(this.fd, () => {
      libc.read(this.fd, this.buf.address, 8); // reset the counter; EAGAIN is fine
      this.onRing();
    });
    this.watch.start(true, false);
  }

  /** Stops keeping the process alive for this doorbell (it still rings). */
  unref(): void {
    this.watch.stop();
  }

  close(): void {
    this.watch.close();
    libc.close(this.fd);
  }
}

/** Any-thread side: rings a doorbell given its fd. One per thread (owns a native buffer). */
export class DoorbellRinger {
  private readonly buf = new libc.NativeBuffer(8);
  constructor(readonly fd: number) {
    this.buf.dv.setBigUint64(0, 1n, true);
  }
  ring(): void {
    libc.write(this.fd, this.buf.address, 8);
  }
}
