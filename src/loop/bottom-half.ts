// Bottom halves with QEMU `qemu_bh` semantics (util/async.c), on one thread:
// - schedule() marks a BH pending; scheduling a pending BH again is a no-op,
//   so it runs once however often it was scheduled;
// - each pass (one main-loop iteration) runs every BH that was pending when
//   the pass began, once, in the order they were first scheduled (FIFO: QEMU's
//   order is an implementation detail, FIFO is the predictable choice);
// - a BH scheduled while a pass runs (by a BH, or itself) runs in the next
//   pass, never recursively and never in the same pass, unless it was
//   already pending for this pass and not reached yet (then it simply runs once);
// - cancel() unmarks; delete() unmarks for good: scheduling a deleted BH is a
//   silent no-op (late wake-ups during teardown are normal, not bugs).
//
// This file also holds the worker side of a doorbell (DoorbellRinger): the
// only piece a vCPU worker needs, so a worker imports it without loading the
// addon.
import { write as libcWrite, errno, EAGAIN, SyscallError, NativeBuffer } from '../sys/libc.js';

export type BhCallback = () => void;

export class BottomHalf {
  /** Pending for a pass (schedule() since the last run, not cancelled). */
  private pending = false;
  /** In the list's queue (may be stale: cancelled or deleted entries are skipped). */
  queued = false;
  private dead = false;

  /** @internal Created by BottomHalfList.newBh / MainLoop.newBh. */
  constructor(
    private readonly list: BottomHalfList,
    readonly name: string,
    private readonly callback: BhCallback,
  ) {}

  get scheduled(): boolean {
    return this.pending;
  }

  get deleted(): boolean {
    return this.dead;
  }

  /** Runs the callback once in the next pass (or this one, see the file comment). Idempotent. */
  schedule(): void {
    if (this.pending || this.dead) return;
    this.pending = true;
    if (!this.queued) this.list.enqueue(this);
  }

  /** Unschedules; a later schedule() works as usual. */
  cancel(): void {
    this.pending = false;
  }

  /** Unschedules for good; schedule() becomes a no-op. */
  delete(): void {
    this.pending = false;
    this.dead = true;
  }

  /** @internal Runs the callback if still pending; true if it ran. */
  run(): boolean {
    this.queued = false;
    if (!this.pending) return false;
    this.pending = false;
    this.callback();
    return true;
  }
}

/**
 * The set of bottom halves of one loop. `wake` is called when the first BH
 * becomes pending while no pass is queued; the owner must then arrange one
 * call of runPass() (MainLoop does it with setImmediate).
 */
export class BottomHalfList {
  // Two arrays swapped per pass, so passes allocate nothing once they are warm.
  private queue: BottomHalf[] = [];
  private running: BottomHalf[] = [];
  private inPass = false;
  private closed = false;
  /** Passes run so far (statistics and tests). */
  passes = 0;
  /** The name of the last BH whose callback threw (for the error report). */
  lastThrew = '';

  constructor(private readonly wake: () => void) {}

  newBh(name: string, callback: BhCallback): BottomHalf {
    return new BottomHalf(this, name, callback);
  }

  /** True when a BH waits for the next pass. */
  get hasPending(): boolean {
    return this.queue.length > 0;
  }

  /** @internal */
  enqueue(bh: BottomHalf): void {
    if (this.closed) {
      bh.cancel();
      return;
    }
    bh.queued = true;
    this.queue.push(bh);
    // During a pass the owner re-arms after it (see runPass), not here.
    if (this.queue.length === 1 && !this.inPass) this.wake();
  }

  /**
   * Runs one pass: every BH pending when it starts, once. BHs scheduled meanwhile
   * wait for the next pass, and `wake` is called for it. Returns how many ran.
   * If a callback throws, the BHs not yet reached stay pending (they run in
   * the next pass) and the exception propagates.
   */
  runPass(): number {
    if (this.inPass || this.closed) return 0;
    const batch = this.queue;
    this.queue = this.running;
    this.running = batch;
    this.inPass = true;
    this.passes++;
    let ran = 0;
    let i = 0;
    try {
      for (; i < batch.length; i++) {
        if (batch[i].run()) ran++;
      }
    } finally {
      if (i < batch.length) {
        // A callback threw at batch[i]: the rest go in front of what was
        // scheduled during this pass, keeping FIFO order.
        this.lastThrew = batch[i].name;
        if (!this.closed) {
          const rest = batch.slice(i + 1);
          const later = this.queue;
          this.queue = rest;
          for (const bh of later) this.queue.push(bh);
          later.length = 0;
        }
      }
      batch.length = 0;
      this.inPass = false;
      if (this.queue.length > 0 && !this.closed) this.wake();
    }
    return ran;
  }

  /**
   * Drops every pending BH, including the rest of a pass in progress (a BH
   * may close the loop); later schedule() calls do nothing.
   */
  close(): void {
    this.closed = true;
    for (const bh of this.running) bh.cancel();
    for (const bh of this.queue) {
      bh.cancel();
      bh.queued = false;
    }
    this.queue.length = 0;
  }
}

const EVENTFD_ONE = 1n;

/**
 * The worker side of a doorbell: adds 1 to an eventfd the main loop watches
 * (MainLoop.newDoorbell). Needs only the fd number, so it can be built in any
 * thread; one 8-byte native buffer is allocated once, ring() allocates nothing.
 * A KVM ioeventfd may be bound to the same eventfd, ringing it with no exit.
 */
export class DoorbellRinger {
  private readonly buf = new NativeBuffer(8);

  constructor(readonly fd: number) {
    this.buf.dv.setBigUint64(0, EVENTFD_ONE, true);
  }

  /** Wakes the main loop. EAGAIN (counter saturated) means it is rung already. */
  ring(): void {
    if (libcWrite(this.fd, this.buf.address, 8) === 8) return;
    const e = errno();
    if (e !== EAGAIN) throw new SyscallError('write(doorbell)', e);
  }
}
