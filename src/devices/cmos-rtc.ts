// The PC's MC146818 real-time clock and CMOS RAM, at ports 0x70 (the index;
// bit 7 is the NMI mask, which has nothing to mask here) and 0x71 (data).
//
// The time is the host's UTC clock plus an offset the guest sets by writing
// the time registers, read back in BCD or binary and in 12- or 24-hour form
// as register B says. The update cycle shows as UIP in register A during the
// last 244 µs of each second, and in register C as the update-ended (UF) and
// alarm (AF) flags of the seconds since C was last read (a read clears it).
// The alarm wakes the machine from ACPI S3 (src/devices/acpi-pm.ts), which is
// how kvm-unit-tests' s3 and Linux's `rtcwake -m mem` sleep. No interrupt is
// raised while the guest runs: this device lives on the vCPU thread, which
// keeps no time between exits, so a guest that waits for IRQ 8 waits on.
import type { PioDevice } from '../bus/io-bus.js';

export const RTC_INDEX_PORT = 0x70;
export const RTC_DATA_PORT = 0x71;

// Register indices.
const SECONDS = 0x00;
const SECONDS_ALARM = 0x01;
const MINUTES = 0x02;
const MINUTES_ALARM = 0x03;
const HOURS = 0x04;
const HOURS_ALARM = 0x05;
const DAY_OF_WEEK = 0x06;
const DAY_OF_MONTH = 0x07;
const MONTH = 0x08;
const YEAR = 0x09;
const REG_A = 0x0a;
const REG_B = 0x0b;
const REG_C = 0x0c;
const REG_D = 0x0d;
/** The century byte the FADT's CENTURY field names, as on QEMU's pc. */
export const RTC_CENTURY = 0x32;

const REG_A_UIP = 0x80;
const REG_B_SET = 0x80;
const REG_B_AIE = 0x20;
const REG_B_UIE = 0x10;
const REG_B_DM_BINARY = 0x04;
const REG_B_24H = 0x02;
const REG_C_IRQF = 0x80;
const REG_C_AF = 0x20;
const REG_C_UF = 0x10;
const REG_D_VRT = 0x80;
/** An alarm byte with its two top bits set matches any value. */
const ALARM_DONT_CARE = 0xc0;
/** How long before each second the update is in progress, ms. */
const UIP_MS = 0.244;
const DAY_S = 86_400;

/** Milliseconds since the Unix epoch, fractional: the host's clock in tsvisor, a fake one in tests. */
export type WallClock = () => number;
const hostWallClock: WallClock = () => performance.timeOrigin + performance.now();

const toBcd = (v: number) => ((v / 10) | 0) * 16 + (v % 10);
const fromBcd = (v: number) => (v >> 4) * 10 + (v & 0x0f);

export class CmosRtc implements PioDevice {
  readonly name = 'cmos-rtc';
  private index = 0;
  /** CMOS RAM; the clock registers 0x00-0x09 and 0x32 are computed, not stored. */
  private readonly ram = new Uint8Array(128);
  /** What the guest's clock is ahead of the host's, ms. */
  private offsetMs = 0;
  /** The time as the guest set it while SET holds the clock still, ms. */
  private frozenMs = 0;
  /** Register C's flags cover the guest's seconds after this one (the second it was last read in). */
  private flagsFromSecond: number;

  constructor(private readonly now: WallClock = hostWallClock) {
    this.ram[REG_A] = 0x26; // 32.768 kHz time base, 1024 Hz rate: what a BIOS leaves
    this.ram[REG_B] = REG_B_24H;
    this.ram[REG_D] = REG_D_VRT;
    this.flagsFromSecond = Math.floor(now() / 1000);
  }

  /** Registers 0x00-0x09 but the alarms, and the century: computed from the time, never stored. */
  private static isClockField(reg: number): boolean {
    return (reg <= YEAR && reg !== SECONDS_ALARM && reg !== MINUTES_ALARM && reg !== HOURS_ALARM) || reg === RTC_CENTURY;
  }

  /** The guest's time now, ms since the epoch. */
  private guestMs(): number {
    return this.ram[REG_B] & REG_B_SET ? this.frozenMs : this.now() + this.offsetMs;
  }

  pioRead(port: number, _size: number): number {
    if (port === RTC_INDEX_PORT) return this.index;
    return this.readRegister(this.index);
  }

  pioWrite(port: number, _size: number, value: number): void {
    // Bit 7 of the index is the NMI mask: kept out of the index.
    if (port === RTC_INDEX_PORT) this.index = value & 0x7f;
    else this.writeRegister(this.index, value & 0xff);
  }

  readRegister(reg: number): number {
    if (reg === REG_A) {
      const ms = this.guestMs();
      const updating = !(this.ram[REG_B] & REG_B_SET) && ms - Math.floor(ms / 1000) * 1000 >= 1000 - UIP_MS;
      return (this.ram[REG_A] & 0x7f) | (updating ? REG_A_UIP : 0);
    }
    if (reg === REG_C) {
      const c = this.pendingFlags();
      this.flagsFromSecond = Math.floor(this.guestMs() / 1000);
      return c;
    }
    return CmosRtc.isClockField(reg) ? this.timeField(reg, this.guestMs()) : this.ram[reg];
  }

