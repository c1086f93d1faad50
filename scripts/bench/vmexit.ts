// kvm-unit-tests' vmexit (x86/vmexit.flat) under tsvisor and under QEMU on
// the same host: each sub-test is one run of the program with its name as the
// argument, started as the suite's runner starts it (scripts/kvm-unit-tests/),
// tsvisor then QEMU, sub-test by sub-test, run by run. vmexit prints one
// `NAME CYCLES` line per figure (TSC cycles per iteration of the measured
// instruction); pci-mem and pci-io print one per pci-testdev test, named by
// the device (`mmio-no-eventfd:pci-mem`, `portio-datamatch-eventfd:pci-io`, …).
// A figure one VMM did not print is missing on that side, with the reason.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ensureSuite, readCfg, resolve, shellWords, specFor, suiteMissing, type CfgTest, type TestSpec } from '../kvm-unit-tests/suite.js';
import { kvmMissing, lastLines, qemuMissing, runTest, vmexitFigures, type Vmm } from '../kvm-unit-tests/run.js';
import { ratio, summarize, type Summary } from './summary.js';

/** The sub-tests, as vmexit.c's tests[] names them: the exits KVM handles, then those that reach the VMM. */
export const VMEXIT_SUBTESTS = ['cpuid', 'vmcall', 'inl_from_kernel', 'outl_to_kernel', 'inl_from_pmtimer', 'inl_from_qemu', 'pci-mem', 'pci-io', 'ipi', 'ipi_halt'] as const;

/** Issue 13's headline: the port read QEMU answers, and the pci-testdev writes (on the exit path and through eventfds). */
const HEADLINE_SUBTESTS: readonly string[] = ['inl_from_qemu', 'pci-mem', 'pci-io'];

/**
 * Whether a figure is an exit to the VMM's userspace in both VMMs: the port
 * nobody claims, the PM timer (a device in each), and pci-testdev's test
 * without an eventfd (QEMU's device names it mmio-no-eventfd / portio-no-eventfd).
 */
function userspaceExit(figure: string): boolean {
  return figure === 'inl_from_qemu' || figure === 'inl_from_pmtimer' || /^(?:mmio-|portio-)?no-eventfd:pci-(?:mem|io)$/.test(figure);
}

export interface VmexitFigure {
  /** The sub-test whose run printed it. */
  subtest: string;
  headline: boolean;
  userspaceExit: boolean;
  /** TSC cycles per iteration, over the runs that printed it. */
  tsvisor: Summary | null;
  qemu: Summary | null;
  /** tsvisor's median over QEMU's, or null when either is missing. */
  ratio: number | null;
  /** Why a side is null. */
  why: Partial<Record<Vmm, string>>;
}

export interface VmexitFigures {
  suiteDir: string;
  /** By the name vmexit prints, headline figures first. */
  figures: Record<string, VmexitFigure>;
  /** Sub-tests that printed no figure on either side, and why. */
  missing: Record<string, string>;
}

/**
 * The test to run for a sub-test: the cfg's own section when one runs exactly
 * it on one vCPU (vmexit_cpuid, vmexit_vmcall, vmexit_inl_pmtimer) or on
 * several (vmexit_ipi, vmexit_ipi_halt: two), else the CI
 * list's variant (vmexit_inl_from_qemu, …), else the same kind of variant:
 * vmexit_cpuid with the sub-test as its test_args.
 */
function specOf(cfg: CfgTest[], suiteDir: string, sub: string): TestSpec {
  const runsSub = (c: CfgTest) => c.file === 'x86/vmexit.flat' && shellWords(c.testArgs, suiteDir).join(' ') === sub;
  const section = cfg.find((c) => runsSub(c) && c.smp === 1 && !c.qemuParams.trim());
  if (section) return { name: section.name };
  // The IPI sub-tests need two vCPUs: their own sections (vmexit_ipi, vmexit_ipi_halt), as the cfg gives them.
  const smpSection = cfg.find((c) => runsSub(c) && c.smp > 1);
  if (smpSection) return { name: smpSection.name };
  const name = `vmexit_${sub.replace(/-/g, '_')}`;
  const ci = specFor(name);
  if (ci.from) return ci;
  return { name, from: 'vmexit_cpuid', testArgs: `'${sub}'`, note: `not in the cfg: vmexit_cpuid with test_args ${sub}` };
}

/** Whether this suite's vmexit.c has the sub-test (null when its source is not in the tree). */
function suiteHas(suiteDir: string, sub: string): boolean | null {
  const src = join(suiteDir, 'x86/vmexit.c');
  if (!existsSync(src)) return null;
  return readFileSync(src, 'latin1').includes(`"${sub}"`);
}

