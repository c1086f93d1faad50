import test from 'ava';
import koffi from 'koffi';
import { Worker } from 'node:worker_threads';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { MainLoop } from '../src/loop/main-loop.js';
import { DoorbellRinger } from '../src/loop/bottom-half.js';
import * as libc from '../src/sys/libc.js';

const lib = koffi.load('libc.so.6');
const pipe2 = lib.func('int pipe2(uintptr_t fds, int flags)') as (fds: bigint, flags: number) => number;

function makePipe(): [number, number] {
  const b = new libc.NativeBuffer(8);
  if (pipe2(b.address, libc.O_NONBLOCK | libc.O_CLOEXEC) !== 0) throw new libc.SyscallError('pipe2', libc.errno());
  return [b.dv.getInt32(0, true), b.dv.getInt32(4, true)];
}

function makeEventfd(): number {
  const fd = libc.eventfd(0, libc.EFD_NONBLOCK | libc.EFD_CLOEXEC);
  if (fd < 0) throw new libc.SyscallError('eventfd', libc.errno());
  return fd;
}

const buf = new libc.NativeBuffer(64);
function writeU64(fd: number, v: bigint): number {
  buf.dv.setBigUint64(0, v, true);
  return libc.write(fd, buf.address, 8);
}
function readU64(fd: number): bigint {
  return libc.read(fd, buf.address, 8) === 8 ? buf.dv.getBigUint64(0, true) : -1n;
}

const workerUrl = new URL('./helpers/doorbell-worker.js', import.meta.url);

/** Runs the worker to completion; resolves with the milliseconds its ring loop took. */
function runWorker(fd: number, mode: 'burst' | 'pingpong', count: number, sab: SharedArrayBuffer): Promise<number> {
  return new Promise((resolve, reject) => {
    const w = new Worker(workerUrl, { workerData: { fd, mode, count, sab } });
    let ms = -1;
    w.on('message', (m: { ms: number }) => (ms = m.ms));
    w.once('error', reject);
    w.once('exit', (code) => (code === 0 ? resolve(ms) : reject(new Error(`worker exit ${code}`))));
  });
}

/**
 * Lets libuv go round `n` times: each setImmediate callback runs after a poll
 * phase, where a ready fd that is watched gets its callback. What has not
 * happened after that will not happen without a new event.
 */
async function loopTurns(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
}

function until(cond: () => boolean, ms = 5000): Promise<void> {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const poll = () => {
      if (cond()) resolve();
      else if (Date.now() - t0 > ms) reject(new Error('timed out'));
      else setTimeout(poll, 1);
    };
    poll();
  });
}

test('doorbell rung from a worker_thread wakes a BH', async (t) => {
  const loop = new MainLoop();
  const sab = new SharedArrayBuffer(8);
  const shared = new Int32Array(sab);
  let runs = 0;
  let seen = 0;
  const bh = loop.newBh('kick', () => {
    runs++;
    seen = Atomics.load(shared, 0);
  });
  const bell = loop.newDoorbell('kick', bh);
  await runWorker(bell.fd, 'burst', 1, sab);
  await until(() => runs === 1);
  t.is(seen, 1, 'the worker’s store before ring() is visible to the BH');
  t.is(bell.wakeups, 1);
  loop.close();
});

test('doorbell: a burst of rings coalesces; the last ring is never lost', async (t) => {
  const loop = new MainLoop();
  const sab = new SharedArrayBuffer(8);
  const shared = new Int32Array(sab);
  let runs = 0;
  let last = 0;
  const bh = loop.newBh('kick', () => {
    runs++;
    last = Atomics.load(shared, 0);
  });
  const bell = loop.newDoorbell('kick', bh);
  await runWorker(bell.fd, 'burst', 10_000, sab);
  await until(() => last === 10_000);
  t.true(runs >= 1 && runs <= 10_000);
  t.log(`10000 rings -> ${bell.wakeups} wake-ups, ${runs} BH runs`);
  loop.close();
});

