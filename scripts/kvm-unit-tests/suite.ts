// kvm-unit-tests (upstream, GPLv2) as an input to tsvisor's tests: where its
// tarball is, building it once into the tsvisor cache, and its x86 test list
// (x86/unittests.cfg) read as the suite's scripts/common.bash reads it.
// Nothing of the suite becomes part of tsvisor: its programs run as guests.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cacheDir } from '../../src/guest/default-guest.js';

/** The tsvisor checkout (this file is dist/scripts/kvm-unit-tests/suite.js once built). */
export const repoRoot = fileURLToPath(new URL('../../..', import.meta.url));

/** Where CI keeps third-party inputs: beside the checkout. */
export const THIRD_PARTY_DIR = join(repoRoot, '..', 'shared', 'third-party');

/** The suite's source tarball: $TSVISOR_KUT_TARBALL, else `<repo>/../shared/third-party/kvm-unit-tests-*.tar.gz`. */
export function findTarball(env: NodeJS.ProcessEnv = process.env): { path: string } | { missing: string } {
  if (env.TSVISOR_KUT_TARBALL) {
    return existsSync(env.TSVISOR_KUT_TARBALL) ? { path: env.TSVISOR_KUT_TARBALL } : { missing: `TSVISOR_KUT_TARBALL=${env.TSVISOR_KUT_TARBALL} does not exist` };
  }
  let names: string[] = [];
  try {
    names = readdirSync(THIRD_PARTY_DIR).filter((n) => /^kvm-unit-tests-.*\.tar\.gz$/.test(n)).sort();
  } catch {
    // no such directory: missing below
  }
  if (!names.length) return { missing: `the kvm-unit-tests tarball is missing: no ${join(THIRD_PARTY_DIR, 'kvm-unit-tests-*.tar.gz')} (or set TSVISOR_KUT_TARBALL)` };
  return { path: join(THIRD_PARTY_DIR, names[names.length - 1]) };
}

/** Why the suite cannot be had here (no tarball and no TSVISOR_KUT_DIR), or null. */
export function suiteMissing(env: NodeJS.ProcessEnv = process.env): string | null {
  if (env.TSVISOR_KUT_DIR) return isBuilt(env.TSVISOR_KUT_DIR) ? null : `TSVISOR_KUT_DIR=${env.TSVISOR_KUT_DIR} is not a built kvm-unit-tests tree (no x86/unittests.cfg and x86/*.flat)`;
  const t = findTarball(env);
  return 'missing' in t ? t.missing : null;
}

const MARKER = '.tsvisor-built';

