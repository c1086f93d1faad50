// Runs one kvm-unit-tests x86 test as the suite's run_tests.sh does, under
// tsvisor or under QEMU (as x86/run starts it), and gives its verdict by the
// suite's rules (scripts/runtime.bash, scripts/vmm.bash):
//   the VMM's status is (code << 1) | 1 after the test writes `code` to the
//   debug-exit port 0xf4: 1 = PASS (unless the VMM also wrote errors to
//   stderr), 77 = SKIP (report_summary's 77 >> 1), 124 = timeout, > 127 a
//   signal, 0 = the guest ended without a debug-exit write; any other FAIL.
// Not passed to either VMM: the suite's environment file (x86/run's -initrd
// with TARGET, the QEMU and kernel versions and ERRATA_* lines; ENVIRON_DEFAULT=no
// in the suite's terms), which none of the CI list reads.
import { spawn, spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot, shellWords, type CfgTest } from './suite.js';

export type Vmm = 'tsvisor' | 'qemu';
export type Verdict = 'PASS' | 'SKIP' | 'FAIL';

export const QEMU = 'qemu-system-x86_64';
export const TSVISOR_CLI = join(repoRoot, 'bin/tsvisor.js');
/** Guest RAM for every test (x86/run leaves QEMU's default; tsvisor and QEMU get the same here). */
export const MEM_MIB = 256;

export interface Result {
  name: string;
  verdict: Verdict;
  /** Why it was skipped or failed; the SUMMARY line's counts when it passed. */
  reason: string;
  /** The VMM's exit status (null when the test was not run). */
  status: number | null;
  stdout: string;
  stderr: string;
  argv: string[];
  ms: number;
  note?: string;
}

let tsvisorDevice: boolean | null = null;
/** Whether this tsvisor has `--device` (for pci-testdev): its `run --help` lists it. */
export function tsvisorHasDevice(): boolean {
  if (tsvisorDevice === null) {
    const r = spawnSync(process.execPath, [TSVISOR_CLI, 'run', '--help'], { encoding: 'utf8' });
    tsvisorDevice = /^\s*--device\b/m.test(r.stdout ?? '');
  }
  return tsvisorDevice;
}

let qemuDevices: string | null = null;
function qemuHasDevice(name: string): boolean {
  if (qemuDevices === null) {
    const r = spawnSync(QEMU, ['-device', 'help'], { encoding: 'utf8' });
    qemuDevices = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  }
  return qemuDevices.includes(`"${name}"`);
}

/** Why there is no KVM to run the tests on (as x86/run's set_qemu_accelerator says it), or null. */
export function kvmMissing(vmm: Vmm): string | null {
  const dev = (vmm === 'tsvisor' && process.env.TSVISOR_KVM_DEVICE) || '/dev/kvm';
  try {
    accessSync(dev, constants.R_OK | constants.W_OK);
    return null;
  } catch {
    return `KVM is needed, but not available on this host (no usable ${dev}); where there is none, run this in the hardware-KVM lane: bash scripts/nested-kvm.sh -- node dist/scripts/kvm-unit-tests.js ...`;
  }
}

/** Why QEMU cannot run the suite here, or null (x86/run's own checks). */
export function qemuMissing(): string | null {
  if (spawnSync('sh', ['-c', `command -v ${QEMU}`]).status !== 0) return `${QEMU} is not installed (apt-get install qemu-system-x86)`;
  if (!qemuHasDevice('pc-testdev')) return `${QEMU} has no pc-testdev device ("No Qemu test device support found", as x86/run says)`;
  return null;
}

/** QEMU's -cpu: host, or host,-arch-capabilities once QEMU refused MSR 0x10a (IA32_ARCH_CAPABILITIES). */
let qemuCpu = process.env.TSVISOR_KUT_QEMU_CPU || 'host';

/** A cfg's own `-cpu MODEL` gets the same IA32_ARCH_CAPABILITIES fix as ours once QEMU needed it. */
function withQemuCpuFix(params: string[]): string[] {
  if (qemuCpu === 'host') return params;
  return params.map((p, i) => (params[i - 1] === '-cpu' ? `${p},-arch-capabilities` : p));
}

