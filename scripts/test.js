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
 * and kvm-unit-tests. The rest (fault handling, signals, sandboxes, the API)
 * is the VMM's own logic, the same on both.
 */
const LANE_FILES = ['linux-boot', 'net-firmware', 'guest-command', 'kvm-unit-tests'].map((n) => `dist/test/${n}.test.js`);

const ava = join(root, 'node_modules/ava/entrypoints/cli.mjs');
/** scripts/nested-kvm.sh's status when the lane itself failed. */
const LANE_FAILED = 125;
const hostKvm = kvmUsable() ? (existsSync('/sys/module/kvm_pvm') ? 'kvm_pvm' : 'hardware') : null;
let status = 0;
let inLane;
if (lane === 'host' || (lane === 'auto' && hostKvm)) {
  status = run(process.execPath, [ava, ...chosen]);
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
  // A bound on the whole lane run (≈ 20 minutes for every KVM test here), so two fit in CI's 90.
  // One file at a time there: the lane's two emulated CPUs also run Node, the TAP's
  // host side and QEMU's own threads; two files at once starved the host side past
  // the guests' deadlines (an ARP reply later than 3 s, an RX step judged too early).
  const laneArgs = ['scripts/nested-kvm.sh', '--timeout', process.env.TSVISOR_LANE_TIMEOUT ?? '1800', '--', 'node', ava, '--concurrency', '1', ...inLane];
  let laneStatus = run('bash', laneArgs);
  // 125: the lane's VM died before the tests could report (its kernel crashed
  // under QEMU's emulated SVM, or it hung to the lane's timeout): not a test
  // verdict. The tests run once more; a test that fails is never re-run.
  if (laneStatus === LANE_FAILED) {
    say('the hardware-KVM lane died without the tests\' status (see above); running it once more');
    laneStatus = run('bash', laneArgs);
  }
  if (laneStatus !== 0) say(`the hardware-KVM lane ended with status ${laneStatus}`);
  status = laneStatus || status;
}
process.exit(status);
