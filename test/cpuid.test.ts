import test from 'ava';
import { bootXcr0, vcpuCpuid } from '../src/kvm/cpuid.js';
import type { CpuidEntry } from '../src/kvm/system.js';

const SIG = 1; // KVM_CPUID_FLAG_SIGNIFCANT_INDEX
const e = (fn: number, index: number, eax: number, ebx: number, ecx: number, edx: number): CpuidEntry => ({
  function: fn, index, flags: fn === 7 || fn === 0xd ? SIG : 0, eax: eax >>> 0, ebx: ebx >>> 0, ecx: ecx >>> 0, edx: edx >>> 0,
});
const d = (entries: CpuidEntry[], fn: number, index = 0) => entries.find((x) => x.function === fn && x.index === index)!;

const AVX = 1 << 28, XSAVE = 1 << 26, OSXSAVE = 1 << 27, CX16 = 1 << 13;
const MPX = 1 << 14, AVX512F = 1 << 16, AVX2 = 1 << 5, PKU = 1 << 3, AMX_TILE = 1 << 24;

/** KVM_GET_SUPPORTED_CPUID as the hardware-KVM lane's kvm_amd reports it (x87, SSE, AVX, PKRU). */
const laneTable = (): CpuidEntry[] => [
  e(0, 0, 0xd, 0x68747541, 0x444d4163, 0x69746e65),
  e(1, 0, 0x60fb1, 0x20800, 0x76f83203, 0x0f8bfbfd),
  e(7, 0, 0, 0x019803ab, 0x0001020c, 0x20000000),
  e(0xd, 0, 0x207, 0xa88, 0xa88, 0),
  e(0xd, 1, 0x5, 0, 0, 0),
  e(0xd, 2, 0x100, 0x240, 0, 0),
  e(0xd, 9, 0x8, 0xa80, 0, 0),
  e(0x80000001, 0, 0x60fb1, 0, 0x77, 0xedd3fbfd),
];

/** An Intel-style table with everything up to AMX: AVX, MPX, AVX-512, PKRU, XTILECFG/XTILEDATA, all with their feature bits. */
const bigTable = (): CpuidEntry[] => [
  e(0, 0, 0x1f, 0, 0, 0),
  e(1, 0, 0x806f8, 0x800, XSAVE | AVX | CX16, 0),
  e(7, 0, 1, MPX | AVX512F | AVX2, PKU, AMX_TILE),
  e(7, 1, 0, 0, 0, 0),
  e(0xd, 0, 0x602ff, 0x2b00, 0x2b00, 0),
  e(0xd, 1, 0xf, 0, 0, 0),
  e(0xd, 2, 0x100, 0x240, 0, 0),
  e(0xd, 3, 0x40, 0x3c0, 0, 0),
  e(0xd, 4, 0x40, 0x400, 0, 0),
  e(0xd, 5, 0x40, 0x440, 0, 0),
  e(0xd, 6, 0x200, 0x480, 0, 0),
  e(0xd, 7, 0x400, 0x680, 0, 0),
  e(0xd, 9, 0x8, 0xa80, 0, 0),
  e(0xd, 17, 0x40, 0xac0, 0, 0),
  e(0xd, 18, 0x2000, 0xb00, 0, 0),
];

test('a consistent table keeps leaf 0xD as KVM gave it', (t) => {
  for (const table of [laneTable(), bigTable()]) {
    const out = vcpuCpuid(table, 0, 'hardware');
    for (const sub of table.filter((x) => x.function === 0xd)) t.deepEqual(d(out, 0xd, sub.index), sub);
  }
});

test('the usual fix-ups still apply (APIC ID, hypervisor bit, no PMU, CX16 hidden on kvm_pvm)', (t) => {
  const table = [...laneTable(), e(0xa, 0, 0x07300402, 0, 0, 0x603), e(0xb, 0, 1, 1, 0x100, 0)];
  const out = vcpuCpuid(table, 3, 'kvm_pvm');
  t.is(d(out, 1).ebx >>> 24, 3);
  t.truthy(d(out, 1).ecx & (1 << 31));
  t.is(d(out, 1).ecx & CX16, 0);
  t.deepEqual([d(out, 0xa).eax, d(out, 0xa).edx], [0, 0]);
  t.is(d(out, 0xb).edx, 3);
  t.is(d(table, 1).ebx, 0x20800, 'the supported table itself is not modified');
});

test('AVX-512 state without the AVX512F bit leaves 0xD.0 and the sizes shrink to what remains', (t) => {
  const table = bigTable();
  d(table, 7).ebx &= ~AVX512F;
  const out = vcpuCpuid(table, 0, 'hardware');
  t.is(d(out, 0xd).eax, 0x6021f);
  for (const i of [5, 6, 7]) t.deepEqual([d(out, 0xd, i).eax, d(out, 0xd, i).ebx], [0, 0], `0xD.${i} zeroed`);
  // Still the end of XTILEDATA (0xb00 + 0x2000): the furthest component stays.
  t.is(d(out, 0xd).ecx, 0x2b00);
  t.is(d(out, 0xd).ebx, 0x2b00);
});

test('the sizes follow the furthest component left: PKRU without PKU goes, AVX-512 ends the area', (t) => {
  const table = bigTable();
  d(table, 7).ecx &= ~PKU;
  d(table, 7).edx &= ~AMX_TILE;
  const out = vcpuCpuid(table, 0, 'hardware');
  t.is(d(out, 0xd).eax, 0xff);
  t.is(d(out, 0xd).ecx, 0x680 + 0x400);
  t.is(d(out, 0xd).ebx, 0x680 + 0x400);
  t.is(d(out, 0xd, 9).eax, 0);
});