/** vmexit's `NAME (skipped)` lines: a sub-test whose condition (a device, a CPU feature) is not there. */
function skippedIn(stdout: string): string[] {
  return [...stdout.replace(/\r/g, '').matchAll(/^(\S+) \(skipped\)$/gm)].map((m) => m[1]);
}

/** Why the part cannot run at all here, or null. */
export function vmexitMissing(): string | null {
  return suiteMissing() ?? kvmMissing('tsvisor');
}

export class VmexitBench {
  /**
   * Runs every sub-test `runs` times under tsvisor and under QEMU, alternating.
   * `qemuWhy`: why QEMU is not there (its side is then missing throughout).
   */
  async measure(runs: number, log: (s: string) => void, qemuWhy: string | null): Promise<VmexitFigures> {
    const suiteDir = await ensureSuite(log);
    const cfg = readCfg(suiteDir);
    const vmms: Vmm[] = ['tsvisor', 'qemu'];
    const qemuMissingWhy = qemuWhy ?? kvmMissing('qemu') ?? qemuMissing();
    const missing: Record<string, string> = {};
    const tests: Array<{ sub: string; test: ReturnType<typeof resolve> }> = [];
    for (const sub of VMEXIT_SUBTESTS) {
      if (suiteHas(suiteDir, sub) === false) missing[sub] = `this suite's x86/vmexit.c has no sub-test "${sub}"`;
      else tests.push({ sub, test: resolve(cfg, specOf(cfg, suiteDir, sub)) });
    }
    // Cycles by figure name and VMM, the sub-test that printed each, and why a run gave nothing.
    const cycles = new Map<string, Record<Vmm, number[]>>();
    const subOf = new Map<string, string>();
    const failed: Record<string, Partial<Record<Vmm, string>>> = {};
    for (let i = 0; i < runs; i++) {
      const line: string[] = [];
      for (const { sub, test } of tests) {
        const got: Partial<Record<Vmm, string>> = {};
        for (const vmm of vmms) {
          if (vmm === 'qemu' && qemuMissingWhy) {
            (failed[sub] ??= {}).qemu = qemuMissingWhy;
            continue;
          }
          const r = await runTest(vmm, suiteDir, test);
          if (r.verdict !== 'PASS') {
            (failed[sub] ??= {})[vmm] = `${r.verdict} (${r.reason})`;
            got[vmm] = r.verdict;
            continue;
          }
          const figs = vmexitFigures(r.stdout);
          const skipped = skippedIn(r.stdout);
          if (!figs.length) (failed[sub] ??= {})[vmm] = skipped.length ? `vmexit skipped ${skipped.join(', ')}` : `vmexit printed no figure (${lastLines(r.stdout, 1).join('') || 'no output'})`;
          for (const f of figs) {
            if (!cycles.has(f.test)) cycles.set(f.test, { tsvisor: [], qemu: [] });
            cycles.get(f.test)![vmm].push(f.cycles);
            subOf.set(f.test, sub);
          }
          got[vmm] = figs.map((f) => `${f.test} ${f.cycles}`).join(', ') || 'none';
        }
        line.push(`${sub}: tsvisor ${got.tsvisor ?? '—'}; QEMU ${got.qemu ?? '—'}`);
      }
      log(`vmexit run ${i + 1}/${runs}, cycles per iteration: ${line.join(' | ')}`);
    }
    const figures: Record<string, VmexitFigure> = {};
    const names = [...cycles.keys()];
    const order = (n: string) => (HEADLINE_SUBTESTS.includes(subOf.get(n)!) ? 0 : 1);
    for (const name of names.sort((a, b) => order(a) - order(b))) {
      const sub = subOf.get(name)!;
      const c = cycles.get(name)!;
      const why: Partial<Record<Vmm, string>> = {};
      for (const vmm of vmms) {
        if (c[vmm].length) continue;
        why[vmm] = failed[sub]?.[vmm] ?? `${vmm}'s ${sub} runs printed no "${name}" line`;
      }
      const t = summarize(c.tsvisor);
      const q = summarize(c.qemu);
      figures[name] = { subtest: sub, headline: HEADLINE_SUBTESTS.includes(sub), userspaceExit: userspaceExit(name), tsvisor: t, qemu: q, ratio: ratio(t, q), why };
    }
    for (const { sub } of tests) {
      if ([...subOf.values()].includes(sub)) continue;
      const f = failed[sub] ?? {};
      missing[sub] = vmms.map((v) => `${v}: ${f[v] ?? 'no figure'}`).join('; ');
    }
    return { suiteDir, figures, missing };
  }
}
