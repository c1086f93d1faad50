// ACPI S3, suspend to RAM, on the boot processor's thread. The guest writes
// \_S3's sleep type with SLP_EN to PM1a control (src/devices/acpi-pm.ts);
// once that exit is handled the vCPU stays out of KVM_RUN, its RAM kept,
// until the RTC alarm rings (src/devices/cmos-rtc.ts, when PM1_EN.RTC_EN
// lets it wake the machine) or the VMM stops the run. It then resumes as a
// PC BIOS does: WAK_STS and RTC_STS set, and the CPU in real mode at the
// waking vector the OS left in the FACS (SeaBIOS's s3_resume reads the
// 32-bit `firmware_waking_vector` only, and so does this). The APs are left
// as they are: an OS offlines them before it sleeps and starts them again
// with INIT and SIPI, which KVM's local APICs carry out.
import type { GuestMemory } from '../memory/guest-memory.js';
import type { Vcpu } from '../kvm/vcpu.js';
import type { AcpiPm } from '../devices/acpi-pm.js';
import type { CmosRtc } from '../devices/cmos-rtc.js';
import { FACS_FIRMWARE_WAKING_VECTOR } from '../firmware/acpi.js';
import { realModeState } from '../boot/cpu-state.js';
import type { RunEnd, Sleeper } from './run-loop.js';

/** Real mode reaches the first MiB (plus the 64 KiB above it, which no waking vector needs). */
const REAL_MODE_LIMIT = 0x100000;

export class SuspendToRam implements Sleeper {
  constructor(
    private readonly vcpu: Vcpu,
    private readonly mem: GuestMemory,
    private readonly facsAddr: number,
    private readonly pm: AcpiPm,
    private readonly rtc: CmosRtc,
  ) {}

  /** Host milliseconds until something wakes the sleeping machine; null: nothing will. */
  wakeInMs(): number | null {
    return this.pm.rtcWakeEnabled() ? this.rtc.msToAlarm() : null;
  }

  /** The alarm rang: resume at the waking vector, or end the run where there is none to resume at. */
  resume(): RunEnd | null {
    this.pm.wokeByRtcAlarm();
    const vector = this.mem.readU32(this.facsAddr + FACS_FIRMWARE_WAKING_VECTOR);
    if (vector <= 0) return { kind: 'reset', message: 'the guest woke from S3 with no waking vector in its FACS: a reboot, as a BIOS does' };
    if (vector >= REAL_MODE_LIMIT) return { kind: 'reset', message: `the guest woke from S3 with a waking vector (0x${vector.toString(16)}) out of real mode's reach: a reboot, as a BIOS does` };
    const state = realModeState(vector);
    this.vcpu.setSregs(state.sregs);
    this.vcpu.setRegs(state.regs);
    return null;
  }
}
