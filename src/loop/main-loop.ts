// The main loop: QEMU's main-loop roles (fd handlers, bottom halves, cross-
// thread wake-ups) mapped onto Node's own libuv loop instead of a second loop.
//
// When to run bottom halves. QEMU runs pending BHs once per iteration, after
// fd handlers and before blocking again. setImmediate is exactly that slot in
// libuv: the check phase comes right after the poll phase's I/O callbacks
// (FdWatch, doorbells) in the same iteration, before the loop blocks again.
// An immediate queued while immediates run waits for the next iteration, which
// gives the "a BH scheduled by a BH runs next time" rule for free. The other
// candidates do worse: process.nextTick/queueMicrotask run straight after the
// current callback (a BH that reschedules itself would starve I/O), and
// setTimeout(0) costs a timer and at least 1 ms.
//
// Only one immediate is queued at a time, whatever the number of BHs pending.
//
// One exception to the slot: a doorbell's wake-up runs the pending BHs at
// once (runBottomHalvesNow), as QEMU's aio_dispatch calls aio_bh_poll before
// the fd handlers. A rung doorbell is a vCPU's notify; waiting for the check
// phase cost 18 µs of a ping's round trip (docs/performance.md).
import { BottomHalf, BottomHalfList, DoorbellRinger, type BhCallback } from './bottom-half.js';
import { FdWatch } from './addon.js';
import { eventfd, poll, read as libcRead, close as libcClose, errno, EFD_CLOEXEC, EFD_NONBLOCK, NativeBuffer, POLLIN, POLLOUT, SyscallError } from '../sys/libc.js';

export { BottomHalf, DoorbellRinger } from './bottom-half.js';

export interface FdHandlers {
  /** Called when the fd is readable and the readable watch is on. */
  onReadable?: () => void;
  /** Called when the fd is writable and the writable watch is on. */
  onWritable?: () => void;
  /**
   * Called when libuv reports a poll error (e.g. EBADF). libuv stops the poll
   * itself then; both watches are off afterwards and may be re-armed.
   */
  onError?: () => void;
}

export interface WatchOptions {
  /** Initial readable watch; default: on when onReadable is given. */
  readable?: boolean;
  /** Initial writable watch; default: on when onWritable is given. */
  writable?: boolean;
}

/**
 * One fd on the main loop (QEMU qemu_set_fd_handler). The handler does not
 * own the fd: close() stops watching, the owner closes the fd afterwards.
 */
export class FdHandler {
  private readable: boolean;
  private writable: boolean;
  private closed = false;
  private readonly watch: FdWatch;

  /** @internal Made by MainLoop.watchFd. */
  constructor(
    private readonly loop: MainLoop,
    readonly fd: number,
    private readonly handlers: FdHandlers,
    opts: WatchOptions,
  ) {
    this.readable = opts.readable ?? handlers.onReadable !== undefined;
    this.writable = opts.writable ?? handlers.onWritable !== undefined;
    // One closure per handler, made here, not per event.
    this.watch = new FdWatch(fd, (r, w, err) => this.event(r, w, err));
    this.arm();
  }

  get isReadable(): boolean {
    return this.readable;
  }

  get isWritable(): boolean {
    return this.writable;
  }

  setReadable(on: boolean): void {
    if (this.closed || on === this.readable) return;
    this.readable = on;
    this.arm();
  }

  setWritable(on: boolean): void {
    if (this.closed || on === this.writable) return;
    this.writable = on;
    this.arm();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.readable = this.writable = false;
    this.watch.close();
    this.loop.forget(this);
  }

  private arm(): void {
    // start(false, false) stops the poll and lets Node exit if nothing else runs.
    this.watch.start(this.readable, this.writable);
  }

  private event(r: boolean, w: boolean, err: boolean): void {
    try {
      if (err) {
        this.readable = this.writable = false;
        this.watch.stop();
        this.handlers.onError?.();
        return;
      }
      if (r && this.readable) this.handlers.onReadable?.();
      // The readable callback may have closed us or turned writable off.
      if (w && this.writable && !this.closed) this.handlers.onWritable?.();
    } catch (e) {
      this.loop.fault(e, `the handler of fd ${this.fd}`);
    }
  }
}

/**
 * A cross-thread wake-up for one bottom half: an eventfd whose readability
 * schedules `bh`. Other threads ring it with `new DoorbellRinger(doorbell.fd)`
 * (only the fd number crosses the thread boundary); a KVM ioeventfd can be
 * bound to the same fd. Rings that arrive before the BH runs coalesce into one
 * run, as with qemu_bh_schedule + aio_notify.
 */
export class Doorbell {
  readonly fd: number;
  /** Times the main loop woke for this doorbell (coalesced rings count once). */
  wakeups = 0;
  private readonly handler: FdHandler;
  private ringer: DoorbellRinger | null = null;
  private closed = false;

