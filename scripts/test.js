// `npm test` after the build: makes sure the guests the tests boot exist, then
// runs ava where KVM is. The hardware-KVM lane (scripts/nested-kvm.sh: kvm_amd
// inside a QEMU TCG VM) stands in for the kind of KVM this host does not have:
//   hardware KVM here: every test runs here;
//   kvm_pvm here:      every test runs here, then the files whose behaviour
//                      differs between the two kinds (LANE_FILES) run again in the lane;
//   no usable KVM:     the tests that need KVM run in the lane, the rest here.
// --lane host runs everything here only; --lane hw runs the KVM tests in the lane only.
//
// Usage: node scripts/test.js [--lane auto|host|hw] [test files...]
//   files: dist/test/NAME.test.js or test/NAME.test.ts (default: all)
import { spawnSync } from 'node:child_process';
import { accessSync, constants, existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, basename } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
process.chdir(root);
const say = (m) => process.stderr.write(`test: ${m}\n`);

let lane = 'auto';
const files = [];
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  if (argv[i] === '--lane') lane = argv[++i];
  else if (argv[i].startsWith('--lane=')) lane = argv[i].slice(7);
  else files.push(argv[i].replace(/^test\/(.*)\.ts$/, 'dist/test/$1.js'));
}
if (!['auto', 'host', 'hw'].includes(lane)) {
  say(`--lane ${lane} is not one of auto, host, hw`);
  process.exit(2);
}

function run(cmd, args) {
  const r = spawnSync(cmd, args, { stdio: 'inherit' });
  if (r.error) {
    say(`cannot run ${cmd}: ${r.error.message}`);
    return 1;
  }
  return r.status ?? 1;
}

// The guests: built once and cached (the kernel build takes minutes the first time).
for (const script of ['guest/build.sh', 'guest/debian-kernel.sh']) {
  const r = spawnSync('bash', [script], { stdio: ['ignore', 'ignore', 'inherit'] });
  if (r.status !== 0) {
    say(`${script} failed: the tests that boot Linux will say so`);
  }
}

// kvm-unit-tests, built from the shared tarball on the host (twenty times faster than in the lane's emulated CPU).
if (spawnSync(process.execPath, ['dist/scripts/kvm-unit-tests.js', '--build'], { stdio: ['ignore', 'ignore', 'inherit'] }).status !== 0) {
  say('building kvm-unit-tests failed: the test that runs it will say so');
}

const all = readdirSync('dist/test').filter((f) => f.endsWith('.test.js')).map((f) => join('dist/test', f));
const chosen = files.length ? files : all;
// A test file needs KVM when it uses the KVM test helpers.
const needsKvm = (f) => readFileSync(f, 'utf8').includes('helpers/kvm.js') && !basename(f).startsWith('api.');