  writeRegister(reg: number, v: number): void {
    if (reg === REG_A) {
      this.ram[REG_A] = v & 0x7f; // UIP is read-only
    } else if (reg === REG_B) {
      const was = this.ram[REG_B] & REG_B_SET;
      if (v & REG_B_SET && !was) this.frozenMs = this.now() + this.offsetMs;
      this.ram[REG_B] = v;
      if (!(v & REG_B_SET) && was) this.offsetMs = this.frozenMs - this.now();
    } else if (reg === REG_C || reg === REG_D) {
      // read-only
    } else if (CmosRtc.isClockField(reg)) {
      this.setTimeField(reg, v);
    } else {
      this.ram[reg] = v;
    }
  }

  /** A clock register's value at `ms`, in the guest's format. */
  private timeField(reg: number, ms: number): number {
    const d = new Date(Math.floor(ms / 1000) * 1000);
    let v: number;
    let pm = 0;
    switch (reg) {
      case SECONDS: v = d.getUTCSeconds(); break;
      case MINUTES: v = d.getUTCMinutes(); break;
      case HOURS:
        v = d.getUTCHours();
        if (!(this.ram[REG_B] & REG_B_24H)) {
          pm = v >= 12 ? 0x80 : 0;
          v = v % 12 || 12;
        }
        break;
      case DAY_OF_WEEK: v = d.getUTCDay() + 1; break;
      case DAY_OF_MONTH: v = d.getUTCDate(); break;
      case MONTH: v = d.getUTCMonth() + 1; break;
      case YEAR: v = d.getUTCFullYear() % 100; break;
      case RTC_CENTURY: v = Math.floor(d.getUTCFullYear() / 100); break;
      default: return 0;
    }
    return this.encode(v) | pm;
  }

  private encode(v: number): number {
    return this.ram[REG_B] & REG_B_DM_BINARY ? v : toBcd(v);
  }

  private decode(v: number): number {
    return this.ram[REG_B] & REG_B_DM_BINARY ? v : fromBcd(v);
  }

  /** The guest sets one clock field: the others keep their values, and the clock moves to the new time. */
  private setTimeField(reg: number, raw: number): void {
    const ms = this.guestMs();
    const d = new Date(Math.floor(ms / 1000) * 1000);
    const fraction = ms - d.getTime();
    const v = this.decode(reg === HOURS ? raw & 0x7f : raw);
    // Out of range (a month 13, a minute 60): ignored, where a real part would hold garbage.
    const ok = (lo: number, hi: number) => v >= lo && v <= hi;
    switch (reg) {
      case SECONDS: if (!ok(0, 59)) return; d.setUTCSeconds(v); break;
      case MINUTES: if (!ok(0, 59)) return; d.setUTCMinutes(v); break;
      case HOURS: {
        const h24 = this.ram[REG_B] & REG_B_24H;
        if (h24 ? !ok(0, 23) : !ok(1, 12)) return;
        d.setUTCHours(h24 ? v : (v % 12) + (raw & 0x80 ? 12 : 0));
        break;
      }
      case DAY_OF_WEEK: return; // follows from the date
      case DAY_OF_MONTH: if (!ok(1, 31)) return; d.setUTCDate(v); break;
      case MONTH: if (!ok(1, 12)) return; d.setUTCMonth(v - 1); break;
      case YEAR: if (!ok(0, 99)) return; d.setUTCFullYear(Math.floor(d.getUTCFullYear() / 100) * 100 + v); break;
      case RTC_CENTURY: if (!ok(0, 99)) return; d.setUTCFullYear(v * 100 + (d.getUTCFullYear() % 100)); break;
    }
    const t = d.getTime();
    if (this.ram[REG_B] & REG_B_SET) this.frozenMs = t + fraction;
    else this.offsetMs = t + fraction - this.now();
  }

  /** Whether the alarm registers match the second that starts at `ms` (guest time). */
  private alarmMatches(ms: number): boolean {
    const match = (alarmReg: number, reg: number) => {
      const a = this.ram[alarmReg];
      return (a & ALARM_DONT_CARE) === ALARM_DONT_CARE || a === this.timeField(reg, ms);
    };
    return match(SECONDS_ALARM, SECONDS) && match(MINUTES_ALARM, MINUTES) && match(HOURS_ALARM, HOURS);
  }

  /** Register C: the flags of the updates since it was last read. */
  private pendingFlags(): number {
    if (this.ram[REG_B] & REG_B_SET) return 0;
    const from = this.flagsFromSecond;
    const to = Math.floor(this.guestMs() / 1000);
    let c = 0;
    if (to > from) {
      c |= REG_C_UF;
      // Every alarm matches at least once a day.
      if (to - from >= DAY_S) c |= REG_C_AF;
      else for (let s = from + 1; s <= to && !(c & REG_C_AF); s++) if (this.alarmMatches(s * 1000)) c |= REG_C_AF;
    }
    const b = this.ram[REG_B];
    if ((c & REG_C_AF && b & REG_B_AIE) || (c & REG_C_UF && b & REG_B_UIE)) c |= REG_C_IRQF;
    return c;
  }

  /**
   * Milliseconds of host time until the alarm next rings, or null when the
   * alarm interrupt is off (AIE clear) or the clock is held by SET.
   */
  msToAlarm(): number | null {
    const b = this.ram[REG_B];
    if (!(b & REG_B_AIE) || b & REG_B_SET) return null;
    const ms = this.guestMs();
    const first = Math.floor(ms / 1000) + 1;
    for (let s = first; s < first + DAY_S; s++) if (this.alarmMatches(s * 1000)) return s * 1000 - ms;
    return null; // an alarm byte no second matches (an hour of 0x3f in BCD)
  }
}
