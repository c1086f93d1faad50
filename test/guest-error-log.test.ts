// The rate-limited log of refused guest values: a flood gives a bounded
// number of lines, each naming the device, and a count of what was left out.
import test from 'ava';
import { GuestErrorLog } from '../src/devices/virtio/guest-error-log.js';
import { hostileRig } from './helpers/hostile-rig.js';

test('at most `burst` lines per window, then one summary with the count', (t) => {
  let now = 0;
  const lines: string[] = [];
  const log = new GuestErrorLog('virtio-net', { burst: 3, intervalMs: 1000, sink: (l) => lines.push(l), now: () => now });
  for (let i = 0; i < 100; i++) log.report(`bad thing ${i}`);
  t.deepEqual(lines, ['virtio-net: bad thing 0', 'virtio-net: bad thing 1', 'virtio-net: bad thing 2']);
  now = 1000;
  log.report('later');
  t.deepEqual(lines.slice(3), ['virtio-net: (97 more refused guest values suppressed)', 'virtio-net: later']);
  t.is(log.suppressed, 97);
  log.flush();
  t.is(lines.length, 5, 'nothing left to summarise');
  t.false(log.admit() && log.admit(), 'the summary took a slot of the window');
});

test('a flood over ten seconds stays within (burst) lines per second', (t) => {
  let now = 0;
  let lines = 0;
  const log = new GuestErrorLog('x', { sink: () => { lines++; }, now: () => now });
  for (let i = 0; i < 1_000_000; i++) {
    now = i / 100_000 * 1000; // 100 000 events a second
    if (log.admit()) log.write(`event ${i}`);
  }
  log.flush();
  t.true(lines <= 5 * 11 + 1, `${lines} lines`);
  t.is(log.printed, lines);
  t.true(log.suppressed > 999_000);
});

test('the transport and the data path report refused guest values through it, bounded under a flood', (t) => {
  const r = hostileRig();
  t.teardown(() => r.close());
  for (let i = 0; i < 100_000; i++) r.dev.modernRead(3, 4); // a hole in common config
  for (let i = 0; i < 1000; i++) {
    r.dev.modernWrite(22, 2, 0);
    r.dev.modernWrite(24, 2, 3); // queue size not a power of two
    r.dev.modernWrite(28, 2, 1);
  }
  t.is(r.dev.stats.badAccesses, 100_000);
  t.is(r.dev.stats.refusedQueues, 1000);
  t.true(r.logLines.length >= 1 && r.logLines.length <= 12, `${r.logLines.length} lines for 101 000 refusals`);
  t.regex(r.logLines[0], /^virtio-net: ignored a 4-byte read of common config offset 0x3$/);
});