function kvmUsable() {
  try {
    accessSync(process.env.TSVISOR_KVM_DEVICE || '/dev/kvm', constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * What differs between hardware KVM and kvm_pvm, so what a kvm_pvm host also
 * runs in the lane: Linux boots (CPUID, XSAVE, interrupts, user space without
 * SYSCALL completion), virtio-net over TAP from the firmware, guest commands,
 * kvm-unit-tests, and SMP (AP start-up, IPIs, PV features kvm_pvm lacks). The rest (fault handling, signals, sandboxes, the API)
 * is the VMM's own logic, the same on both.
 */
const LANE_FILES = ['linux-boot', 'linux-boot-debian', 'net-firmware', 'guest-command', 'kvm-unit-tests', 'smp'].map((n) => `dist/test/${n}.test.js`);

/** Test files that need the host's cores to themselves (several vCPUs each). */
const ALONE_FILES = ['smp'].map((n) => `dist/test/${n}.test.js`);

const ava = join(root, 'node_modules/ava/entrypoints/cli.mjs');
/** scripts/nested-kvm.sh's status when the lane itself failed. */
const LANE_FAILED = 125;
const hostKvm = kvmUsable() ? (existsSync('/sys/module/kvm_pvm') ? 'kvm_pvm' : 'hardware') : null;
let status = 0;
let inLane;
if (lane === 'host' || (lane === 'auto' && hostKvm)) {
  // The files whose guests use several vCPUs run after the others, alone: on
  // a 2-core host their vCPUs take both cores, and a Linux boot beside them
  // (linux-boot's TCP transfers on kvm_pvm) ran past its own timeout.
  const alone = chosen.filter((f) => ALONE_FILES.includes(f));
  const together = chosen.filter((f) => !alone.includes(f));
  if (together.length) status = run(process.execPath, [ava, ...together]);
  // Its multiqueue Linux boot moves 4 MiB each way in ≈ 8 minutes on kvm_pvm: past ava's default 10-minute timeout on a slower host.
  if (alone.length) status = run(process.execPath, [ava, '--concurrency', '1', '--timeout', '20m', ...alone]) || status;
  if (lane === 'host' || hostKvm === 'hardware') process.exit(status);
  inLane = chosen.filter((f) => LANE_FILES.includes(f));
  if (inLane.length) say(`this host's KVM is kvm_pvm: ${inLane.length} test files run again on hardware-style KVM, in the lane (scripts/nested-kvm.sh)`);
} else {
  inLane = chosen.filter(needsKvm);
  const here = chosen.filter((f) => !inLane.includes(f));
  if (lane === 'auto') say(`no usable /dev/kvm here: ${inLane.length} test files run in the hardware-KVM lane (scripts/nested-kvm.sh), ${here.length} here`);
  if (here.length) status = run(process.execPath, [ava, ...here]) || status;
}
if (inLane.length) {
  // One lane VM per test file. The lane's own kernel sometimes locks up under
  // QEMU's emulated SVM (docs/testing.md): with a VM per file, such a fault
  // costs that file's run, which runs once more, instead of the whole lane.
  // One file at a time: the lane's two emulated CPUs also run Node, the TAP's
  // host side and QEMU's own threads; two files at once starved the host side
  // past the guests' deadlines (an ARP reply later than 3 s, an RX step judged too early).
  // A bound on the whole lane (≈ 25 minutes for every KVM test) so it fits in CI's 90,
  // and on each file's VM, so one silent hang cannot use up the rest.
  // .ci/run sets TSVISOR_DEADLINE (epoch seconds) so the lane never runs CI past its limit.
  const deadline = Number(process.env.TSVISOR_DEADLINE ?? Infinity);
  const budgetS = Math.min(Number(process.env.TSVISOR_LANE_TIMEOUT ?? 3000), deadline - Date.now() / 1000);
  // Each file's VM gets about three times what it took in CI (2026-12-06: guest-command 141 s,
  // kvm-unit-tests 166 s, linux-boot 191 s with the Debian kernel's 61 s now a file of its own,
  // net-firmware 260 s, smp ≈ 100 s; smp's two-vCPU boot may now run twice, see test/helpers/lane.ts), so that a
  // hang costs that, and its retry still fits in the lane's budget.
  const perFileS = { 'guest-command': 600, 'kvm-unit-tests': 600, 'linux-boot': 600, 'linux-boot-debian': 300, 'net-firmware': 900, smp: 420 };
  const laneStart = Date.now();
  const left = () => Math.floor(budgetS - (Date.now() - laneStart) / 1000);
  let retries = 0;
  const failed = [];
  for (const file of inLane) {
    let fileStatus = LANE_FAILED;
    for (let attempt = 1; attempt <= 2 && fileStatus === LANE_FAILED; attempt++) {
      if (attempt === 2) {
        // 125: the lane's VM died before the tests could report (its kernel
        // locked up or crashed, or it hung to the timeout): not a test verdict.
        // The file runs once more; a test that fails is never re-run.
        if (retries >= 3) break;
        retries++;
        say(`the hardware-KVM lane died without ${basename(file)}'s status (see above); running it once more`);
      }
      const timeoutS = Math.min(perFileS[basename(file, '.test.js')] ?? 1200, left());
      if (timeoutS < 60) {
        say(`the hardware-KVM lane is out of time (${budgetS} s) before ${basename(file)}`);
        break;
      }
      fileStatus = run('bash', ['scripts/nested-kvm.sh', '--timeout', String(timeoutS), '--', 'node', ava, '--concurrency', '1', file]);
    }
    if (fileStatus !== 0) failed.push(`${basename(file)} (status ${fileStatus})`);
  }
  if (failed.length) {
    say(`in the hardware-KVM lane: ${failed.join(', ')}`);
    status = 1;
  }
}
process.exit(status);
