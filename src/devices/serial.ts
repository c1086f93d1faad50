// A 16550A UART (COM1: ports 0x3f8-0x3ff, IRQ 4), the guest's console.
// Register state lives in a SharedArrayBuffer: the vCPU thread handles the
// guest's register accesses, and the main thread, when terminal input arrives,
// queues bytes and raises the receive interrupt while the vCPU sleeps in HLT.
// Transmitted bytes go to an output ring the main thread drains.
import type { PioDevice } from '../bus/io-bus.js';
import { ByteRing } from '../util/byte-ring.js';

export const COM1_BASE = 0x3f8;
export const COM1_IRQ = 4;

const UART_IER_RDI = 0x01;
const UART_IER_THRI = 0x02;
const UART_IER_RLSI = 0x04;
const UART_IER_MSI = 0x08;
const UART_IIR_NO_INT = 0x01;
const UART_IIR_MSI = 0x00;
const UART_IIR_THRI = 0x02;
const UART_IIR_RDI = 0x04;
const UART_IIR_FIFO_ENABLED = 0xc0;
const UART_FCR_ENABLE_FIFO = 0x01;
const UART_FCR_CLEAR_RCVR = 0x02;
const UART_LCR_DLAB = 0x80;
const UART_MCR_DTR = 0x01;
const UART_MCR_RTS = 0x02;
const UART_MCR_OUT1 = 0x04;
const UART_MCR_OUT2 = 0x08;
const UART_MCR_LOOP = 0x10;
const UART_LSR_DR = 0x01;
const UART_LSR_THRE = 0x20;
const UART_LSR_TEMT = 0x40;
const UART_MSR_CTS = 0x10;
const UART_MSR_DSR = 0x20;
const UART_MSR_RI = 0x40;
const UART_MSR_DCD = 0x80;

// Slots of the shared state (Int32Array).
const S_IER = 0, S_LCR = 1, S_MCR = 2, S_SCR = 3, S_FCR = 4, S_DLL = 5, S_DLM = 6;
const S_THR_PENDING = 7; // a THRE interrupt is owed (cleared by reading IIR or writing THR)
const S_LINE = 8;        // the IRQ level last driven
const S_LOCK = 9;        // guards "compute level + drive the line" across threads
const S_TX_BYTES = 10;
const S_RX_BYTES = 11;
const STATE_SLOTS = 12;

export interface SerialShared {
  state: SharedArrayBuffer;
  tx: SharedArrayBuffer;
  rx: SharedArrayBuffer;
}

export function createSerialShared(): SerialShared {
  const state = new SharedArrayBuffer(STATE_SLOTS * 4);
  const s = new Int32Array(state);
  s[S_LCR] = 0x03;
  s[S_DLL] = 0x0c; // 9600 baud until the guest sets its own divisor
  s[S_MCR] = UART_MCR_OUT2;
  return { state, tx: new ByteRing(1 << 16).sab, rx: new ByteRing(1 << 12).sab };
}

export type IrqLine = (level: 0 | 1) => void;

export class Serial16550 implements PioDevice {
  readonly name = 'serial';
  private readonly s: Int32Array;
  readonly tx: ByteRing;
  readonly rx: ByteRing;

  /**
   * @param setIrq drives the UART's interrupt line (IRQ 4).
   * @param onTransmit called after bytes were queued on the output ring (to wake its reader).
   */
  constructor(shared: SerialShared, private readonly setIrq: IrqLine, private readonly onTransmit: () => void = () => {}) {
    this.s = new Int32Array(shared.state);
    this.tx = new ByteRing(shared.tx);
    this.rx = new ByteRing(shared.rx);
  }

  get txBytes(): number {
    return Atomics.load(this.s, S_TX_BYTES);
  }

  /** Main thread: terminal input. Returns how many bytes were taken (the rest wait for room). */
  receive(bytes: Uint8Array): number {
    const n = this.rx.pushAll(bytes);
    if (n > 0) {
      Atomics.add(this.s, S_RX_BYTES, n);
      this.updateIrq();
    }
    return n;
  }

  private iir(): number {
    const s = this.s;
    const ier = Atomics.load(s, S_IER);
    let id = UART_IIR_NO_INT;
    if (ier & UART_IER_RDI && this.rx.length > 0) id = UART_IIR_RDI;
    else if (ier & UART_IER_THRI && Atomics.load(s, S_THR_PENDING)) id = UART_IIR_THRI;
    // Modem-status interrupts never fire (no modem lines); the branch keeps the IIR priority order visible.
    // eslint-disable-next-line no-constant-condition
    else if (ier & UART_IER_MSI && 0) id = UART_IIR_MSI;
    return id | (Atomics.load(s, S_FCR) & UART_FCR_ENABLE_FIFO ? UART_IIR_FIFO_ENABLED : 0);
  }

