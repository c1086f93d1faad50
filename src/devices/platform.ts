// The small legacy devices a PC guest expects: the i8042's reset line, the
// QEMU-convention debug-exit port, and the POST-code port Linux uses for I/O
// delays. Each is a few lines; together they end runs and absorb noise.
import type { PioDevice } from '../bus/io-bus.js';

export type MachineEvent = { kind: 'reset' } | { kind: 'debug-exit'; code: number };

/** i8042 keyboard controller: only what a guest without a keyboard touches. 0xFE on port 0x64 pulses CPU reset. */
export class I8042 implements PioDevice {
  readonly name = 'i8042';
  constructor(private readonly onEvent: (e: MachineEvent) => void) {}
  pioRead(port: number): number {
    // Status: output buffer empty, input buffer empty, system flag set.
    return port === 0x64 ? 0x04 : 0x00;
  }
  pioWrite(port: number, _size: number, value: number): void {
    if (port === 0x64 && (value & 0xff) === 0xfe) this.onEvent({ kind: 'reset' });
  }
}

/** isa-debug-exit at 0xf4 (QEMU's convention): a write ends the run with status (value << 1) | 1. */
export class DebugExit implements PioDevice {
  readonly name = 'debug-exit';
  constructor(private readonly onEvent: (e: MachineEvent) => void) {}
  pioRead(): number {
    return 0xffffffff;
  }
  pioWrite(_port: number, _size: number, value: number): void {
    this.onEvent({ kind: 'debug-exit', code: value & 0xff });
  }
}

/** Port 0x80 (POST codes; Linux's io_delay) and friends: writes ignored, reads all-ones, no counting as unclaimed. */
export class Sink implements PioDevice {
  constructor(readonly name: string) {}
  pioRead(): number {
    return 0xffffffff;
  }
  pioWrite(): void {}
}
