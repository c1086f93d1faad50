// Device exits of the application processors, handed to the device thread.
//
// Every device model (UART, PCI config space, virtio-pci transports, fw_cfg,
// the ACPI PM block…) lives on one thread: the boot processor's vCPU thread,
// as with one vCPU. So no device needs a lock, and the order in which a
// device sees register accesses is one order. An AP's PIO or MMIO exit is
// posted to its slot of a shared mailbox; the AP kicks the BSP out of
// KVM_RUN (immediate_exit, then a signal, as the main thread kicks for a
// stop) and waits on its slot; the BSP serves every posted slot after each
// of its own exits and on each kick, and answers. This is QEMU's big lock
// with the lock holder fixed, and costs an AP's device exit one kick of the
// BSP: exits that matter for speed (queue notifies) should go through
// ioeventfds, which never leave KVM.
import type { MmioBus, MmioDevice, PioBus, PioDevice } from '../bus/io-bus.js';
import { native } from '../native.js';
import * as abi from '../kvm/abi.js';

// Words of one slot (Int32).
const STATE = 0;
const OP = 1;
const ADDR_LO = 2;
const ADDR_HI = 3;
const SIZE = 4;
const VALUE = 5;
/** Set by the AP's halt check: halted with interrupts off, or never started (see RunLoop.checkHalt). */
const HALTED = 6;
const SLOT_WORDS = 8;
/** Slot 0 is the BSP's own and carries no requests: its first word is the fence word of serveAfterKick. */
const FENCE = 0;

// STATE values.
const IDLE = 0;
const POSTED = 1;
const ANSWERED = 2;
/** The BSP's run loop has ended: nothing will answer. */
const CLOSED = 3;

const OP_PIO_READ = 0;
const OP_PIO_WRITE = 1;
const OP_MMIO_READ = 2;
const OP_MMIO_WRITE = 3;

/** How long an AP waits on its slot before it looks at its stop word again, ms. */
const WAIT_SLICE_MS = 20;
/**
 * Loads of the slot's state before sleeping on it (a few µs): the BSP often
 * answers sooner than a futex sleep and wake-up take. Measured on kvm_pvm, two
 * vCPUs exiting at once: the AP's forwarded pio_out 90–102 k → 59–63 k guest
 * cycles; 40 000 loads did no better (docs/performance.md).
 */
const SPIN_LOADS = 4000;

/** The shared memory of a VM's mailbox: one slot per vCPU (the BSP's slot 0 is unused but for symmetry). */
export function createMailbox(cpus: number): SharedArrayBuffer {
  return new SharedArrayBuffer(cpus * SLOT_WORDS * 4);
}

/**
 * The BSP's side: answers posted slots with the BSP's own buses, counting
 * each access on them as if it had exited there (so --stats shows every
 * port and region once).
 */
export class MailboxServer {
  private readonly words: Int32Array;
  private readonly cpus: number;
  /** The APs' accesses no device claimed (the BSP's run loop counts its own). */
  unclaimedPio = 0;
  unclaimedMmio = 0;

  constructor(mailbox: SharedArrayBuffer, private readonly pio: PioBus, private readonly mmio: MmioBus) {
    this.words = new Int32Array(mailbox);
    this.cpus = this.words.length / SLOT_WORDS;
  }

  /**
   * After a kick: the BSP has just cleared its `immediate_exit`, a plain store
   * to kvm_run. x86 may let the loads of serve() pass that store, so a post
   * made meanwhile could be missed while the AP's `immediate_exit = 1` is
   * overwritten: a lost wake-up (seen in the lane: an AP waiting a minute on
   * a BSP spinning in guest mode). A locked read-modify-write orders the two.
   */
  serveAfterKick(): void {
    Atomics.add(this.words, FENCE, 0);
    this.serve();
  }

  /** Answers every posted slot; called after each of the BSP's exits and kicks (a load per AP when none is posted). */
  serve(): void {
    const w = this.words;
    for (let cpu = 1; cpu < this.cpus; cpu++) {
      const s = cpu * SLOT_WORDS;
      if (Atomics.load(w, s + STATE) !== POSTED) continue;
      const size = w[s + SIZE];
      const addr = (w[s + ADDR_HI] >>> 0) * 0x100000000 + (w[s + ADDR_LO] >>> 0);
      const op = w[s + OP];
      let value = 0;
      if (op === OP_PIO_READ || op === OP_PIO_WRITE) {
        const port = addr & 0xffff;
        this.pio.counts[port]++;
        const dev = this.pio.lookup(port);
        if (!dev) this.unclaimedPio++;
        if (op === OP_PIO_READ) value = dev ? dev.pioRead(port, size) : 0xffffffff;
        else dev?.pioWrite(port, size, w[s + VALUE] >>> 0);
      } else {
        const i = this.mmio.find(addr);
        if (i >= 0) {
          this.mmio.counts[i]++;
          const r = this.mmio.ranges[i];
          if (op === OP_MMIO_READ) value = r.device.mmioRead(addr - r.base, size);
          else r.device.mmioWrite(addr - r.base, size, w[s + VALUE] >>> 0);
        } else {
          this.unclaimedMmio++;
          if (op === OP_MMIO_READ) value = 0xffffffff;
        }
      }
      w[s + VALUE] = value | 0;
      Atomics.store(w, s + STATE, ANSWERED);
      Atomics.notify(w, s + STATE);
    }
  }

