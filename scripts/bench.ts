// npm run bench [-- PART... --runs N --json FILE --svg FILE --quick]
// tsvisor measured beside its references; every figure is a median with
// min–max over the runs, and the reference runs alternate with tsvisor's.
//   exits   exit round trip per kind against a C KVM_RUN loop (scripts/bench/exit-floor.c);
//           and on two vCPUs: the BSP's exits with an idle AP, and both vCPUs exiting at once (`exit_smp.<kind>`), also under QEMU -smp 2
//   tx, rx  the packet path against the TAP syscall floor (scripts/bench/tap-floor.c)
//   qemu    the same guest programs under QEMU (installed with apt-get when missing)
//   linux   the default Linux guest: boot, VMM share, memory, host ping, and from its user space ping, syscalls/s, TCP both ways
//   vmexit  kvm-unit-tests' vmexit sub-tests under tsvisor and QEMU (TSC cycles per exit; headline: the exits to userspace)
// The firmware parts run their guest loops in both modes: CPL3 (ring 3, native
// on kvm_pvm) and CPL0 (ring 0, emulated on kvm_pvm). The JSON's figures are
// the headline mode's (CPL3 on kvm_pvm, CPL0 on hardware KVM), with the other
// mode's beside them under its name (`exit.<kind>.cpl0`, `tx.<size>.cpl0`, …).
// Default: all parts. --quick: tiny counts and one run, no QEMU, Linux or vmexit (the test smoke).
// Builds what it needs first: the firmware (bash firmware/build.sh) and the C references.
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { cpus } from 'node:os';
import { detectHostKind } from '../src/kvm/system.js';
import { ExitBench, EXIT_KINDS, SMP_EXIT_KINDS, type ExitFigures, type Mode } from './bench/exits.js';
import { PacketBench, FRAME_SIZES, type PathFigures } from './bench/packets.js';
import { QemuBench, ensureQemu, type QemuFigures } from './bench/qemu.js';
import { LinuxBench, type LinuxFigures } from './bench/linux.js';
import { VmexitBench, vmexitMissing, type VmexitFigures } from './bench/vmexit.js';
import { exitHistogramSvg } from './bench/svg.js';
import { benchNet, root, Scratch } from './bench/procs.js';
import { fmt, fmtRatio, ratio, Reasons, type Summary } from './bench/summary.js';

const PARTS = ['exits', 'tx', 'rx', 'qemu', 'linux', 'vmexit'] as const;
/** The parts whose figures need KVM's TSC rate (guest cycles become time). */
const NEEDS_TSC: readonly Part[] = ['tx', 'rx', 'qemu'];
type Part = (typeof PARTS)[number];

class UsageError extends Error {}

function options() {
  let parsed;
  try {
    parsed = parseArgs({
      options: { runs: { type: 'string' }, json: { type: 'string' }, svg: { type: 'string' }, quick: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
    });
  } catch (e) {
    throw new UsageError(`${(e as Error).message.split('.')[0]} (see npm run bench -- --help)`);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log('usage: npm run bench -- [exits|tx|rx|qemu|linux|vmexit ...] [--runs N] [--json FILE] [--svg FILE] [--quick]');
    process.exit(0);
  }
  for (const p of positionals) if (!(PARTS as readonly string[]).includes(p)) throw new UsageError(`unknown part "${p}": choose from ${PARTS.join(', ')}`);
  const quick = values.quick ?? false;
  const parts = (positionals.length ? positionals : quick ? ['exits', 'tx', 'rx'] : [...PARTS]) as Part[];
  const runs = values.runs === undefined ? (quick ? 1 : 5) : Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1) throw new UsageError(`--runs ${values.runs} is not a positive whole number: for example --runs 5`);
  return { parts, runs, quick, json: values.json, svg: values.svg };
}

