// npm run kvm-unit-tests -- [--vmm tsvisor|qemu] [--verbose] [--timeout S] [TEST...]
// Runs kvm-unit-tests' x86 tests (x86/unittests.cfg) under tsvisor, or under
// QEMU with KVM as the suite's x86/run starts it, and gives each test's verdict
// by the suite's rules: PASS, SKIP (reason) or FAIL (status; last lines).
// Default: the CI list (scripts/kvm-unit-tests/suite.ts CI_TESTS). The suite
// is built on first use from ../shared/third-party/kvm-unit-tests-*.tar.gz
// (or $TSVISOR_KUT_TARBALL) into the tsvisor cache; $TSVISOR_KUT_DIR names a
// built tree to use instead. Exit status: 0 when no test failed, 1 when one
// did, 2 for a usage error.
import { parseArgs } from 'node:util';
import { CI_TESTS, ensureSuite, readCfg, resolve, specFor } from './kvm-unit-tests/suite.js';
import { kvmMissing, qemuMissing, resultLine, runTest, vmexitFigures, type Result, type Vmm } from './kvm-unit-tests/run.js';

const USAGE = `usage: npm run kvm-unit-tests -- [--vmm tsvisor|qemu] [--verbose] [--timeout S] [TEST...]
       npm run kvm-unit-tests -- --build | --list
  TEST       a [section] of x86/unittests.cfg, or a CI-list name, run as the CI list runs it (ioapic with smp 1;
             smptest4: smptest with smp 4; vmexit_inl_from_qemu, vmexit_pci_mem, vmexit_pci_io:
             vmexit_cpuid with other test_args).
             Default: the CI list: ${CI_TESTS.map((s) => s.name).join(' ')}
  --vmm      tsvisor (default) or qemu (qemu-system-x86_64 -accel kvm, as the suite's x86/run)
  --timeout  seconds per test, instead of the cfg's (default 90 s)
  --verbose  print each command line and the test's output as it runs
  --build    only build the suite (once, cached) and print its directory
  --list     print the cfg's tests and the CI list
env: TSVISOR_KUT_TARBALL (the suite's tarball), TSVISOR_KUT_DIR (a built tree), TSVISOR_KUT_QEMU_CPU (QEMU's -cpu, default host)`;

const say = (s: string) => process.stderr.write(`kvm-unit-tests: ${s}\n`);

function usage(msg: string): never {
  process.stderr.write(`kvm-unit-tests: ${msg}\n${USAGE}\n`);
  process.exit(2);
}

async function main(): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      options: { vmm: { type: 'string' }, verbose: { type: 'boolean', short: 'v' }, timeout: { type: 'string' }, build: { type: 'boolean' }, list: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
    });
  } catch (e) {
    usage((e as Error).message.split('.')[0]);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const vmm = (values.vmm ?? 'tsvisor') as Vmm;
  if (vmm !== 'tsvisor' && vmm !== 'qemu') usage(`--vmm ${values.vmm}: choose tsvisor or qemu`);
  let timeoutS: number | undefined;
  if (values.timeout !== undefined) {
    timeoutS = Number(values.timeout);
    if (!Number.isInteger(timeoutS) || timeoutS < 1) usage(`--timeout ${values.timeout} is not a whole number of seconds`);
  }

  const dir = await ensureSuite(say);
  if (values.build) {
    console.log(dir);
    return 0;
  }
  const cfg = readCfg(dir);
  if (values.list) {
    for (const c of cfg) console.log(`${c.name}\t${c.file}${c.smp > 1 ? `\tsmp ${c.smp}` : ''}${c.testArgs ? `\ttest_args ${c.testArgs}` : ''}`);
    console.log(`CI list: ${CI_TESTS.map((s) => s.name).join(' ')}`);
    return 0;
  }
  const specs = positionals.length ? positionals.map(specFor) : [...CI_TESTS];
  let tests;
  try {
    tests = specs.map((s) => resolve(cfg, s));
  } catch (e) {
    usage((e as Error).message);
  }

  const why = kvmMissing(vmm) ?? (vmm === 'qemu' ? qemuMissing() : null);
  if (why) {
    say(why);
    return 1;
  }
  say(`${tests.length} tests under ${vmm}, from ${dir}`);
  const results: Result[] = [];
  for (const t of tests) {
    const r = await runTest(vmm, dir, t, {
      ...(timeoutS !== undefined ? { timeoutS } : {}),
      ...(values.verbose ? { onInfo: (l: string) => console.log(`# ${l}`), onOutput: (d: string) => process.stdout.write(d) } : {}),
    });
    results.push(r);
    console.log(resultLine(r));
    if (r.verdict !== 'SKIP' && t.file.endsWith('/vmexit.flat')) {
      const figs = vmexitFigures(r.stdout);
      if (figs.length) console.log(`  cycles per exit: ${figs.map((f) => `${f.test} ${f.cycles}`).join(', ')}`);
    }
  }
  const count = (v: string) => results.filter((r) => r.verdict === v).length;
  const fails = count('FAIL');
  console.log(`SUMMARY under ${vmm}: ${count('PASS')} passed, ${count('SKIP')} skipped, ${fails} failed (of ${results.length})`);
  return fails ? 1 : 0;
}

main().then(
  (status) => process.exit(status),
  (e: Error) => {
    say(e.message);
    process.exit(1);
  },
);