  /** Whether every AP said it is halted for good at its last halt check. */
  allApsHalted(): boolean {
    for (let cpu = 1; cpu < this.cpus; cpu++) if (Atomics.load(this.words, cpu * SLOT_WORDS + HALTED) !== 1) return false;
    return true;
  }

  /** The BSP's loop ended: release every AP waiting now or later. */
  close(): void {
    for (let cpu = 1; cpu < this.cpus; cpu++) {
      Atomics.store(this.words, cpu * SLOT_WORDS + STATE, CLOSED);
      Atomics.notify(this.words, cpu * SLOT_WORDS + STATE);
    }
  }
}

/**
 * An AP's side: one device that claims every port and every address on the
 * AP's buses and forwards each access to the BSP. `kickBsp` gets the BSP out
 * of KVM_RUN; `stopped` says the AP has been told to stop (a wait for a
 * BSP that no longer answers then ends with all-ones).
 */
export class ForwardedDevice implements PioDevice, MmioDevice {
  readonly name = 'forwarded to vcpu0';
  private readonly words: Int32Array;
  private readonly s: number;

  constructor(mailbox: SharedArrayBuffer, cpu: number, private readonly kickBsp: () => void, private readonly stopped: () => boolean) {
    this.words = new Int32Array(mailbox);
    this.s = cpu * SLOT_WORDS;
  }

  pioRead(port: number, size: number): number {
    return this.post(OP_PIO_READ, port, size, 0);
  }

  pioWrite(port: number, size: number, value: number): void {
    this.post(OP_PIO_WRITE, port, size, value);
  }

  /** `offset` is the guest-physical address: this device's range starts at 0. */
  mmioRead(offset: number, size: number): number {
    return this.post(OP_MMIO_READ, offset, size, 0);
  }

  mmioWrite(offset: number, size: number, value: number): void {
    this.post(OP_MMIO_WRITE, offset, size, value);
  }

  /** Records this AP's halt-check answer for the BSP's. */
  setHalted(halted: boolean): void {
    Atomics.store(this.words, this.s + HALTED, halted ? 1 : 0);
  }

  private post(op: number, addr: number, size: number, value: number): number {
    const w = this.words;
    const s = this.s;
    if (Atomics.load(w, s + STATE) === CLOSED) return 0xffffffff;
    w[s + OP] = op;
    w[s + ADDR_LO] = addr | 0;
    w[s + ADDR_HI] = Math.floor(addr / 0x100000000) | 0;
    w[s + SIZE] = size;
    w[s + VALUE] = value | 0;
    Atomics.store(w, s + STATE, POSTED);
    this.kickBsp();
    for (let i = 0; i < SPIN_LOADS && Atomics.load(w, s + STATE) === POSTED; i++);
    for (;;) {
      const state = Atomics.load(w, s + STATE);
      if (state === ANSWERED) break;
      if (state === CLOSED || this.stopped()) return 0xffffffff;
      // Kicked again each slice: a wake-up is cheap beside an AP stuck for good.
      if (Atomics.wait(w, s + STATE, POSTED, WAIT_SLICE_MS) === 'timed-out') this.kickBsp();
    }
    const answer = w[s + VALUE] >>> 0;
    // Unless the BSP has closed the mailbox meanwhile, the slot is free again.
    Atomics.compareExchange(w, s + STATE, ANSWERED, IDLE);
    return answer;
  }
}

/** Kicks a vCPU thread out of KVM_RUN: immediate_exit on its kvm_run (for a kick that lands outside KVM_RUN), then the signal. */
export function kicker(run: DataView, tidOf: () => number): () => void {
  const kick = native().kickThread;
  return () => {
    run.setUint8(abi.RUN.immediate_exit, 1);
    const tid = tidOf();
    if (tid > 0) kick(tid);
  };
}

/** An AP's buses: the forwarding device on every port and on the whole address space. */
export function forwardAll(pio: PioBus, mmio: MmioBus, device: ForwardedDevice): void {
  pio.register(device, 0, 65536);
  mmio.register(device, 0, 2 ** 52);
}
