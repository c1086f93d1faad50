// The small legacy devices on the PIO bus, registered as the vCPU thread does:
// isa-debug-exit takes writes of any width at any of its four ports (QEMU's
// iosize=4, which kvm-unit-tests' x86/run uses, with exit() doing outl).
import test from 'ava';
import { PioBus } from '../src/bus/io-bus.js';
import { DebugExit, DEBUG_EXIT_IOSIZE, DEBUG_EXIT_PORT, type MachineEvent } from '../src/devices/platform.js';
import { exitStatusOf } from '../src/vcpu/protocol.js';

function debugExit() {
  const events: MachineEvent[] = [];
  const pio = new PioBus();
  pio.register(new DebugExit((e) => events.push(e)), DEBUG_EXIT_PORT, DEBUG_EXIT_IOSIZE);
  const write = (port: number, size: number, value: number) => pio.lookup(port)!.pioWrite(port, size, value);
  return { pio, events, write };
}

test('debug-exit claims 0xf4-0xf7 and nothing around them', (t) => {
  const { pio } = debugExit();
  for (const p of [0xf4, 0xf5, 0xf6, 0xf7]) t.is(pio.lookup(p)?.name, 'debug-exit', `0x${p.toString(16)}`);
  t.is(pio.lookup(0xf3), undefined);
  t.is(pio.lookup(0xf8), undefined);
});

test('debug-exit: byte, word and dword writes give the value as written; the status is (v << 1) | 1 in 8 bits', (t) => {
  const { events, write } = debugExit();
  write(0xf4, 1, 0x1ff); // a byte write carries 8 bits
  write(0xf4, 2, 0x12345);
  write(0xf4, 4, 0x80000001);
  write(0xf5, 1, 3);
  write(0xf7, 4, 0);
  t.deepEqual(events, [
    { kind: 'debug-exit', code: 0xff },
    { kind: 'debug-exit', code: 0x2345 },
    { kind: 'debug-exit', code: 0x80000001 },
    { kind: 'debug-exit', code: 3 },
    { kind: 'debug-exit', code: 0 },
  ]);
  const statuses = events.map((e) => exitStatusOf('debug-exit', e.kind === 'debug-exit' ? e.code : -1));
  // QEMU: exit((val << 1) | 1), which the shell sees modulo 256.
  t.deepEqual(statuses, [0xff, 0x8b, 3, 7, 1]);
});

test('debug-exit reads all-ones', (t) => {
  const { pio } = debugExit();
  t.is(pio.lookup(0xf4)!.pioRead(0xf4, 4), 0xffffffff);
});