  /** Drives the IRQ line to match the pending interrupts; called from either thread. */
  updateIrq(): void {
    const s = this.s;
    while (Atomics.compareExchange(s, S_LOCK, 0, 1) !== 0) { /* the other thread holds it for one ioctl */ }
    const level = this.iir() & UART_IIR_NO_INT ? 0 : 1;
    if (Atomics.load(s, S_LINE) !== level) {
      Atomics.store(s, S_LINE, level);
      this.setIrq(level);
    }
    Atomics.store(s, S_LOCK, 0);
  }

  private msr(): number {
    const mcr = Atomics.load(this.s, S_MCR);
    if (mcr & UART_MCR_LOOP) {
      // Loopback: the modem outputs feed the modem inputs (Linux's probe checks this).
      return (mcr & UART_MCR_RTS ? UART_MSR_CTS : 0) | (mcr & UART_MCR_DTR ? UART_MSR_DSR : 0) |
        (mcr & UART_MCR_OUT1 ? UART_MSR_RI : 0) | (mcr & UART_MCR_OUT2 ? UART_MSR_DCD : 0);
    }
    return UART_MSR_DCD | UART_MSR_DSR | UART_MSR_CTS;
  }

  pioRead(port: number, _size: number): number {
    const s = this.s;
    const lcr = Atomics.load(s, S_LCR);
    let v: number;
    switch (port - COM1_BASE) {
      case 0:
        if (lcr & UART_LCR_DLAB) return Atomics.load(s, S_DLL);
        v = this.rx.shift();
        this.updateIrq();
        return v < 0 ? 0 : v;
      case 1:
        return lcr & UART_LCR_DLAB ? Atomics.load(s, S_DLM) : Atomics.load(s, S_IER);
      case 2:
        v = this.iir();
        if ((v & 0x0f) === UART_IIR_THRI) {
          Atomics.store(s, S_THR_PENDING, 0);
          this.updateIrq();
        }
        return v;
      case 3:
        return lcr;
      case 4:
        return Atomics.load(s, S_MCR);
      case 5:
        return UART_LSR_THRE | UART_LSR_TEMT | (this.rx.length > 0 ? UART_LSR_DR : 0);
      case 6:
        return this.msr();
      case 7:
        return Atomics.load(s, S_SCR);
    }
    return 0xff;
  }

  pioWrite(port: number, _size: number, value: number): void {
    const s = this.s;
    value &= 0xff;
    const lcr = Atomics.load(s, S_LCR);
    switch (port - COM1_BASE) {
      case 0:
        if (lcr & UART_LCR_DLAB) { Atomics.store(s, S_DLL, value); return; }
        if (Atomics.load(s, S_MCR) & UART_MCR_LOOP) {
          this.rx.push(value);
        } else {
          // Never lose console output: wait for the reader if the ring is full.
          while (!this.tx.push(value)) this.tx.waitForRoom(100);
          Atomics.add(s, S_TX_BYTES, 1);
          this.onTransmit();
        }
        // Transmission is instant, so THR is empty again at once.
        Atomics.store(s, S_THR_PENDING, 1);
        this.updateIrq();
        return;
      case 1:
        if (lcr & UART_LCR_DLAB) { Atomics.store(s, S_DLM, value); return; }
        {
          const old = Atomics.load(s, S_IER);
          Atomics.store(s, S_IER, value & (UART_IER_RDI | UART_IER_THRI | UART_IER_RLSI | UART_IER_MSI));
          // Enabling THRI with THR empty raises the interrupt at once, as on real hardware.
          if (!(old & UART_IER_THRI) && value & UART_IER_THRI) Atomics.store(s, S_THR_PENDING, 1);
        }
        this.updateIrq();
        return;
      case 2:
        if (value & UART_FCR_CLEAR_RCVR) while (this.rx.shift() >= 0) { /* drop */ }
        Atomics.store(s, S_FCR, value & UART_FCR_ENABLE_FIFO);
        this.updateIrq();
        return;
      case 3:
        Atomics.store(s, S_LCR, value);
        return;
      case 4:
        Atomics.store(s, S_MCR, value & 0x1f);
        return;
      case 7:
        Atomics.store(s, S_SCR, value);
        return;
    }
  }
}