test('doorbell ping-pong with a worker: every ring wakes the BH', async (t) => {
  const loop = new MainLoop();
  const sab = new SharedArrayBuffer(8);
  const shared = new Int32Array(sab);
  let runs = 0;
  const bh = loop.newBh('echo', () => {
    runs++;
    Atomics.store(shared, 1, Atomics.load(shared, 0));
    Atomics.notify(shared, 1);
  });
  const bell = loop.newDoorbell('echo', bh);
  const rounds = 2000;
  const ms = await runWorker(bell.fd, 'pingpong', rounds, sab);
  const us = (ms * 1000) / rounds;
  t.is(runs, rounds);
  t.log(`round trip worker -> doorbell -> BH -> Atomics.notify: ${us.toFixed(1)} µs`);
  loop.close();
});

test('doorbell rung from the main thread and by a DoorbellRinger on the fd', async (t) => {
  const loop = new MainLoop();
  let runs = 0;
  const bell = loop.newDoorbell('x', loop.newBh('x', () => runs++));
  bell.ring();
  await until(() => runs === 1);
  new DoorbellRinger(bell.fd).ring();
  await until(() => runs === 2);
  t.is(bell.wakeups, 2);
  loop.close();
  t.is(libc.fcntl(bell.fd, libc.F_GETFL, 0), -1, 'close() closed the eventfd');
});

test('watchFd on an eventfd: readable, then disarmed; writable toggled', async (t) => {
  const loop = new MainLoop();
  const fd = makeEventfd();
  let readable = 0;
  let writable = 0;
  const h = loop.watchFd(fd, {
    onReadable: () => {
      readable++;
      readU64(fd); // drain, or it stays readable
    },
    onWritable: () => {
      writable++;
      h.setWritable(false); // an eventfd is always writable: one shot
    },
  });
  t.true(h.isReadable);
  t.true(h.isWritable);
  await until(() => writable === 1);
  t.is(readable, 0);
  writeU64(fd, 5n);
  await until(() => readable === 1);
  h.setReadable(false);
  writeU64(fd, 1n);
  await loopTurns(2);
  t.is(readable, 1, 'not called while disarmed');
  h.setReadable(true);
  await until(() => readable === 2);
  h.setWritable(true);
  await until(() => writable === 2);
  h.close();
  libc.close(fd);
  loop.close();
});

test('watchFd: initial arming follows options; close from inside the callback', async (t) => {
  const loop = new MainLoop();
  const fd = makeEventfd();
  let writable = 0;
  let readable = 0;
  const h = loop.watchFd(
    fd,
    {
      onReadable: () => {
        readable++;
        h.close(); // stops the writable callback for this same event too
      },
      onWritable: () => writable++,
    },
    { writable: false },
  );
  t.false(h.isWritable);
  await loopTurns(2);
  t.is(writable, 0);
  h.setWritable(true);
  await until(() => writable > 0);
  const w = writable;
  writeU64(fd, 1n);
  await until(() => readable === 1);
  await loopTurns(2);
  t.is(readable, 1);
  t.true(writable - w <= 1, 'stopped after close');
  libc.close(fd);
  loop.close();
});

test('watchFd on a pipe: data, then EOF, are readable events', async (t) => {
  const loop = new MainLoop();
  const [rd, wr] = makePipe();
  const got: string[] = [];
  let eof = false;
  const h = loop.watchFd(rd, {
    onReadable: () => {
      const n = libc.read(rd, buf.address, 64);
      if (n === 0) {
        eof = true;
        h.close();
      } else if (n > 0) got.push(Buffer.from(buf.bytes.subarray(0, n)).toString());
    },
  });
  buf.bytes.set(Buffer.from('ping'));
  libc.write(wr, buf.address, 4);
  await until(() => got.length === 1);
  t.deepEqual(got, ['ping']);
  libc.close(wr);
  await until(() => eof);
  libc.close(rd);
  loop.close();
});

