// The ACPI power-management block the FADT points at (src/firmware/acpi.ts),
// at QEMU PIIX4's ports: PM1a event (status, enable), PM1a control, and the
// PM timer, a 24-bit counter at 3.579545 MHz. A write of SLP_EN with the
// sleep type \_S5 names powers the machine off, which is how Linux with ACPI
// ends `poweroff`; with \_S3's, the machine sleeps with its RAM kept until
// the RTC alarm wakes it (RTC_EN), and resumes at the FACS waking vector
// (src/vcpu/suspend.ts). There is no SMM: the block is always in ACPI mode
// (SCI_EN reads 1), and it raises no SCI: its only event, RTC_STS, is set
// on the way out of S3, when the guest reads it as the wake reason.
import type { PioDevice } from '../bus/io-bus.js';

export const ACPI_PM_BASE = 0xb000;
export const PM1_EVT_LEN = 4; // PM1_STS (2) + PM1_EN (2)
export const PM1_CNT_OFFSET = 4;
export const PM1_CNT_LEN = 2;
export const PM_TMR_OFFSET = 8;
export const PM_TMR_LEN = 4;
/** Ports from ACPI_PM_BASE the block answers. */
export const ACPI_PM_LENGTH = 12;
/** The SCI's ISA IRQ, as on a PIIX4. */
export const SCI_IRQ = 9;
/** The SLP_TYP values the DSDT's \_S3 and \_S5 give (QEMU's). */
export const SLP_TYP_S3 = 1;
export const SLP_TYP_S5 = 5;
export const PM_TIMER_HZ = 3_579_545;

const SCI_EN = 1 << 0;
/** PM1_STS and PM1_EN: the RTC alarm (status, and wake enable). */
const RTC_STS = 1 << 10;
const RTC_EN = 1 << 10;
/** PM1_STS: set when the machine has woken from a sleep state. */
const WAK_STS = 1 << 15;
const SLP_EN = 1 << 13;
const SLP_TYP_SHIFT = 10;

/** A millisecond clock: performance.now() in tsvisor, a fake one in tests. */
export type MsClock = () => number;

export class AcpiPm implements PioDevice {
  readonly name = 'acpi-pm';
  private status = 0;
  private enable = 0;
  private control = SCI_EN;
  private readonly t0: number;

  constructor(
    private readonly onPowerOff: () => void,
    private readonly now: MsClock = () => performance.now(),
    /** The guest asked for S3 (suspend to RAM); null where nothing can resume it. */
    private readonly onSuspend: (() => void) | null = null,
  ) {
    this.t0 = now();
  }

  /** Whether the RTC alarm may wake the machine from S3 (PM1_EN.RTC_EN). */
  rtcWakeEnabled(): boolean {
    return (this.enable & RTC_EN) !== 0;
  }

  /** The RTC alarm woke the machine from S3: the guest reads why in PM1_STS. */
  wokeByRtcAlarm(): void {
    this.status |= WAK_STS | RTC_STS;
  }

  /** The PM timer: ticks since the machine started, 24 bits. */
  timer(): number {
    return Math.floor((this.now() - this.t0) * (PM_TIMER_HZ / 1000)) & 0xffffff;
  }

  pioRead(port: number, size: number): number {
    const off = port - ACPI_PM_BASE;
    // Each register as a little-endian word, read at any width from any byte in it
    // (no temporaries: the PM timer read is an exit benchmarks time).
    let word: number;
    let at: number;
    if (off < 2) {
      word = this.status;
      at = off;
    } else if (off < PM1_EVT_LEN) {
      word = this.enable;
      at = off - 2;
    } else if (off < PM1_CNT_OFFSET + PM1_CNT_LEN) {
      word = this.control;
      at = off - PM1_CNT_OFFSET;
    } else if (off >= PM_TMR_OFFSET && off < PM_TMR_OFFSET + PM_TMR_LEN) {
      word = this.timer();
      at = off - PM_TMR_OFFSET;
    } else {
      return size === 4 ? 0xffffffff : (1 << (8 * size)) - 1;
    }
    const v = word >>> (8 * at);
    return size === 4 ? v >>> 0 : v & ((1 << (8 * size)) - 1);
  }

  pioWrite(port: number, size: number, value: number): void {
    const off = port - ACPI_PM_BASE;
    // 16-bit registers: a byte write to the high half lands shifted.
    const shifted = (at: number) => ((value & (size === 1 ? 0xff : 0xffff)) << (8 * at)) & 0xffff;
    if (off < 2) {
      this.status &= ~shifted(off); // write 1 to clear
    } else if (off < PM1_EVT_LEN) {
      this.enable = shifted(off - 2) | (this.enable & (off === 3 ? 0x00ff : size === 1 ? 0xff00 : 0));
    } else if (off < PM1_CNT_OFFSET + PM1_CNT_LEN) {
      const at = off - PM1_CNT_OFFSET;
      const keep = at === 1 ? 0x00ff : size === 1 ? 0xff00 : 0;
      const v = shifted(at) | (this.control & keep);
      // SLP_EN is write-only: acting on it, never storing it.
      this.control = (v & ~SLP_EN) | SCI_EN;
      const type = (v >> SLP_TYP_SHIFT) & 7;
      if (v & SLP_EN && type === SLP_TYP_S5) this.onPowerOff();
      else if (v & SLP_EN && type === SLP_TYP_S3) this.onSuspend?.();
    }
    // The timer is read-only; other offsets have nothing behind them.
  }
}
