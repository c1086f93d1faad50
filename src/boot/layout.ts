// Where tsvisor puts things in guest physical memory at boot. Low memory
// below 640 KiB holds the boot structures; the BIOS area 0xF0000-0xFFFFF holds
// the MP table; the kernel goes where its headers ask (1 MiB or above); the
// initrd sits at the top of low RAM; 3-4 GiB is the PCI hole.
export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

export const GDT_ADDR = 0x500;
export const IDT_ADDR = 0x520;
/** Multiboot information structure and its memory map. */
export const MULTIBOOT_INFO_ADDR = 0x6000;
/** The zero page (struct boot_params) for Linux. */
export const BOOT_PARAMS_ADDR = 0x7000;
/** Boot stack top (grows down, below the page tables). */
export const BOOT_STACK_TOP = 0x8ff0;
/** Identity page tables for 64-bit entry: PML4, PDPT, then 4 PDs mapping 4 GiB with 2 MiB pages. */
export const PML4_ADDR = 0x9000;
export const PDPT_ADDR = 0xa000;
export const PD_ADDR = 0xb000;
export const CMDLINE_ADDR = 0x20000;
export const CMDLINE_MAX = 0x10000;
/** End of conventional memory; the EBDA and BIOS area follow. */
export const EBDA_START = 0x9fc00;
export const BIOS_AREA_START = 0xe0000;
export const BIOS_AREA_END = 0x100000;
/** MP floating pointer and configuration table. */
export const MPTABLE_ADDR = 0xf0000;
export const HIGH_MEMORY = 0x100000;

/** The 32-bit PCI hole: no RAM from here to 4 GiB. */
export const PCI_HOLE_START = 0xc0000000;
export const PCI_HOLE_END = 0x100000000;
/** Where memory BARs are placed inside the hole. */
export const PCI_MMIO_START = 0xc0000000;
export const PCI_MMIO_END = 0xfec00000;
/** The IOAPIC and the LAPIC sit at the top of the hole. */
export const IOAPIC_ADDR = 0xfec00000;
export const LAPIC_ADDR = 0xfee00000;
/** KVM's identity map page and TSS for real-mode emulation (VMX), inside the hole's last MiB. */
export const KVM_IDENTITY_MAP_ADDR = 0xfeffc000;
export const KVM_TSS_ADDR = 0xfeffd000;

/** Guest RAM regions for `memBytes` of RAM: below the PCI hole, then above 4 GiB. */
export function ramRegions(memBytes: number): Array<{ gpa: number; size: number }> {
  if (memBytes <= PCI_HOLE_START) return [{ gpa: 0, size: memBytes }];
  return [
    { gpa: 0, size: PCI_HOLE_START },
    { gpa: PCI_HOLE_END, size: memBytes - PCI_HOLE_START },
  ];
}

export type E820Type = 1 | 2;
export const E820_RAM: E820Type = 1;
export const E820_RESERVED: E820Type = 2;

/** The e820 map the guest sees: RAM below 640 KiB, the BIOS area reserved, RAM above 1 MiB. */
export function e820Map(memBytes: number): Array<{ addr: number; size: number; type: E820Type }> {
  const map: Array<{ addr: number; size: number; type: E820Type }> = [
    { addr: 0, size: EBDA_START, type: E820_RAM },
    { addr: EBDA_START, size: BIOS_AREA_END - EBDA_START, type: E820_RESERVED },
  ];
  for (const r of ramRegions(memBytes)) {
    const start = Math.max(r.gpa, HIGH_MEMORY);
    const end = r.gpa + r.size;
    if (end > start) map.push({ addr: start, size: end - start, type: E820_RAM });
  }
  return map;
}
