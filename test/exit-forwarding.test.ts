// The SMP mailbox (src/vcpu/exit-forwarding.ts): APs on worker threads post
// device accesses, the BSP's server answers them with its own buses. Two
// "APs" hammer one register and their own scratch words at once; nothing may
// be lost, torn, or answered to the wrong AP.
import test from 'ava';
import { Worker } from 'node:worker_threads';
import { MmioBus, PioBus, type MmioDevice, type PioDevice } from '../src/bus/io-bus.js';
import { createMailbox, MailboxServer } from '../src/vcpu/exit-forwarding.js';

const FORWARDING = new URL('../src/vcpu/exit-forwarding.js', import.meta.url).href;
const COUNTER_PORT = 0x510;
const SCRATCH_BASE = 0xfe000000;

/** A register every AP adds to (a read returns the sum so far), as a doorbell or a status register is shared. */
class Counter implements PioDevice {
  readonly name = 'counter';
  total = 0;
  pioRead(): number {
    return this.total;
  }
  pioWrite(_port: number, _size: number, value: number): void {
    this.total += value;
  }
}

/** 4 KiB of RAM-like MMIO. */
class Scratch implements MmioDevice {
  readonly name = 'scratch';
  readonly words = new Uint32Array(1024);
  mmioRead(offset: number): number {
    return this.words[offset >>> 2];
  }
  mmioWrite(offset: number, _size: number, value: number): void {
    this.words[offset >>> 2] = value;
  }
}

/** An AP: `rounds` times, add 1 to the counter, write a pattern to its own word, read it back; counts mismatches. */
const AP_CODE = `
const { workerData } = require('node:worker_threads');
import(workerData.url).then(({ ForwardedDevice }) => {
  const { mailbox, cpu, rounds, shared } = workerData;
  const s = new Int32Array(shared);
  const dev = new ForwardedDevice(mailbox, cpu, () => Atomics.add(s, 2, 1), () => false);
  let bad = 0;
  for (let i = 0; i < rounds; i++) {
    dev.pioWrite(${COUNTER_PORT}, 4, 1);
    const pattern = ((cpu << 24) | i) >>> 0;
    dev.mmioWrite(${SCRATCH_BASE} + cpu * 4, 4, pattern);
    if (dev.mmioRead(${SCRATCH_BASE} + cpu * 4, 4) !== pattern) bad++;
  }
  dev.setHalted(true);
  Atomics.add(s, 1, bad);
  Atomics.add(s, 0, 1);
});
`;

test('two APs forward 3 × 5 000 accesses at once: every write arrives once, every read answers its own AP, every post kicks', async (t) => {
  const cpus = 3;
  const rounds = 5000;
  const mailbox = createMailbox(cpus);
  const pio = new PioBus();
  const mmio = new MmioBus();
  const counter = new Counter();
  const scratch = new Scratch();
  pio.register(counter, COUNTER_PORT, 1);
  mmio.register(scratch, SCRATCH_BASE, 4096);
  const server = new MailboxServer(mailbox, pio, mmio);
  // [APs done, mismatches, kicks]
  const shared = new SharedArrayBuffer(12);
  const s = new Int32Array(shared);
  const workers = [1, 2].map((cpu) => new Worker(AP_CODE, { eval: true, workerData: { url: FORWARDING, mailbox, cpu, rounds, shared } }));
  t.false(server.allApsHalted(), 'no AP has said it halted yet');
  // The BSP's loop, reduced to its serve() calls.
  const deadline = Date.now() + 60_000;
  while (Atomics.load(s, 0) < 2 && Date.now() < deadline) server.serve();
  t.is(Atomics.load(s, 0), 2, 'both APs finished');
  t.is(counter.total, 2 * rounds, 'every counter write arrived exactly once');
  t.is(Atomics.load(s, 1), 0, 'every read returned what that AP wrote');
  t.is(Atomics.load(s, 2), 2 * rounds * 3, 'one kick of the BSP per forwarded access');
  t.is(pio.counts[COUNTER_PORT], 2 * rounds, 'counted on the BSP\'s bus');
  t.true(server.allApsHalted());
  await Promise.all(workers.map((w) => w.terminate()));
});

test('after the BSP closes the mailbox, an AP\'s access ends at once with all-ones', async (t) => {
  const mailbox = createMailbox(2);
  const server = new MailboxServer(mailbox, new PioBus(), new MmioBus());
  server.close();
  const shared = new SharedArrayBuffer(8);
  const w = new Worker(`
    const { workerData } = require('node:worker_threads');
    import(workerData.url).then(({ ForwardedDevice }) => {
      const dev = new ForwardedDevice(workerData.mailbox, 1, () => {}, () => false);
      const s = new Int32Array(workerData.shared);
      s[0] = dev.pioRead(0x3f8, 1);
      Atomics.store(s, 1, 1);
      Atomics.notify(s, 1);
    });`, { eval: true, workerData: { url: FORWARDING, mailbox, shared } });
  const s = new Int32Array(shared);
  Atomics.wait(s, 1, 0, 10_000);
  t.is(Atomics.load(s, 1), 1, 'the AP did not wait for an answer');
  t.is(s[0] >>> 0, 0xffffffff);
  await w.terminate();
});