/** The command line for one test. `ignored`: cfg parameters this VMM does not take. */
export function vmmArgv(vmm: Vmm, suiteDir: string, t: CfgTest, timeoutS: number): { argv: string[]; ignored: string[] } {
  const args = shellWords(t.testArgs, suiteDir).join(' ');
  const kernel = join(suiteDir, t.file);
  if (vmm === 'tsvisor') {
    const ignored: string[] = [];
    if (t.qemuParams.trim()) ignored.push(`qemu_params ${t.qemuParams.trim()}`);
    // As x86/run gives QEMU: -device pc-testdev (and pci-testdev), and kvm-pit.lost_tick_policy=discard.
    const device = tsvisorHasDevice() ? ['--device', 'pci-testdev', '--device', 'pc-testdev'] : [];
    if (!device.length) ignored.push('-device pci-testdev -device pc-testdev (tsvisor run has no --device)');
    return {
      argv: [process.execPath, TSVISOR_CLI, 'run', '--kernel', kernel, ...(args ? ['--append', args] : []), '--mem', String(MEM_MIB), '--cpus', String(t.smp), '--timeout', String(timeoutS), ...device, '--pit-reinject', 'off'],
      ignored,
    };
  }
  // x86/run: --no-reboot -nodefaults $pit $pc_testdev -display none -serial stdio $pci_testdev -machine accel=kvm -kernel F, then
  // runtime.bash's -smp N, -append ARGS and the cfg's qemu_params (whose -cpu or -m, coming later, win over ours).
  return {
    argv: [QEMU, '--no-reboot', '-nodefaults', '-global', 'kvm-pit.lost_tick_policy=discard',
      '-device', 'pc-testdev', '-device', 'isa-debug-exit,iobase=0xf4,iosize=0x4', '-display', 'none', '-serial', 'stdio',
      ...(qemuHasDevice('pci-testdev') ? ['-device', 'pci-testdev'] : []), '-machine', 'accel=kvm', '-cpu', qemuCpu, '-m', String(MEM_MIB),
      '-kernel', kernel, '-smp', String(t.smp), ...(args ? ['-append', args] : []), ...withQemuCpuFix(shellWords(t.qemuParams, suiteDir))],
    ignored: [],
  };
}

/** Why the suite skips this test before running it, as runtime.bash's run() checks; or null. */
export function skipReason(vmm: Vmm, suiteDir: string, t: CfgTest): string | null {
  if (t.groups.includes('nodefault')) return 'test marked as manual run only';
  if (t.arch && t.arch !== 'x86_64') return `${t.arch} only`;
  if (t.accel && !/^kvm(,|$)/.test(t.accel)) return `${t.accel} only, but ACCEL=kvm`;
  if (t.disabledIf && spawnSync('bash', ['-c', t.disabledIf], { cwd: suiteDir, stdio: 'ignore' }).status === 0) return `disabled because: ${t.disabledIf}`;
  for (const c of t.check.split(/\s+/).filter(Boolean)) {
    const eq = c.indexOf('=');
    const path = c.slice(0, eq);
    let v: string | null = null;
    try {
      v = readFileSync(path, 'utf8').replace(/\n$/, '');
    } catch {
      // missing: skipped below
    }
    if (v !== c.slice(eq + 1)) return `${path} not equal to ${c.slice(eq + 1)}`;
  }
  if (!existsSync(join(suiteDir, t.file))) return `Test file '${t.file}' not found`;
  return null;
}

const clean = (s: string) => s.replace(/\r/g, '');
/** Up to `n` last non-empty lines. */
export function lastLines(s: string, n: number): string[] {
  return clean(s).split('\n').filter((l) => l.trim()).slice(-n);
}

/** runtime.bash's extract_summary: the SUMMARY line among the last five, as "N tests, M unexpected failures". */
export function summaryOf(stdout: string): string {
  const line = clean(stdout).trimEnd().split('\n').slice(-5).find((l) => l.startsWith('SUMMARY: '));
  return line ? line.slice('SUMMARY: '.length).trim() : '';
}

/** The verdict for a VMM's exit status, as runtime.bash and qemu_fixup_return_code make it. */
export function verdictOf(vmm: Vmm, status: number, stdout: string, stderr: string, timeoutS: number): { verdict: Verdict; reason: string } {
  const summary = summaryOf(stdout);
  const tail = () => {
    const lines = lastLines(`${stdout}\n${stderr}`, 3);
    return lines.length ? `; ${lines.join(' | ')}` : '';
  };
  let ret = status;
  if (ret === 0) {
    // Some signals end QEMU with 0; its stderr tells. Otherwise the guest ended without a debug-exit write: a failure.
    const sig = /terminating on signal (\d+)/.exec(stderr);
    if (!sig) return { verdict: 'FAIL', reason: `status 0: the guest ended without writing the debug-exit port${tail()}` };
    ret = 128 + Number(sig[1]);
  } else if (ret === 1) {
    // (0 << 1) | 1: the test passed, unless the VMM also reported errors (lines that are not warnings).
    const errors = clean(stderr).split('\n').filter((l) => l.trim() && !/warning/i.test(l));
    if (!errors.length) return { verdict: 'PASS', reason: summary };
    return { verdict: 'FAIL', reason: `status 1 with errors from ${vmm}${tail()}` };
  }
  if (ret === 77) return { verdict: 'SKIP', reason: summary || 'the test skipped itself' };
  if (ret === 124) return { verdict: 'FAIL', reason: `timeout; duration=${timeoutS}s${tail()}` };
  if (ret > 127) return { verdict: 'FAIL', reason: `terminated on signal ${ret - 128}${tail()}` };
  // tsvisor's own statuses share numbers with debug-exit codes (3 = code 1 or a triple fault); its stderr tells which.
  const own: Record<number, string> = { 1: 'a runtime error', 2: 'a usage error', 3: 'a triple fault', 4: 'an unsupported instruction', 5: 'a KVM internal error' };
  const code = ret & 1 ? `the test's exit code ${ret >> 1}` : '';
  const meaning = [code, vmm === 'tsvisor' ? own[ret] : undefined].filter(Boolean).join(', or tsvisor: ');
  const code2 = meaning ? ` (${meaning})` : '';
  return { verdict: 'FAIL', reason: `status ${ret}${code2}${summary ? `; ${summary}` : ''}${tail()}` };
}

