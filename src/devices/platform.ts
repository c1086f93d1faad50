// The small legacy devices a PC guest expects: the i8042's reset line, the
// QEMU-convention debug-exit port, and the POST-code port Linux uses for I/O
// delays. Each is a few lines; together they end runs and absorb noise.
import type { PioDevice } from '../bus/io-bus.js';

export type MachineEvent = { kind: 'reset' } | { kind: 'poweroff' } | { kind: 'debug-exit'; code: number };

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

/** The 8259s' vectors as a PC BIOS programs them (IRQ 0-7 at 0x08, IRQ 8-15 at 0x70), which real-mode code expects. */
export const PIC_MASTER_VECTOR_BASE = 0x08;
export const PIC_SLAVE_VECTOR_BASE = 0x70;

/** Where isa-debug-exit sits: kvm-unit-tests' x86/run gives QEMU iobase=0xf4,iosize=4 and its exit() does outl to 0xf4. */
export const DEBUG_EXIT_PORT = 0xf4;
export const DEBUG_EXIT_IOSIZE = 4;

/**
 * isa-debug-exit (QEMU's convention): a write of any width to any of its ports
 * ends the run with status (value << 1) | 1; `code` is the value as written
 * (the access width's bits), the status keeps its low 8 bits as exit(3) does.
 */
export class DebugExit implements PioDevice {
  readonly name = 'debug-exit';
  constructor(private readonly onEvent: (e: MachineEvent) => void) {}
  pioRead(): number {
    return 0xffffffff;
  }
  pioWrite(_port: number, size: number, value: number): void {
    const code = size === 1 ? value & 0xff : size === 2 ? value & 0xffff : value >>> 0;
    this.onEvent({ kind: 'debug-exit', code });
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