  /** @internal Made by MainLoop.newDoorbell. */
  constructor(
    private readonly loop: MainLoop,
    readonly name: string,
    private readonly bh: BottomHalf,
    scratch: NativeBuffer,
  ) {
    const fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0) throw new SyscallError('eventfd', errno());
    this.fd = fd;
    try {
      this.handler = loop.watchFd(fd, {
        onReadable: () => {
          // Reset the counter first: a ring after this read wakes us again.
          libcRead(fd, scratch.address, 8);
          this.wakeups++;
          this.bh.schedule();
          loop.runBottomHalvesNow();
        },
      });
    } catch (e) {
      libcClose(fd);
      throw e;
    }
  }

  /** Rings from the main thread (where bh.schedule() would do; for symmetry and tests). */
  ring(): void {
    if (this.closed) return;
    if (this.ringer === null) this.ringer = new DoorbellRinger(this.fd);
    this.ringer.ring();
  }

  /** Stops watching and closes the eventfd; rings from other threads after this fail with EBADF. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.handler.close();
    libcClose(this.fd);
    this.loop.forgetDoorbell(this);
  }
}

export class MainLoop {
  private readonly bhs: BottomHalfList;
  private immediate: NodeJS.Immediate | null = null;
  private isClosed = false;
  private readonly handlers = new Set<FdHandler>();
  private readonly doorbells = new Set<Doorbell>();
  private scratch: NativeBuffer | null = null;
  private pollfds: NativeBuffer | null = null;

  constructor() {
    this.bhs = new BottomHalfList(this.wake);
  }

  /**
   * Receives what a bottom half or an fd callback threw: a bug in tsvisor,
   * since guest-caused errors never throw (devices record them). The VM stops
   * itself here; without a receiver the exception goes on to Node as before.
   */
  onFault: ((error: unknown, where: string) => void) | null = null;

  /** Loop iterations that ran bottom halves. */
  get iterations(): number {
    return this.bhs.passes;
  }

  get closed(): boolean {
    return this.isClosed;
  }

  /** A bottom half on this loop (QEMU qemu_bh_new). */
  newBh(name: string, callback: BhCallback): BottomHalf {
    return this.bhs.newBh(name, callback);
  }

  /** Watches `fd` for readiness (QEMU qemu_set_fd_handler). */
  watchFd(fd: number, handlers: FdHandlers, opts: WatchOptions = {}): FdHandler {
    if (this.isClosed) throw new Error('main loop is closed');
    const h = new FdHandler(this, fd, handlers, opts);
    this.handlers.add(h);
    return h;
  }

  /** A doorbell that schedules `bh` when rung from any thread. */
  newDoorbell(name: string, bh: BottomHalf): Doorbell {
    if (this.isClosed) throw new Error('main loop is closed');
    if (this.scratch === null) this.scratch = new NativeBuffer(8);
    const d = new Doorbell(this, name, bh, this.scratch);
    this.doorbells.add(d);
    return d;
  }

  /**
   * Stops everything so Node can exit: pending BHs are dropped (later
   * schedule() calls do nothing), fd watches are closed, doorbell eventfds
   * are closed. Fds passed to watchFd stay open (their owners close them).
   */
  close(): void {
    if (this.isClosed) return;
    this.isClosed = true;
    if (this.immediate !== null) {
      clearImmediate(this.immediate);
      this.immediate = null;
    }
    this.bhs.close();
    for (const d of [...this.doorbells]) d.close();
    for (const h of [...this.handlers]) h.close();
    this.scratch?.release();
    this.pollfds?.release();
  }

  /**
   * True when the loop has nothing to do right now: no bottom half pending and
   * no watched fd ready for an event it is watched for (doorbells included).
   * For tests and tools that must wait for a device to finish what was asked
   * of it, instead of sleeping; a poll(2) with zero timeout, not for hot paths.
   */
  isIdle(): boolean {
    if (this.isClosed) return true;
    if (this.immediate !== null || this.bhs.hasPending) return false;
    const armed = [...this.handlers].filter((h) => h.isReadable || h.isWritable);
    if (armed.length === 0) return true;
    if (this.pollfds === null || this.pollfds.size < 8 * armed.length) {
      this.pollfds?.release();
      this.pollfds = new NativeBuffer(Math.max(4096, 8 * armed.length));
    }
    const fds = this.pollfds; // struct pollfd { int fd; short events, revents; }
    armed.forEach((h, i) => {
      fds.dv.setInt32(8 * i, h.fd, true);
      fds.dv.setInt16(8 * i + 4, (h.isReadable ? POLLIN : 0) | (h.isWritable ? POLLOUT : 0), true);
    });
    const n = poll(fds.address, armed.length, 0);
    if (n < 0) throw new SyscallError('poll', errno());
    return n === 0;
  }

  /**
   * @internal A doorbell woke the loop: run the pending bottom halves now
   * rather than in the check phase after every other ready fd. QEMU's
   * aio_dispatch does the same, aio_bh_poll first on a wake-up; a rung
   * doorbell is a vCPU waiting on its device, whose latency this is.
   */
  runBottomHalvesNow(): void {
    if (this.immediate === null) return; // none pending, or a pass is running
    clearImmediate(this.immediate);
    this.dispatch();
  }

  /** @internal An exception from a callback of this loop. */
  fault(error: unknown, where: string): void {
    if (this.onFault === null) throw error;
    this.onFault(error, where);
  }

  /** @internal */
  forget(h: FdHandler): void {
    this.handlers.delete(h);
  }

  /** @internal */
  forgetDoorbell(d: Doorbell): void {
    this.doorbells.delete(d);
  }

  // Bound once: schedule() → wake() allocates only the Immediate itself.
  private readonly wake = (): void => {
    if (this.immediate === null && !this.isClosed) this.immediate = setImmediate(this.dispatch);
  };

  private readonly dispatch = (): void => {
    this.immediate = null;
    // runPass calls wake() again if BHs were scheduled during the pass, or
    // were left unrun by a callback that threw.
    try {
      this.bhs.runPass();
    } catch (e) {
      this.fault(e, `bottom half ${this.bhs.lastThrew}`);
    }
  };
}
