import test from 'ava';
import { BottomHalfList } from '../src/loop/bottom-half.js';
import { MainLoop } from '../src/loop/main-loop.js';

// Synchronous tests drive BottomHalfList passes by hand; `wakes` counts the
// requests for a pass the list made to its owner.
function list() {
  const state = { wakes: 0 };
  const bhs = new BottomHalfList(() => state.wakes++);
  return { bhs, state };
}

test('schedule is idempotent: scheduled twice, runs once', (t) => {
  const { bhs, state } = list();
  let n = 0;
  const bh = bhs.newBh('a', () => n++);
  t.false(bh.scheduled);
  bh.schedule();
  bh.schedule();
  t.true(bh.scheduled);
  t.is(state.wakes, 1, 'one wake for the burst');
  t.is(bhs.runPass(), 1);
  t.is(n, 1);
  t.false(bh.scheduled);
  t.is(bhs.runPass(), 0);
  t.is(n, 1);
});

test('every pending BH runs once per pass, in scheduling order', (t) => {
  const { bhs, state } = list();
  const order: string[] = [];
  const a = bhs.newBh('a', () => order.push('a'));
  const b = bhs.newBh('b', () => order.push('b'));
  const c = bhs.newBh('c', () => order.push('c'));
  c.schedule();
  a.schedule();
  b.schedule();
  a.schedule();
  t.is(state.wakes, 1);
  t.is(bhs.runPass(), 3);
  t.deepEqual(order, ['c', 'a', 'b']);
});

test('a BH scheduled during a pass runs in the next pass, not recursively', (t) => {
  const { bhs, state } = list();
  const log: string[] = [];
  let selfRuns = 0;
  const b = bhs.newBh('b', () => log.push('b'));
  const self = bhs.newBh('self', () => {
    log.push('self');
    if (++selfRuns < 3) self.schedule(); // reschedules itself
  });
  const a = bhs.newBh('a', () => {
    log.push('a');
    b.schedule();
    t.true(b.scheduled);
  });
  a.schedule();
  self.schedule();
  t.is(bhs.runPass(), 2);
  t.deepEqual(log, ['a', 'self']);
  t.is(state.wakes, 2, 'the pass asked for another one');
  t.true(b.scheduled);
  t.is(bhs.runPass(), 2);
  t.deepEqual(log, ['a', 'self', 'b', 'self']);
  t.is(bhs.runPass(), 1);
  t.deepEqual(log, ['a', 'self', 'b', 'self', 'self']);
  t.is(bhs.runPass(), 0);
  t.is(state.wakes, 3);
});

test('a BH already pending for this pass runs once even if scheduled again before it is reached', (t) => {
  const { bhs } = list();
  let bRuns = 0;
  const b = bhs.newBh('b', () => bRuns++);
  const a = bhs.newBh('a', () => b.schedule());
  a.schedule();
  b.schedule();
  bhs.runPass();
  t.is(bRuns, 1);
  t.false(b.scheduled);
  t.false(bhs.hasPending);
});

test('cancel unmarks; a cancelled BH can be scheduled again', (t) => {
  const { bhs } = list();
  let n = 0;
  const bh = bhs.newBh('x', () => n++);
  bh.schedule();
  bh.cancel();
  t.false(bh.scheduled);
  t.is(bhs.runPass(), 0);
  t.is(n, 0);
  bh.schedule();
  bh.cancel();
  bh.schedule();
  t.is(bhs.runPass(), 1);
  t.is(n, 1);
});

test('a BH cancelled by an earlier BH in the same pass does not run', (t) => {
  const { bhs } = list();
  let bRuns = 0;
  const b = bhs.newBh('b', () => bRuns++);
  const a = bhs.newBh('a', () => b.cancel());
  a.schedule();
  b.schedule();
  t.is(bhs.runPass(), 1);
  t.is(bRuns, 0);
});