export interface RunOptions {
  /** Overrides the cfg's timeout (seconds). */
  timeoutS?: number;
  /** The guest's console output as it comes (--verbose). */
  onOutput?: (chunk: string) => void;
  /** Lines about how the test is run (--verbose). */
  onInfo?: (line: string) => void;
}

function spawnRun(argv: string[], killAfterS: number, onOutput?: (s: string) => void): Promise<{ status: number; stdout: string; stderr: string; killed: boolean; ms: number }> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let killed = false;
    child.stdout.setEncoding('latin1').on('data', (d: string) => {
      stdout += d;
      onOutput?.(d);
    });
    child.stderr.setEncoding('latin1').on('data', (d: string) => {
      stderr += d;
      onOutput?.(d);
    });
    // As `timeout -k 1s`: SIGTERM at the end, SIGKILL a second later.
    const term = setTimeout(() => {
      killed = true;
      child.kill('SIGTERM');
      setTimeout(() => child.kill('SIGKILL'), 1000).unref();
    }, killAfterS * 1000);
    child.on('error', (e) => {
      stderr += `cannot run ${argv[0]}: ${e.message}\n`;
    });
    child.on('close', (code, signal) => {
      clearTimeout(term);
      const status = killed ? 124 : code ?? 128 + (signal === 'SIGKILL' ? 9 : signal === 'SIGTERM' ? 15 : signal === 'SIGINT' ? 2 : 6);
      resolve({ status, stdout, stderr, killed, ms: performance.now() - t0 });
    });
  });
}

/** Runs one test (already resolved from the cfg) and gives its verdict. */
export async function runTest(vmm: Vmm, suiteDir: string, t: CfgTest & { note?: string }, o: RunOptions = {}): Promise<Result> {
  const base = { name: t.name, stdout: '', stderr: '', argv: [] as string[], ms: 0, ...(t.note ? { note: t.note } : {}) };
  const skip = skipReason(vmm, suiteDir, t);
  if (skip) return { ...base, verdict: 'SKIP', reason: skip, status: null };
  const timeoutS = o.timeoutS ?? t.timeoutS;
  for (let attempt = 0; ; attempt++) {
    const { argv, ignored } = vmmArgv(vmm, suiteDir, t, timeoutS);
    o.onInfo?.(argv.map((a) => (/[\s'"]/.test(a) ? `'${a}'` : a)).join(' '));
    for (const i of ignored) o.onInfo?.(`not given to ${vmm}: ${i}`);
    // tsvisor ends itself at --timeout (status 124); the kill is a backstop.
    const r = await spawnRun(argv, vmm === 'tsvisor' ? timeoutS + 30 : timeoutS, o.onOutput);
    if (vmm === 'qemu' && attempt === 0 && qemuCpu === 'host' && /failed to set MSR 0x10a/i.test(r.stderr)) {
      o.onInfo?.('QEMU refused MSR 0x10a (IA32_ARCH_CAPABILITIES): running with -cpu host,-arch-capabilities from now on');
      qemuCpu = 'host,-arch-capabilities';
      continue;
    }
    const v = verdictOf(vmm, r.status, r.stdout, r.stderr, timeoutS);
    return { ...base, ...v, status: r.status, stdout: r.stdout, stderr: r.stderr, argv, ms: r.ms };
  }
}

/** vmexit's figures: `NAME CYCLES` lines (TSC cycles per iteration), in order. */
export function vmexitFigures(stdout: string): Array<{ test: string; cycles: number }> {
  const out: Array<{ test: string; cycles: number }> = [];
  for (const line of clean(stdout).split('\n')) {
    const m = /^\s*((?:ipi |eoi )?[a-z][a-z0-9_:-]*) (\d+)$/.exec(line);
    if (m) out.push({ test: m[1], cycles: Number(m[2]) });
  }
  return out;
}

/** One line a result: `PASS name (summary)`, `SKIP name (reason)`, `FAIL name (status N; last lines)`. */
export function resultLine(r: Result): string {
  const note = r.note ? ` [${r.note}]` : '';
  return `${r.verdict} ${r.name}${r.reason ? ` (${r.reason})` : ''}${note}`;
}