const benchStart = performance.now();
/** Progress on stderr, with the time since the start: the whole bench takes minutes. */
const log = (s: string) => {
  const sec = Math.round((performance.now() - benchStart) / 1000);
  process.stderr.write(`bench [${Math.floor(sec / 60)}:${String(sec % 60).padStart(2, '0')}]: ${s}\n`);
};
const tag = (m: Mode) => m.toUpperCase();

/** The firmware images, built (incrementally) as npm test does; the C references are compiled by their parts. */
function buildFirmware(): void {
  log('building the firmware (bash firmware/build.sh)');
  const r = spawnSync('bash', [join(root, 'firmware/build.sh')], { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`bash firmware/build.sh failed: ${(r.stderr ?? r.error?.message ?? '').trim().split('\n').slice(-3).join(' | ')}`);
}
const med = (s: Summary | null) => s?.median ?? null;
const row = (cells: string[]) => `| ${cells.join(' | ')} |`;

async function main(): Promise<void> {
  const o = options();
  const host = detectHostKind() === 'kvm_pvm' ? 'kvm_pvm' : 'hardware';
  // The headline mode first: on kvm_pvm only ring-3 guest code runs natively.
  const modes: Mode[] = host === 'kvm_pvm' ? ['cpl3', 'cpl0'] : ['cpl0', 'cpl3'];
  const [headline, other] = modes;
  log(`${host}: parts ${o.parts.join(', ')}; guest loops in ${tag(headline)} (headline) and ${tag(other)}; ${o.runs} run${o.runs > 1 ? 's' : ''} each`);
  buildFirmware();
  const reasons = new Reasons();
  const json: Record<string, unknown> = { host, mode: headline, runs: o.runs, date: new Date().toISOString(), node: process.version, cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length };
  const table: string[] = [row(['figure', 'tsvisor', 'reference', 'ratio', 'target']), row(['---', '---', '---', '---', '---'])];
  const scratch = new Scratch();
  const ns = benchNet();
  const cleanup = () => { ns.delete(); scratch.remove(); };
  process.once('SIGINT', () => { cleanup(); process.exit(130); });
  process.once('SIGTERM', () => { cleanup(); process.exit(143); });
  try {
    const exitBench = new ExitBench(scratch, ns);
    const exitN = o.quick ? 400 : 20_000;
    const exitFigs: Partial<Record<string, ExitFigures>> = {};
    if (o.parts.includes('exits')) {
      const exit: Record<string, unknown> = {};
      for (const kind of EXIT_KINDS) {
        const byMode: Partial<Record<Mode, Record<string, unknown>>> = {};
        for (const mode of modes) {
          log(`exits ${kind} (${tag(mode)}): ${exitN} exits, ${o.runs} run${o.runs > 1 ? 's' : ''} each of tsvisor and the C loop`);
          const f = await exitBench.measure(kind, exitN, o.runs, log, mode);
          if (mode === headline) exitFigs[kind] = f;
          byMode[mode] = {
            tsvisor_ns: med(f.tsvisor.ns), c_ns: med(f.floor.ns), ratio: ratio(f.tsvisor.ns, f.floor.ns),
            guest_cycles: med(f.tsvisor.cycles), c_guest_cycles: med(f.floor.cycles), cycles_ratio: ratio(f.tsvisor.cycles, f.floor.cycles),
            ...(f.ioeventfd ? { ioeventfd_ns: med(f.ioeventfd.ns), ioeventfd_guest_cycles: med(f.ioeventfd.cycles) } : {}),
            detail: f,
          };
          const ref = kind === 'notify' ? 'C loop, 16-bit MMIO write' : 'C loop';
          table.push(row([`exit ${kind} (${tag(mode)}), ns per exit`, fmt(f.tsvisor.ns, 0), `${fmt(f.floor.ns, 0)} (${ref})`, fmtRatio(ratio(f.tsvisor.ns, f.floor.ns)), '≤ 1.10×']));
          table.push(row([`exit ${kind} (${tag(mode)}), guest cycles per exit`, fmt(f.tsvisor.cycles, 0), fmt(f.floor.cycles, 0), fmtRatio(ratio(f.tsvisor.cycles, f.floor.cycles)), '≤ 1.10×']));
          if (f.ioeventfd) table.push(row([`notify (${tag(mode)}) with --ioeventfd, ns per notify`, fmt(f.ioeventfd.ns, 0), `${fmt(f.tsvisor.ns, 0)} (exit path)`, fmtRatio(ratio(f.ioeventfd.ns, f.tsvisor.ns)), '—']));
        }
        exit[kind] = { ...byMode[headline], mode: headline, [other]: byMode[other] };
      }
      json.exit = exit;
      // Two vCPUs (CPL0: an AP runs in ring 0): the BSP's path with SMP, and an AP's exits, forwarded to the BSP's thread.
      const smp: Record<string, unknown> = {};
      // QEMU beside them, as it is beside the packet path (not in --quick, which runs no QEMU).
      const smpQemuWhy = o.quick ? null : ensureQemu(log);
      if (smpQemuWhy) reasons.add('exit_smp.qemu', smpQemuWhy);
      const smpQemu = !o.quick && smpQemuWhy === null;
      for (const kind of SMP_EXIT_KINDS) {
        log(`exits ${kind} (CPL0) on two vCPUs: ${exitN} exits, ${o.runs} run${o.runs > 1 ? 's' : ''} each of one vCPU, the BSP with an idle AP, and both exiting at once${smpQemu ? ', and both under QEMU -smp 2' : ''}`);
        const f = await exitBench.measureSmp(kind, exitN, o.runs, log, smpQemu);
        smp[kind] = {
          one_vcpu_cycles: med(f.one), bsp_idle_ap_cycles: med(f.bspIdleAp), bsp_idle_ap_ratio: ratio(f.bspIdleAp, f.one),
          bsp_cycles: med(f.bsp), ap_cycles: med(f.ap), ap_ratio: ratio(f.ap, f.one),
          qemu_bsp_cycles: f.qemu ? med(f.qemu.bsp) : null, qemu_ap_cycles: f.qemu ? med(f.qemu.ap) : null,
          ap_qemu_ratio: f.qemu ? ratio(f.ap, f.qemu.ap) : null, detail: f,
        };
        table.push(row([`exit ${kind} (CPL0), BSP of two vCPUs, the AP idle, guest cycles`, fmt(f.bspIdleAp, 0), `${fmt(f.one, 0)} (one vCPU)`, fmtRatio(ratio(f.bspIdleAp, f.one)), 'within noise']));
        table.push(row([`exit ${kind} (CPL0), two vCPUs exiting at once: BSP, guest cycles`, fmt(f.bsp, 0), `${fmt(f.one, 0)} (one vCPU)`, fmtRatio(ratio(f.bsp, f.one)), '—']));
        table.push(row([`exit ${kind} (CPL0), two vCPUs exiting at once: AP (forwarded), guest cycles`, fmt(f.ap, 0), `${fmt(f.one, 0)} (one vCPU)`, fmtRatio(ratio(f.ap, f.one)), '—']));
        if (f.qemu) {
          table.push(row([`exit ${kind} (CPL0), two vCPUs exiting at once: BSP, tsvisor against QEMU, guest cycles`, fmt(f.bsp, 0), `${fmt(f.qemu.bsp, 0)} (QEMU -smp 2)`, fmtRatio(ratio(f.bsp, f.qemu.bsp)), '—']));
          table.push(row([`exit ${kind} (CPL0), two vCPUs exiting at once: AP, tsvisor against QEMU, guest cycles`, fmt(f.ap, 0), `${fmt(f.qemu.ap, 0)} (QEMU -smp 2)`, fmtRatio(ratio(f.ap, f.qemu.ap)), '—']));
        }
      }
      json.exit_smp = smp;
    }
    // Guest figures in TSC cycles become time at KVM's TSC rate, which the floor reads.
    if (exitBench.tscKhz === null && o.parts.some((p) => NEEDS_TSC.includes(p))) await exitBench.measure('pio_out', 64, 1, () => {}, 'cpl0');
    const tscKhz = exitBench.tscKhz ?? 0;
    if (!tscKhz && o.parts.some((p) => NEEDS_TSC.includes(p))) throw new Error('the TSC frequency is unknown (KVM_GET_TSC_KHZ failed in exit-floor)');
    json.tsc_khz = tscKhz || null;

    let rssUnderLoad: number | null = null;
    for (const dir of ['tx', 'rx'] as const) {
      if (!o.parts.includes(dir)) continue;
      const pb = new PacketBench(scratch, ns, tscKhz);
      const out: Record<string, unknown> = {};
      for (const size of FRAME_SIZES) {
        const byMode: Partial<Record<Mode, Record<string, unknown>>> = {};
        for (const mode of modes) {
          // RX sends more: a ring-0 guest on kvm_pvm takes a few thousand frames a second.
          // A ring-3 guest gets ten times the frames: a run of 20 000 lasts about 0.1 s, and
          // its first thousands pass while V8 is still optimizing tsvisor's path.
          const k = mode === 'cpl3' && host === 'kvm_pvm' ? 10 : 1;
          const count = o.quick ? 64 : k * (dir === 'rx' ? (size === 65536 ? 40_000 : 100_000) : size === 65536 ? 2000 : 20_000);
          log(`${dir} ${size} B (${tag(mode)}): ${count} frames, ${o.runs} run${o.runs > 1 ? 's' : ''} each of tsvisor and the TAP floor`);
          let f: PathFigures;
          try {
            f = dir === 'tx' ? await pb.tx(size, count, o.runs, log, mode) : await pb.rx(size, count, o.runs, log, mode);
          } catch (e) {
            byMode[mode] = { tsvisor_pps: null, floor_pps: null, ratio: null };
            reasons.add(mode === headline ? `${dir}.${size}` : `${dir}.${size}.${mode}`, (e as Error).message);
            log(`${dir} ${size} (${tag(mode)}): not measured: ${(e as Error).message}`);
            continue;
          }
          byMode[mode] = {
            tsvisor_pps: med(f.tsvisorPps), floor_pps: med(f.floorPps), ratio: ratio(f.tsvisorPps, f.floorPps),
            tsvisor_gbps: med(f.tsvisorGbps), floor_gbps: med(f.floorGbps),
            cpu_us_per_frame: med(f.cpuUsPerFrame), floor_cpu_us_per_frame: med(f.floorCpuUsPerFrame), cpu_ratio: ratio(f.cpuUsPerFrame, f.floorCpuUsPerFrame), detail: f,
          };
          const D = `${dir.toUpperCase()} ${size} B (${tag(mode)})`;
          table.push(row([`${D} frames/s`, fmt(f.tsvisorPps, 0), `${fmt(f.floorPps, 0)} (TAP ${dir === 'tx' ? 'writev' : 'read'} loop)`, fmtRatio(ratio(f.tsvisorPps, f.floorPps)), '≥ 0.8×']));
          table.push(row([`${D} Gbit/s`, fmt(f.tsvisorGbps, 3), fmt(f.floorGbps, 3), fmtRatio(ratio(f.tsvisorGbps, f.floorGbps)), size === 65536 ? '≥ 0.8×' : '']));
          table.push(row([`${D} host CPU µs per frame`, fmt(f.cpuUsPerFrame, 2), `${fmt(f.floorCpuUsPerFrame, 2)} (floor)`, fmtRatio(ratio(f.cpuUsPerFrame, f.floorCpuUsPerFrame)), '≤ 1.5×']));
        }
        out[size] = { ...byMode[headline], mode: headline, [other]: byMode[other] };
      }
      json[dir] = out;
      if (dir === 'rx') rssUnderLoad = pb.rssUnderLoad;
    }

    if (o.parts.includes('qemu')) {
      const why = ensureQemu(log);
      const qBy: Partial<Record<Mode, QemuFigures | null>> = {};
      for (const mode of modes) {
        qBy[mode] = null;
        if (why) {
          reasons.add(mode === headline ? 'qemu' : `qemu.${mode}`, why);
          continue;
        }
        log(`qemu side-by-side (${tag(mode)}): ping, tx-burst 64 B and notify under tsvisor and QEMU, both notify paths, ${o.runs} run${o.runs > 1 ? 's' : ''}`);
        try {
          qBy[mode] = await new QemuBench(scratch, ns, tscKhz).measure(o.runs, o.quick ? 10 : 200, o.quick ? 64 : 20_000, o.quick ? 400 : 20_000, log, mode);
        } catch (e) {
          reasons.add(mode === headline ? 'qemu' : `qemu.${mode}`, (e as Error).message);
        }
      }
      // Headline: each VMM as it comes (tsvisor: exit path; QEMU: ioeventfd on), then the matched pairs.
      const figures = (q: QemuFigures | null) => {
        const pick = (path: string, k: 'pingRttUs' | 'txPps' | 'notifyCycles', vmm: 'tsvisor' | 'qemu') => q?.[path]?.[k][vmm] ?? null;
        const entry = (k: 'pingRttUs' | 'txPps' | 'notifyCycles', tPath: string, qPath: string) => ({
          tsvisor: med(pick(tPath, k, 'tsvisor')), qemu: med(pick(qPath, k, 'qemu')), ratio: ratio(pick(tPath, k, 'tsvisor'), pick(qPath, k, 'qemu')),
        });
        return {
          pick,
          json: {
            ping_rtt: { ...entry('pingRttUs', 'exit', 'ioeventfd'), unit: 'µs' },
            tx_pps: entry('txPps', 'exit', 'ioeventfd'),
            notify_cycles: entry('notifyCycles', 'exit', 'ioeventfd'),
            exit_path: { ping_rtt: entry('pingRttUs', 'exit', 'exit'), tx_pps: entry('txPps', 'exit', 'exit'), notify_cycles: entry('notifyCycles', 'exit', 'exit') },
            ioeventfd: { ping_rtt: entry('pingRttUs', 'ioeventfd', 'ioeventfd'), tx_pps: entry('txPps', 'ioeventfd', 'ioeventfd'), notify_cycles: entry('notifyCycles', 'ioeventfd', 'ioeventfd') },
            detail: q,
          },
        };
      };
      const head = figures(qBy[headline] ?? null);
      json.qemu = { ...head.json, mode: headline, [other]: figures(qBy[other] ?? null).json };
      for (const mode of modes) {
        const { pick } = figures(qBy[mode] ?? null);
        const T = tag(mode);
        const pairRow = (label: string, k: 'pingRttUs' | 'txPps' | 'notifyCycles', tPath: string, qPath: string, digits: number, target: string) =>
          table.push(row([label, fmt(pick(tPath, k, 'tsvisor'), digits), `${fmt(pick(qPath, k, 'qemu'), digits)} (QEMU${qPath === 'exit' ? ', ioeventfd=off' : ''})`, fmtRatio(ratio(pick(tPath, k, 'tsvisor'), pick(qPath, k, 'qemu'))), target]));
        pairRow(`firmware ping (${T}) RTT µs, as shipped (tsvisor exit path, QEMU ioeventfd)`, 'pingRttUs', 'exit', 'ioeventfd', 0, '≤ 1.0×');
        pairRow(`firmware tx-burst (${T}) 64 B frames/s, as shipped`, 'txPps', 'exit', 'ioeventfd', 0, '≥ 1.0×');
        pairRow(`queue-notify write (${T}) guest cycles, as shipped`, 'notifyCycles', 'exit', 'ioeventfd', 0, '—');
        for (const path of ['exit', 'ioeventfd']) {
          const both = path === 'exit' ? 'both on the exit path' : 'both with ioeventfd';
          pairRow(`firmware ping (${T}) RTT µs, ${both}`, 'pingRttUs', path, path, 0, '≤ 1.0×');
          pairRow(`firmware tx-burst (${T}) 64 B frames/s, ${both}`, 'txPps', path, path, 0, '≥ 1.0×');
          pairRow(`queue-notify write (${T}) guest cycles, ${both}`, 'notifyCycles', path, path, 0, '—');
        }
      }
    }

    let rssAfterBoot: number | null = null;
    let memory: Record<string, unknown> = {};
    if (o.parts.includes('linux')) {
      const missing = LinuxBench.missing();
      let l: LinuxFigures | null = null;
      if (missing) reasons.add('linux', missing);
      else l = await new LinuxBench(scratch, ns, host, host === 'hardware' && ensureQemu(log) === null).measure(o.runs, log);
      if (host === 'kvm_pvm') reasons.add('linux.qemu_boot_ms', 'QEMU cannot boot Linux on kvm_pvm: it stops at the first instruction its emulator lacks');
      else if (!l?.qemuBootMs) reasons.add('linux.qemu_boot_ms', 'QEMU is not available');
      // The figures of the default guest; a null one gets the reason its runs gave.
      const lf = (k: keyof Omit<LinuxFigures, 'why'>, key: string): number | null => {
        const v = med(l?.[k] ?? null);
        if (v === null && l && !reasons.map[`linux.${key}`]) reasons.add(`linux.${key}`, l.why[k] ?? 'not measured');
        return v;
      };
      json.linux = {
        boot_to_user_space_ms: lf('bootMs', 'boot_to_user_space_ms'), exits: lf('exits', 'exits'), vmm_share: lf('vmmShare', 'vmm_share'),
        host_ping_rtt_us: lf('pingRttUs', 'host_ping_rtt_us'), guest_ping_rtt_us: lf('guestPingRttUs', 'guest_ping_rtt_us'),
        syscalls_per_s: lf('syscallsPerS', 'syscalls_per_s'),
        tcp_mbps_guest_to_host: lf('tcpMbps', 'tcp_mbps_guest_to_host'), tcp_mbps_host_to_guest: lf('tcpInMbps', 'tcp_mbps_host_to_guest'),
        syscalls_completed: lf('syscallsCompleted', 'syscalls_completed'), faults_stepped: lf('faultsStepped', 'faults_stepped'),
        vmm_ns_per_completed_syscall: lf('vmmNsPerCompletion', 'vmm_ns_per_completed_syscall'),
        vmm_ns_per_stepped_fault: lf('vmmNsPerStep', 'vmm_ns_per_stepped_fault'),
        qemu_boot_ms: med(l?.qemuBootMs ?? null), detail: l,
      };
      rssAfterBoot = med(l?.rssAfterBootMib ?? null);
      // Resident memory beyond guest RAM once the guest is up, against QEMU's for the same guest at its ready marker.
      const byKind = (heap: Summary | null | undefined, anonymous: Summary | null | undefined, files: Summary | null | undefined) => ({ heap: med(heap ?? null), anonymous: med(anonymous ?? null), files: med(files ?? null) });
      const qemuRss = med(l?.qemuRssMib ?? null);
      const rssRatio = ratio(l?.rssAfterBootMib ?? null, l?.qemuRssMib ?? null);
      memory = {
        qemu_after_boot: qemuRss,
        ratio: rssRatio,
        after_boot_by_kind: byKind(l?.rssHeapMib, l?.rssAnonymousMib, l?.rssFilesMib),
        qemu_after_boot_by_kind: byKind(l?.qemuRssHeapMib, l?.qemuRssAnonymousMib, l?.qemuRssFilesMib),
      };
      if (qemuRss === null) reasons.add('rss_mib.qemu_after_boot', host === 'kvm_pvm' ? 'QEMU cannot boot Linux on kvm_pvm' : 'QEMU is not available');
      table.push(row(['Linux, resident memory beyond guest RAM once booted, MiB', fmt(l?.rssAfterBootMib ?? null, 1), l?.qemuRssMib ? `${fmt(l.qemuRssMib, 1)} (QEMU)` : '', fmtRatio(rssRatio), '≤ 1.0×']));
      const kinds = (h: Summary | null | undefined, a: Summary | null | undefined, f: Summary | null | undefined) => (h && a && f ? `${fmt(h, 1)} / ${fmt(a, 1)} / ${fmt(f, 1)}` : '—');
      table.push(row(['… of which malloc heap / anonymous (V8 heaps, stacks) / mapped files, MiB', kinds(l?.rssHeapMib, l?.rssAnonymousMib, l?.rssFilesMib), l?.qemuRssMib ? `${kinds(l.qemuRssHeapMib, l.qemuRssAnonymousMib, l.qemuRssFilesMib)} (QEMU)` : '', '', '']));
      table.push(row([`Linux boot to user space (the command's first line), s`, fmt(l?.bootMs ? scale(l.bootMs, 1 / 1000) : null, 1), l?.qemuBootMs ? `${fmt(scale(l.qemuBootMs, 1 / 1000), 1)} (QEMU, to its ready marker)` : '', fmtRatio(ratio(l?.bootMs ?? null, l?.qemuBootMs ?? null)), '']));
      table.push(row(['Linux run (boot and benchmark command), VM exits', fmt(l?.exits ?? null, 0), '', '', '']));
      table.push(row(['Linux boot, tsvisor share of wall time', l?.vmmShare ? fmt(scale(l.vmmShare, 100), 2) + ' %' : '—', '', '', '< 2 %']));
      table.push(row(['Linux host → guest ping RTT, µs', fmt(l?.pingRttUs ?? null, 0), '', '', '']));
      table.push(row(['Linux guest → host ping RTT (guest busybox ping), µs', fmt(l?.guestPingRttUs ?? null, 0), '', '', '']));
      table.push(row(['Linux guest syscalls/s (busybox dd bs=64, read+write per block)', fmt(l?.syscallsPerS ?? null, 0), '', '', '']));
      table.push(row(['Linux guest → host TCP, Mbit/s', fmt(l?.tcpMbps ?? null, 0), '', '', '']));
      table.push(row(['Linux host → guest TCP, Mbit/s (timed in the guest)', fmt(l?.tcpInMbps ?? null, 0), '', '', '']));
      table.push(row(['kvm_pvm SYSCALL completion: tsvisor ns per completed syscall', fmt(l?.vmmNsPerCompletion ?? null, 0), '', '', '']));
      table.push(row(['kvm_pvm SYSCALL completion: tsvisor ns per stepped #PF', fmt(l?.vmmNsPerStep ?? null, 0), '', '', '']));
    }
    if (o.parts.includes('vmexit')) {
      // kvm-unit-tests' vmexit: guest TSC cycles per exit, tsvisor against QEMU on the same KVM.
      let v: VmexitFigures | null = null;
      const why = vmexitMissing();
      if (why) reasons.add('vmexit', why);
      else {
        const qemuWhy = ensureQemu(log);
        log(`vmexit: kvm-unit-tests' vmexit sub-tests under tsvisor and QEMU, alternating, ${o.runs} run${o.runs > 1 ? 's' : ''}`);
        try {
          v = await new VmexitBench().measure(o.runs, log, qemuWhy);
        } catch (e) {
          reasons.add('vmexit', (e as Error).message);
        }
      }
      const out: Record<string, unknown> = {};
      for (const [name, f] of Object.entries(v?.figures ?? {})) {
        out[name] = {
          subtest: f.subtest, headline: f.headline, userspace_exit: f.userspaceExit,
          tsvisor_cycles: med(f.tsvisor), tsvisor_min: f.tsvisor?.min ?? null, tsvisor_max: f.tsvisor?.max ?? null,
          qemu_cycles: med(f.qemu), qemu_min: f.qemu?.min ?? null, qemu_max: f.qemu?.max ?? null,
          ratio: f.ratio, detail: { tsvisor: f.tsvisor, qemu: f.qemu },
        };
        for (const [vmm, r] of Object.entries(f.why)) reasons.add(`vmexit.${name}.${vmm}_cycles`, r);
        // The target (issue 13) holds for the headline rows and for every exit that reaches the VMM's userspace.
        const target = f.headline || f.userspaceExit ? '≤ 1.0×' : '—';
        const kind = f.userspaceExit ? 'exit to userspace' : f.headline ? 'eventfd in KVM' : 'handled in KVM';
        table.push(row([`kvm-unit-tests vmexit ${name} (${kind}), guest cycles`, fmt(f.tsvisor, 0), `${fmt(f.qemu, 0)} (QEMU)`, fmtRatio(f.ratio), target]));
      }
      for (const [sub, r] of Object.entries(v?.missing ?? {})) {
        out[sub] = null;
        reasons.add(`vmexit.${sub}`, r);
        table.push(row([`kvm-unit-tests vmexit ${sub}, guest cycles`, '—', '—', '—', '']));
      }
      json.vmexit = v ? { unit: 'TSC cycles per iteration (vmexit\'s own figure)', suite: v.suiteDir, ...out } : null;
    }
    json.rss_mib = { after_boot: rssAfterBoot, under_load: rssUnderLoad, ...memory };
    if (rssAfterBoot === null) reasons.add('rss_mib.after_boot', o.parts.includes('linux') ? 'no Linux boot measured' : 'the linux part was not run');
    if (rssUnderLoad === null) reasons.add('rss_mib.under_load', o.parts.includes('rx') ? 'not sampled' : 'the rx part was not run');
    table.push(row(['tsvisor RSS beyond guest RAM, MiB (after boot / under RX load)', `${rssAfterBoot?.toFixed(1) ?? '—'} / ${rssUnderLoad?.toFixed(1) ?? '—'}`, '', '', '']));
    json.reasons = reasons.map;

    log('done');
    console.log(`\n## tsvisor benchmarks (${host}, guest loops in ${tag(headline)} (headline) and ${tag(other)}, ${o.runs} run${o.runs > 1 ? 's' : ''}, median (min–max))\n`);
    console.log(table.join('\n'));
    if (Object.keys(reasons.map).length) {
      console.log('\nNot measured:');
      for (const [k, v] of Object.entries(reasons.map)) console.log(`- ${k}: ${v}`);
    }
    if (o.json) writeFileSync(o.json, JSON.stringify(json, null, 2) + '\n');
    if (o.svg) {
      const series = EXIT_KINDS.filter((k) => exitFigs[k]).map((k) => ({ kind: k, tsvisor: exitFigs[k]!.tsvisor.hist, floor: exitFigs[k]!.floor.hist }));
      writeFileSync(o.svg, exitHistogramSvg(series, tscKhz, `VM exit round trip per kind (${host}, ${tag(headline)}): tsvisor vs a C KVM_RUN loop`));
    }
  } finally {
    cleanup();
  }
}

function scale(s: Summary, k: number): Summary {
  return { median: s.median * k, min: s.min * k, max: s.max * k, runs: s.runs.map((x) => x * k) };
}

main().catch((e) => {
  console.error(`bench: ${(e as Error).message}`);
  process.exit(e instanceof UsageError ? 2 : 1);
});