test('delete: a pending BH is dropped and later schedule() is a no-op', (t) => {
  const { bhs, state } = list();
  let n = 0;
  const bh = bhs.newBh('x', () => n++);
  bh.schedule();
  bh.delete();
  t.true(bh.deleted);
  t.false(bh.scheduled);
  t.is(bhs.runPass(), 0);
  bh.schedule();
  t.false(bh.scheduled);
  t.is(bhs.runPass(), 0);
  t.is(n, 0);
  t.is(state.wakes, 1);
});

test('a BH may delete itself while running', (t) => {
  const { bhs } = list();
  let n = 0;
  const bh = bhs.newBh('x', () => {
    n++;
    bh.delete();
    bh.schedule();
  });
  bh.schedule();
  bhs.runPass();
  bhs.runPass();
  t.is(n, 1);
});

test('a throwing BH: the exception propagates, BHs not reached run in the next pass', (t) => {
  const { bhs, state } = list();
  const log: string[] = [];
  const a = bhs.newBh('a', () => log.push('a'));
  const boom = bhs.newBh('boom', () => {
    later.schedule();
    throw new Error('boom');
  });
  const c = bhs.newBh('c', () => log.push('c'));
  const later = bhs.newBh('later', () => log.push('later'));
  a.schedule();
  boom.schedule();
  c.schedule();
  t.throws(() => bhs.runPass(), { message: 'boom' });
  t.deepEqual(log, ['a']);
  t.true(c.scheduled);
  t.is(state.wakes, 2);
  t.is(bhs.runPass(), 2);
  t.deepEqual(log, ['a', 'c', 'later']);
});

test('close drops pending BHs; schedule after close does nothing', (t) => {
  const { bhs, state } = list();
  let n = 0;
  const bh = bhs.newBh('x', () => n++);
  bh.schedule();
  bhs.close();
  t.false(bh.scheduled);
  bh.schedule();
  t.is(bhs.runPass(), 0);
  t.is(n, 0);
  t.is(state.wakes, 1);
});

// Through the real loop: passes are setImmediate callbacks.

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

test('MainLoop: schedule never runs synchronously; one iteration runs all pending BHs', async (t) => {
  const loop = new MainLoop();
  const log: string[] = [];
  const a = loop.newBh('a', () => log.push('a'));
  const b = loop.newBh('b', () => log.push('b'));
  a.schedule();
  b.schedule();
  a.schedule();
  t.deepEqual(log, []);
  await tick();
  t.deepEqual(log, ['a', 'b']);
  t.is(loop.iterations, 1);
  loop.close();
});

test('MainLoop: a BH rescheduling itself runs once per iteration and lets I/O and timers in', async (t) => {
  const loop = new MainLoop();
  let runs = 0;
  const bh = loop.newBh('spin', () => {
    runs++;
    bh.schedule();
  });
  bh.schedule();
  // A timer still fires while the BH keeps rescheduling: no starvation.
  await new Promise<void>((resolve) => setTimeout(resolve, 20));
  t.true(runs > 1);
  t.is(loop.iterations, runs, 'one run per iteration');
  loop.close();
  const after = runs;
  await tick();
  await tick();
  t.is(runs, after, 'close stops it');
});

test('MainLoop: BHs scheduled by a BH run in the next iteration', async (t) => {
  const loop = new MainLoop();
  const seen: number[] = [];
  const b = loop.newBh('b', () => seen.push(loop.iterations));
  const a = loop.newBh('a', () => {
    seen.push(loop.iterations);
    b.schedule();
  });
  a.schedule();
  await tick();
  await tick();
  t.deepEqual(seen, [1, 2]);
  loop.close();
});

test('a BH that closes the loop stops the rest of the pass', async (t) => {
  const loop = new MainLoop();
  const log: string[] = [];
  const a = loop.newBh('a', () => {
    log.push('a');
    loop.close();
  });
  const b = loop.newBh('b', () => log.push('b'));
  a.schedule();
  b.schedule();
  await tick();
  await tick();
  t.deepEqual(log, ['a']);
  t.false(b.scheduled);
  t.true(loop.closed);
});
