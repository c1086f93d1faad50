// Regression: an fd watch must never unregister another fd that was given its
// fd number later. libuv's uv_poll_stop, uv_poll_start and uv_close issue
// EPOLL_CTL_DEL for the handle's fd number even when the handle is stopped, and
// libuv says an fd may be closed once its poll is stopped. When FdWatch polled
// the caller's number, a stopped watch whose fd had been closed, stopped or
// closed again after the number went to a new
// fd deleted the new fd's epoll registration: its watch never fired again,
// although the fd was readable. The addon now polls a duplicate it owns.
// (An unclosed watch is never garbage-collected: its callback is a persistent
// handle that reaches the watch, so only close() releases it.)
//
// Each test makes the reuse exact with dup3 (the new fd gets the old number),
// proves the new watch is registered by one callback, does the stale action,
// then makes the new fd readable again: the callback must come.
import test from 'ava';
import koffi from 'koffi';
import { FdWatch } from '../src/loop/addon.js';
import * as libc from '../src/sys/libc.js';
import { until } from './helpers/net-fakes.js';

const lib = koffi.load('libc.so.6');
const dup3 = lib.func('int dup3(int oldfd, int newfd, int flags)') as (oldfd: number, newfd: number, flags: number) => number;

const buf = new libc.NativeBuffer(8);

function makeEventfd(): number {
  const fd = libc.eventfd(0, libc.EFD_NONBLOCK | libc.EFD_CLOEXEC);
  if (fd < 0) throw new libc.SyscallError('eventfd', libc.errno());
  return fd;
}

/** A new eventfd at exactly the number `fd` (which must be free). */
function eventfdAt(fd: number): number {
  const e = makeEventfd();
  if (e === fd) return fd; // the lowest free number is often the one just closed
  if (dup3(e, fd, libc.O_CLOEXEC) !== fd) throw new libc.SyscallError('dup3', libc.errno());
  libc.close(e);
  return fd;
}

function ring(fd: number): void {
  buf.dv.setBigUint64(0, 1n, true);
  if (libc.write(fd, buf.address, 8) !== 8) throw new libc.SyscallError('write', libc.errno());
}

/** Watches a new eventfd at `fd`'s number, registered for sure (it fired once). */
async function liveWatchAt(fd: number): Promise<{ watch: FdWatch; events: () => number; close: () => void }> {
  const b = eventfdAt(fd);
  let events = 0;
  const watch = new FdWatch(b, (r) => {
    if (r) {
      libc.read(b, buf.address, 8); // drain: level-triggered
      events++;
    }
  });
  watch.start(true, false);
  ring(b);
  await until(() => events === 1, 2000, 'first readable callback');
  return { watch, events: () => events, close: () => { watch.close(); libc.close(b); } };
}

for (const [action, stale] of [
  ['closed', (w: FdWatch) => w.close()],
  ['stopped again', (w: FdWatch) => w.stop()],
  ['disarmed with start(false, false)', (w: FdWatch) => w.start(false, false)],
] as const) {
  test.serial(`a stopped watch whose fd was closed and its number reused, then ${action}: the new fd's watch still fires`, async (t) => {
    const a = makeEventfd();
    const old = new FdWatch(a, () => t.fail('the old watch fired'));
    old.start(true, false);
    old.stop(); // libuv: the fd may be closed now
    libc.close(a);
    const live = await liveWatchAt(a);
    t.teardown(() => {
      old.close();
      live.close();
    });
    stale(old);
    ring(a);
    await until(() => live.events() === 2, 2000, 'readable callback after the stale watch was touched');
    t.pass();
  });
}

test.serial('two watches on one fd are independent: closing one leaves the other registered', async (t) => {
  const fd = makeEventfd();
  let a = 0;
  let b = 0;
  const wa = new FdWatch(fd, () => a++);
  const wb = new FdWatch(fd, () => {
    b++;
    libc.read(fd, buf.address, 8);
  });
  t.teardown(() => {
    wa.close();
    wb.close();
    libc.close(fd);
  });
  wa.start(true, false);
  wb.start(true, false);
  ring(fd);
  await until(() => b === 1, 2000, 'readable callback on the second watch');
  wa.close();
  ring(fd);
  await until(() => b === 2, 2000, 'readable callback after the first watch closed');
  t.true(a >= 1);
});
