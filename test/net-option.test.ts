import test from 'ava';
import { parseNetOption, parseMac, macBytes, DEFAULT_MAC } from '../src/net/net-option.js';
import { TsvisorError } from '../src/errors.js';

test('--net forms', (t) => {
  t.deepEqual(parseNetOption('tap:tap0'), { mode: 'tap', ifname: 'tap0', mac: DEFAULT_MAC });
  t.deepEqual(parseNetOption('tap'), { mode: 'tap', ifname: undefined, mac: DEFAULT_MAC });
  t.deepEqual(parseNetOption('sandbox,mac=52:54:00:AB:cd:01'), { mode: 'sandbox', mac: '52:54:00:ab:cd:01' });
  t.deepEqual(parseNetOption('tap:vm-net.1,mac=02:00:00:00:00:01'), { mode: 'tap', ifname: 'vm-net.1', mac: '02:00:00:00:00:01' });
  t.deepEqual(parseNetOption('sandbox,queues=4'), { mode: 'sandbox', mac: DEFAULT_MAC, queues: 4 });
  t.deepEqual(parseNetOption('tap:t0,queues=1,mac=02:00:00:00:00:01'), { mode: 'tap', ifname: 't0', mac: '02:00:00:00:00:01', queues: 1 });
});

test('malformed --net and MACs are usage errors that say what to write', (t) => {
  for (const bad of ['bridge', 'tap:', 'tap:this-name-is-too-long', 'tap:a b', 'sandbox:x', 'tap:t0,speed=10', 'tap:t0,mac=zz:00:00:00:00:00', 'sandbox,queues=0', 'sandbox,queues=17', 'sandbox,queues=two', 'sandbox,queues=']) {
    const e = t.throws(() => parseNetOption(bad), { instanceOf: TsvisorError });
    t.is(e!.exitCode, 2, bad);
  }
  t.throws(() => parseNetOption('sandbox,queues=0'), { message: /--net queues=0 is not a number of queue pairs/ });
  t.throws(() => parseMac('01:00:5e:00:00:01'), { message: /multicast/ });
  t.throws(() => parseMac('52:54:00:12:34'), { message: /not a MAC/ });
  t.deepEqual([...macBytes('52:54:00:12:34:56')], [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
});