test('without AVX, YMM goes and AVX-512 (built on it) with it; x87 and SSE stay', (t) => {
  const table = bigTable();
  d(table, 1).ecx &= ~AVX;
  d(table, 7).edx &= ~AMX_TILE;
  d(table, 7).ecx &= ~PKU;
  const out = vcpuCpuid(table, 0, 'hardware');
  t.is(d(out, 0xd).eax, 0x1b); // x87, SSE, BNDREGS, BNDCSR
  t.is(d(out, 0xd).ecx, 0x400 + 0x40);
});

test('a group reported in part goes whole (XTILECFG without XTILEDATA, one MPX half)', (t) => {
  const table = bigTable();
  d(table, 0xd).eax &= ~(1 << 18); // KVM without ARCH_REQ_XCOMP_GUEST_PERM leaves out the dynamic XTILEDATA
  d(table, 0xd).eax &= ~(1 << 4);
  const out = vcpuCpuid(table, 0, 'hardware');
  t.is(d(out, 0xd).eax, 0x2e7);
  t.is(d(out, 0xd).ecx, 0xa80 + 8);
  t.is(d(out, 0xd, 17).eax, 0);
  t.is(d(out, 0xd, 3).eax, 0);
});

test('a component with no size in its subleaf goes; an unknown one with a size stays', (t) => {
  const table = laneTable();
  d(table, 0xd).eax |= (1 << 9) | (1 << 20);
  d(table, 0xd, 9).eax = 0;
  table.push(e(0xd, 20, 0x10, 0xc00, 0, 0));
  const out = vcpuCpuid(table, 0, 'hardware');
  t.is(d(out, 0xd).eax, 0x100007);
  t.is(d(out, 0xd).ecx, 0xc10);
});

test('no XSAVE, no leaf 0xD: nothing to reconcile', (t) => {
  const table = laneTable().filter((x) => x.function !== 0xd);
  t.deepEqual(vcpuCpuid(table, 0, 'hardware').map((x) => x.function), table.map((x) => x.function));
});

test('bootXcr0: every component of 0xD.0 after reconciling; none on kvm_pvm or without XSAVE', (t) => {
  t.is(bootXcr0(vcpuCpuid(laneTable(), 0, 'hardware'), 'hardware'), 0x207n);
  const big = bigTable();
  d(big, 7).ebx &= ~AVX512F;
  t.is(bootXcr0(vcpuCpuid(big, 0, 'hardware'), 'hardware'), 0x6021fn);
  t.is(bootXcr0(vcpuCpuid(laneTable(), 0, 'kvm_pvm'), 'kvm_pvm'), null);
  const noXsave = laneTable();
  d(noXsave, 1).ecx &= ~(XSAVE | OSXSAVE);
  t.is(bootXcr0(vcpuCpuid(noXsave, 0, 'hardware'), 'hardware'), null);
});

test('several vCPUs: one package of N single-thread cores in every topology leaf, each vCPU with its own APIC id', (t) => {
  // A host's leaves as KVM passes them: 2 threads per core, 16 cores (leaf 0xB), AMD's 0x80000008 and 0x8000001E.
  const table = [...laneTable(), e(4, 0, 0x1c004121, 0, 0, 0), e(4, 3, 0x1c03c163, 0, 0, 0), e(0xb, 0, 1, 2, 0x100, 0), e(0xb, 1, 5, 32, 0x201, 0), e(0xb, 2, 0, 0, 2, 0),
    e(0x80000008, 0, 0x3030, 0, 0x701f, 0), e(0x8000001e, 0, 0, 0x101, 0, 0)];
  const cpus = 3;
  for (let id = 0; id < cpus; id++) {
    const out = vcpuCpuid(table, id, 'hardware', cpus);
    t.is(d(out, 1).ebx >>> 24, id, 'initial APIC id');
    t.is((d(out, 1).ebx >>> 16) & 0xff, 4, 'addressable ids in the package: 3 rounded up to a power of two');
    t.truthy(d(out, 1).edx & (1 << 28), 'HTT: more than one logical processor');
    t.deepEqual([d(out, 0xb, 0).eax, d(out, 0xb, 0).ebx, d(out, 0xb, 0).ecx & 0xff00, d(out, 0xb, 0).edx], [0, 1, 0x100, id], 'SMT level: one thread, no id bits');
    t.deepEqual([d(out, 0xb, 1).eax, d(out, 0xb, 1).ebx, d(out, 0xb, 1).ecx & 0xff00, d(out, 0xb, 1).edx], [2, cpus, 0x200, id], 'core level: 2 id bits, 3 processors');
    t.is(d(out, 0xb, 2).ecx & 0xff00, 0, 'no further level');
    t.is(d(out, 4, 0).eax >>> 26, 3, 'leaf 4: cores per package - 1');
    t.is((d(out, 4, 0).eax >>> 14) & 0xfff, 0, 'L1 is private');
    t.is((d(out, 4, 3).eax >>> 14) & 0xfff, 3, 'L3 is shared by the package');
    t.is(d(out, 0x80000008).ecx & 0xff, cpus - 1, 'AMD NC');
    t.is((d(out, 0x80000008).ecx >>> 12) & 0xf, 2, 'AMD ApicIdCoreIdSize');
    t.deepEqual([d(out, 0x8000001e).eax, d(out, 0x8000001e).ebx], [id, id], 'AMD extended APIC id and core id, one thread per core');
  }
  // One vCPU keeps KVM's table as it is (the path every single-vCPU run took before).
  t.deepEqual(d(vcpuCpuid(table, 0, 'hardware', 1), 0xb, 1), d(table, 0xb, 1));
});