test('BH scheduled from an fd callback runs in the same loop iteration (check phase after poll)', async (t) => {
  const loop = new MainLoop();
  const fd = makeEventfd();
  const order: string[] = [];
  const bh = loop.newBh('after-io', () => order.push('bh'));
  const h = loop.watchFd(fd, {
    onReadable: () => {
      readU64(fd);
      order.push('io');
      bh.schedule();
      // A timer queued now can only run in a later iteration.
      setTimeout(() => order.push('timer'), 0);
    },
  });
  writeU64(fd, 1n);
  await until(() => order.length === 3);
  t.deepEqual(order, ['io', 'bh', 'timer']);
  h.close();
  libc.close(fd);
  loop.close();
});

test('after loop.close() Node exits: no handle or immediate left behind', (t) => {
  const mainLoopUrl = new URL('../src/loop/main-loop.js', import.meta.url).href;
  const script = `
    import { MainLoop } from ${JSON.stringify(mainLoopUrl)};
    const loop = new MainLoop();
    const bh = loop.newBh('spin', () => bh.schedule());
    bh.schedule();
    const bell = loop.newDoorbell('bell', loop.newBh('b', () => {}));
    bell.ring();
    loop.watchFd(1, { onWritable: () => {} });
    setTimeout(() => { loop.close(); console.log('closed'); }, 50);
  `;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    timeout: 10_000,
    encoding: 'utf8',
    cwd: fileURLToPath(new URL('../..', import.meta.url)),
  });
  t.is(r.error, undefined, 'did not time out');
  t.is(r.status, 0, r.stderr);
  t.is(r.stdout.trim(), 'closed');
});

test('watchFd and newDoorbell refuse a closed loop', (t) => {
  const loop = new MainLoop();
  loop.close();
  t.throws(() => loop.watchFd(0, {}), { message: /closed/ });
  t.throws(() => loop.newDoorbell('x', loop.newBh('x', () => {})), { message: /closed/ });
});

test('isIdle: false while a BH is pending, a doorbell is rung or a watched fd is ready; true once all ran', async (t) => {
  const loop = new MainLoop();
  t.teardown(() => loop.close());
  t.true(loop.isIdle(), 'a new loop');
  let runs = 0;
  const bh = loop.newBh('x', () => runs++);
  bh.schedule();
  t.false(loop.isIdle(), 'a scheduled BH');
  await until(() => loop.isIdle());
  t.is(runs, 1);
  const bell = loop.newDoorbell('y', bh);
  bell.ring();
  t.false(loop.isIdle(), 'a rung doorbell (its eventfd is readable)');
  await until(() => loop.isIdle());
  t.is(runs, 2, 'idle only after the doorbell\'s BH ran');
  const fd = makeEventfd();
  t.teardown(() => libc.close(fd));
  let reads = 0;
  const h = loop.watchFd(fd, { onReadable: () => { reads++; readU64(fd); } }, { readable: false });
  writeU64(fd, 1n);
  t.true(loop.isIdle(), 'a ready fd that is not watched for readability');
  h.setReadable(true);
  t.false(loop.isIdle(), 'a ready fd watched for readability');
  await until(() => loop.isIdle());
  t.is(reads, 1);
  h.setWritable(true); // an eventfd is always writable
  t.false(loop.isIdle(), 'a writable fd watched for writability');
  h.close();
  t.true(loop.isIdle());
});

test('onFault receives what a BH or an fd callback threw, with where; the other BHs of the pass still run', async (t) => {
  const loop = new MainLoop();
  t.teardown(() => loop.close());
  const faults: string[] = [];
  loop.onFault = (e, where) => faults.push(`${where}: ${(e as Error).message}`);
  let after = 0;
  loop.newBh('bad', () => {
    throw new Error('bh bug');
  }).schedule();
  loop.newBh('good', () => after++).schedule();
  await until(() => loop.isIdle());
  t.deepEqual(faults, ['bottom half bad: bh bug']);
  t.is(after, 1, 'the BH after the one that threw ran');
  const fd = makeEventfd();
  t.teardown(() => libc.close(fd));
  const h = loop.watchFd(fd, {
    onReadable: () => {
      readU64(fd);
      throw new Error('fd bug');
    },
  });
  writeU64(fd, 1n);
  await until(() => faults.length === 2);
  t.is(faults[1], `the handler of fd ${fd}: fd bug`);
  h.close();
});