function isBuilt(dir: string): boolean {
  if (!existsSync(join(dir, 'x86/unittests.cfg'))) return false;
  try {
    return readdirSync(join(dir, 'x86')).some((n) => n.endsWith('.flat'));
  } catch {
    return false;
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function runLogged(cmd: string, args: string[], cwd: string, log: (s: string) => void, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let made = 0;
    const keep = (d: Buffer) => {
      const text = d.toString('latin1');
      made += text.split('\n').filter((l) => / -o /.test(l)).length;
      out += text;
      if (out.length > 200_000) out = out.slice(-100_000);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    // make prints a line a file; a line on stderr every 15 s says how far it is.
    const t0 = Date.now();
    const tick = setInterval(() => log(`${what}: ${Math.round((Date.now() - t0) / 1000)} s, ${made} files compiled or linked so far`), 15_000);
    child.on('error', (e) => {
      clearInterval(tick);
      reject(new Error(`${what}: cannot run ${cmd}: ${e.message}`));
    });
    child.on('close', (code, signal) => {
      clearInterval(tick);
      if (code === 0) resolve();
      else reject(new Error(`${what} failed (${signal ?? `status ${code}`}):\n${out.trim().split('\n').slice(-15).join('\n')}`));
    });
  });
}

/**
 * A built copy of the suite: $TSVISOR_KUT_DIR as it is, else the tarball
 * unpacked and built (`./configure --arch=x86_64 && make -j$(nproc)`) once
 * into `<cache>/kvm-unit-tests-<sha256 of the tarball, 12 digits>/`.
 * Concurrent callers wait for one build (a lock directory holding the pid).
 */
export async function ensureSuite(log: (s: string) => void, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  if (env.TSVISOR_KUT_DIR) {
    const why = suiteMissing(env);
    if (why) throw new Error(why);
    return env.TSVISOR_KUT_DIR;
  }
  const t = findTarball(env);
  if ('missing' in t) throw new Error(t.missing);
  const hash = createHash('sha256').update(readFileSync(t.path)).digest('hex').slice(0, 12);
  const cache = cacheDir(env);
  const dir = join(cache, `kvm-unit-tests-${hash}`);
  if (existsSync(join(dir, MARKER))) return dir;
  mkdirSync(cache, { recursive: true });
  const lock = `${dir}.lock`;
  for (let waited = 0; ; waited++) {
    try {
      mkdirSync(lock);
      writeFileSync(join(lock, 'pid'), String(process.pid));
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      let owner = 0;
      try {
        owner = Number(readFileSync(join(lock, 'pid'), 'utf8'));
      } catch {
        // the owner is between mkdir and writing its pid
      }
      if (owner && !pidAlive(owner)) {
        rmSync(lock, { recursive: true, force: true });
        continue;
      }
      if (waited % 15 === 0) log(`waiting for another build of kvm-unit-tests (pid ${owner || '?'}) in ${dir}`);
      await new Promise((r) => setTimeout(r, 2000));
      if (existsSync(join(dir, MARKER))) return dir;
    }
  }
  try {
    if (existsSync(join(dir, MARKER))) return dir;
    rmSync(dir, { recursive: true, force: true });
    const tmp = `${dir}.unpack-${process.pid}`;
    rmSync(tmp, { recursive: true, force: true });
    mkdirSync(tmp);
    log(`unpacking ${basename(t.path)} into ${dir}`);
    try {
      const x = spawnSync('tar', ['xzf', t.path, '-C', tmp], { encoding: 'utf8' });
      if (x.status !== 0) throw new Error(`tar xzf ${t.path} failed: ${(x.stderr || x.error?.message || '').trim()}`);
      const top = readdirSync(tmp);
      if (top.length !== 1) throw new Error(`${t.path}: expected one top-level directory, found ${top.join(', ')}`);
      renameSync(join(tmp, top[0]), dir);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
    for (const tool of ['gcc', 'make']) {
      if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) throw new Error(`building kvm-unit-tests needs ${tool}: apt-get install build-essential`);
    }
    log('./configure --arch=x86_64');
    await runLogged('./configure', ['--arch=x86_64'], dir, log, 'configure');
    const jobs = Math.max(1, cpus().length);
    log(`make -j${jobs} (about a minute on 2 cores)`);
    await runLogged('make', [`-j${jobs}`], dir, log, 'make');
    if (!isBuilt(dir)) throw new Error(`make finished but ${dir}/x86 holds no .flat files`);
    writeFileSync(join(dir, MARKER), `${t.path}\n`);
    log(`built: ${dir}`);
    return dir;
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

/** One `[name]` section of x86/unittests.cfg, with the defaults scripts/common.bash and runtime.bash give. */
export interface CfgTest {
  name: string;
  /** The program, relative to the suite's directory (x86/NAME.flat). */
  file: string;
  smp: number;
  /** `test_args` as written (shell words, quotes included), or '' when none. */
  testArgs: string;
  /** `qemu_params` / `extra_params` as written (shell words), or ''. */
  qemuParams: string;
  groups: string[];
  arch: string;
  machine: string;
  check: string;
  accel: string;
  /** Seconds (the cfg's timeout, as timeout(1) reads it; default 90 s as runtime.bash has it). */
  timeoutS: number;
  disabledIf: string;
}

/** timeout(1)'s DURATION: a number with an optional s, m, h or d. */
export function parseDuration(s: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$/.exec(s);
  if (!m) throw new Error(`"${s}" is not a duration (seconds, or with s, m, h, d)`);
  return Number(m[1]) * ({ '': 1, s: 1, m: 60, h: 3600, d: 86400 } as Record<string, number>)[m[2]];
}

/** Reads a unittests.cfg as scripts/common.bash's for_each_unittest does. */
export function parseCfg(text: string, testDir = 'x86'): CfgTest[] {
  const out: CfgTest[] = [];
  const lines = text.split('\n');
  let cur: CfgTest | null = null;
  const fresh = (name: string): CfgTest => ({ name, file: '', smp: 1, testArgs: '', qemuParams: '', groups: [], arch: '', machine: '', check: '', accel: '', timeoutS: 90, disabledIf: '' });
  for (let i = 0; i < lines.length; i++) {
    // `read -r` drops leading and trailing blanks.
    const line = lines[i].replace(/^[ \t]+|[ \t]+$/g, '');
    let m: RegExpExecArray | null;
    if ((m = /^\[(.*)\]$/.exec(line))) {
      if (cur) out.push(cur);
      cur = fresh(m[1]);
      continue;
    }
    if (!cur) continue;
    if ((m = /^file *= *(.*)$/.exec(line))) cur.file = `${testDir}/${m[1]}`;
    else if ((m = /^smp *= *(.*)$/.exec(line))) cur.smp = Number(m[1]);
    else if ((m = /^test_args *= *(.*)$/.exec(line))) cur.testArgs = m[1];
    else if ((m = /^(?:extra_params|qemu_params) *= *"""(.*)$/.exec(line))) {
      // A multi-line value up to the closing """ (the suite keeps the newlines).
      let v = `${m[1]}\n`;
      for (i++; i < lines.length; i++) {
        const end = /^(.*)"""[ \t]*$/.exec(lines[i]);
        if (end) {
          v += end[1];
          break;
        }
        v += `${lines[i]}\n`;
      }
      cur.qemuParams = v.replace(/\\\n/g, '');
    } else if ((m = /^(?:extra_params|qemu_params) *= *(.*)$/.exec(line))) cur.qemuParams = m[1];
    else if ((m = /^groups *= *(.*)$/.exec(line))) cur.groups = m[1].split(/\s+/).filter(Boolean);
    else if ((m = /^arch *= *(.*)$/.exec(line))) cur.arch = m[1];
    else if ((m = /^machine *= *(.*)$/.exec(line))) cur.machine = m[1];
    else if ((m = /^check *= *(.*)$/.exec(line))) cur.check = m[1];
    else if ((m = /^disabled_if *= *(.*)$/.exec(line))) cur.disabledIf = m[1];
    else if ((m = /^accel *= *(.*)$/.exec(line))) cur.accel = m[1];
    else if ((m = /^timeout *= *(.*)$/.exec(line))) cur.timeoutS = parseDuration(m[1]);
  }
  if (cur) out.push(cur);
  return out;
}

export function readCfg(suiteDir: string): CfgTest[] {
  return parseCfg(readFileSync(join(suiteDir, 'x86/unittests.cfg'), 'utf8'));
}

/**
 * A test to run: a cfg section by name, or a variant of one (another name,
 * other test_args or smp) for what the cfg has no section of its own for.
 */
export interface TestSpec {
  name: string;
  /** The cfg section it is made from (default: name). */
  from?: string;
  testArgs?: string;
  smp?: number;
  /** Why it differs from the cfg, shown with its result. */
  note?: string;
}

/**
 * The tests CI runs under tsvisor, with the vCPUs the cfg gives them:
 * `smptest` (2), `smptest3` (3) and a 4-vCPU variant, vmexit's `ipi` and
 * `ipi_halt` (2); `ioapic` with one (see its note). Of vmexit's one-vCPU sub-tests
 * cpuid and inl_from_pmtimer (the ACPI PM timer the FADT names) have sections
 * (vmexit_cpuid, vmexit_inl_pmtimer); inl_from_qemu, pci-mem and pci-io are
 * variants of it with other test_args. The rest are the cfg's tests that pass
 * under QEMU on kvm_pvm (2026-12-07 sweep of the cfg; `vmexit_cr0_wp` and
 * `vmexit_cr4_pge` with 2 vCPUs), and `smap`,
 * which passes under tsvisor there while QEMU runs past its timeout.
 */
export const CI_TESTS: readonly TestSpec[] = [
  { name: 'smptest' },
  { name: 'smptest3' },
  { name: 'smptest4', from: 'smptest', smp: 4, note: 'not in the cfg: smptest with smp 4' },
  { name: 'setjmp' },
  { name: 'idt_test' },
  { name: 'tsc' },
  { name: 'vmexit_cpuid' },
  { name: 'vmexit_inl_pmtimer' },
  { name: 'vmexit_inl_from_qemu', from: 'vmexit_cpuid', testArgs: "'inl_from_qemu'", note: 'not in the cfg: vmexit_cpuid with test_args inl_from_qemu' },
  { name: 'vmexit_pci_mem', from: 'vmexit_cpuid', testArgs: "'pci-mem'", note: 'not in the cfg: vmexit_cpuid with test_args pci-mem' },
  { name: 'vmexit_pci_io', from: 'vmexit_cpuid', testArgs: "'pci-io'", note: 'not in the cfg: vmexit_cpuid with test_args pci-io' },
  { name: 'vmexit_ipi' },
  { name: 'vmexit_ipi_halt' },
  { name: 'vmexit_mov_from_cr8' },
  { name: 'vmexit_mov_to_cr8' },
  { name: 'vmexit_ple_round_robin' },
  { name: 'vmexit_tscdeadline' },
  { name: 'vmexit_tscdeadline_immed' },
  { name: 'vmexit_cr0_wp' },
  { name: 'vmexit_cr4_pge' },
  { name: 'realmode' },
  { name: 's3' },
  { name: 'rmap_chain' },
  { name: 'la57' },
  { name: 'lam' },
  { name: 'smap' },
  { name: 'ioapic', smp: 1, note: 'smp 1; the cfg has 4: with 4 on kvm_pvm, QEMU 7.2 and tsvisor alike fail some of the IRQ-line checks (which ones varies run to run) and never finish (2026-12-07)' },
];

/** The cfg entry for a spec (a variant takes its section and changes what the spec says). */
export function resolve(cfg: CfgTest[], spec: TestSpec): CfgTest & { note?: string } {
  const base = cfg.find((c) => c.name === (spec.from ?? spec.name));
  if (!base) throw new Error(`no [${spec.from ?? spec.name}] in x86/unittests.cfg (have: ${cfg.map((c) => c.name).join(' ')})`);
  return { ...base, name: spec.name, ...(spec.testArgs !== undefined ? { testArgs: spec.testArgs } : {}), ...(spec.smp !== undefined ? { smp: spec.smp } : {}), ...(spec.note ? { note: spec.note } : {}) };
}

/** A name on the command line: a CI-list entry (variants included) or any cfg section. */
export function specFor(name: string): TestSpec {
  return CI_TESTS.find((s) => s.name === name) ?? { name };
}

/** Shell words as bash reads them (quotes, backslashes, `…` and $(…) expanded), run in `cwd`. */
export function shellWords(s: string, cwd: string): string[] {
  if (!s.trim()) return [];
  if (!/[`$\\'"]/.test(s)) return s.split(/\s+/).filter(Boolean);
  const r = spawnSync('bash', ['-c', 'eval "set -- $1"; for a in "$@"; do printf "%s\\0" "$a"; done', 'kut', s], { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`cannot expand "${s}" with bash: ${(r.stderr || r.error?.message || '').trim()}`);
  return r.stdout.split('\0').slice(0, -1);
}

