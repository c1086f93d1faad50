// The PIO and MMIO buses: which device answers a guest access. Lookups on the
// exit path allocate nothing: ports map through a 64 Ki table, MMIO through a
// short list of ranges.

export interface PioDevice {
  readonly name: string;
  /** Returns the value read (size 1, 2 or 4 bytes). */
  pioRead(port: number, size: number): number;
  pioWrite(port: number, size: number, value: number): void;
}

export interface MmioDevice {
  readonly name: string;
  /** `offset` is from the start of the device's range; returns the value (size 1, 2, 4 or 8; 8 as two 32-bit halves via `mmioRead64`). */
  mmioRead(offset: number, size: number): number;
  mmioWrite(offset: number, size: number, value: number): void;
}

export interface MmioRange {
  base: number;
  size: number;
  device: MmioDevice;
}

export class PioBus {
  private readonly table = new Int16Array(65536).fill(-1);
  readonly devices: PioDevice[] = [];
  /** Exits per port, for --stats. */
  readonly counts = new Float64Array(65536);

  register(device: PioDevice, base: number, length: number): void {
    let idx = this.devices.indexOf(device);
    if (idx < 0) idx = this.devices.push(device) - 1;
    for (let p = base; p < base + length; p++) {
      if (this.table[p] !== -1 && this.table[p] !== idx) throw new Error(`port 0x${p.toString(16)} claimed by ${this.devices[this.table[p]].name} and ${device.name}`);
      this.table[p] = idx;
    }
  }

  unregister(base: number, length: number): void {
    for (let p = base; p < base + length && p < 65536; p++) this.table[p] = -1;
  }

  /** The device at `port`, or undefined when unclaimed. */
  lookup(port: number): PioDevice | undefined {
    const i = this.table[port & 0xffff];
    return i < 0 ? undefined : this.devices[i];
  }
}

export class MmioBus {
  ranges: MmioRange[] = [];
  /** Exits per range index, plus unclaimed at the end. */
  counts = new Float64Array(64);
  unclaimed = 0;

  register(device: MmioDevice, base: number, size: number): void {
    for (const r of this.ranges) {
      if (base < r.base + r.size && r.base < base + size) throw new Error(`MMIO 0x${base.toString(16)} overlaps ${r.device.name}`);
    }
    this.ranges.push({ base, size, device });
  }

  /** Moves or removes (size 0) the range a device holds, as when the guest reprograms a BAR. */
  move(device: MmioDevice, oldBase: number, base: number, size: number): void {
    this.ranges = this.ranges.filter((r) => !(r.device === device && r.base === oldBase));
    if (size > 0) this.ranges.push({ base, size, device });
  }

  find(addr: number): number {
    const ranges = this.ranges;
    for (let i = 0; i < ranges.length; i++) {
      const r = ranges[i];
      if (addr >= r.base && addr < r.base + r.size) return i;
    }
    return -1;
  }
}
