// A stand-in vCPU thread for main-loop tests: it gets only the doorbell's fd
// number and a SharedArrayBuffer, and rings the doorbell.
// workerData: { fd, mode: 'burst' | 'pingpong', count, sab }
//   burst:    ring `count` times as fast as possible.
//   pingpong: `count` rounds of: bump sab[0], ring, wait until the main thread
//             echoes the value in sab[1].
import { workerData, parentPort } from 'node:worker_threads';
import { DoorbellRinger } from '../../src/loop/bottom-half.js';

const { fd, mode, count, sab } = workerData as { fd: number; mode: 'burst' | 'pingpong'; count: number; sab: SharedArrayBuffer };
const ringer = new DoorbellRinger(fd);
const shared = new Int32Array(sab);

const t0 = performance.now();
if (mode === 'burst') {
  for (let i = 0; i < count; i++) {
    Atomics.add(shared, 0, 1);
    ringer.ring();
  }
} else {
  for (let i = 1; i <= count; i++) {
    Atomics.store(shared, 0, i);
    ringer.ring();
    // Wait for the echo: the BH on the main thread stores i into shared[1].
    while (Atomics.load(shared, 1) !== i) Atomics.wait(shared, 1, Atomics.load(shared, 1), 1000);
  }
}
parentPort?.postMessage({ ms: performance.now() - t0 });
