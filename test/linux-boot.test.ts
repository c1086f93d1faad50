// Booting real Linux. A boot costs minutes on kvm_pvm, so every check that
// needs a booted default guest shares one boot. What the kernel does alone is
// checked everywhere; what needs guest user space (a command's output) is
// checked where user space runs (hardware KVM) and skipped here with the reason.
import test from 'ava';
import { Vm, type VmExit } from '../src/vm.js';
import { defaultGuestPaths, debianGuestPaths, guestCommandArg, GUEST_READY_MARKER, GUEST_EXIT_RE, DEFAULT_GUEST_MISSING, DEBIAN_GUEST_MISSING } from '../src/guest/default-guest.js';
import { kvmTestSerial, hostKind } from './helpers/kvm.js';

const userSpaceRuns = hostKind !== 'kvm_pvm';
const USER_SPACE_SKIP = 'guest user space cannot make system calls on kvm_pvm (see MEASURED.md); runs on hardware KVM';

kvmTestSerial('the default guest boots to /init, and its end (power-off, or the reboot after init dies here) ends the run with status 0', async (t) => {
  const guest = defaultGuestPaths()!;
  const vm = await Vm.boot({
    kernel: guest.kernel,
    initrd: guest.initrd,
    cmdline: `console=ttyS0 panic=-1 ${guestCommandArg('uname -r; echo guest-says-$((6*7))')}`,
    memMiB: 256,
    timeoutMs: 8 * 60_000,
  });
  t.teardown(() => vm.stop());
  const version = await vm.console.waitFor(/Linux version (\S+)/, { fromStart: true, timeoutMs: 8 * 60_000 });
  await vm.console.waitFor(/Run \/init as init process/, { fromStart: true, timeoutMs: 8 * 60_000 });
  t.regex(vm.console.output, /serial8250: ttyS0 at I\/O 0x3f8 \(irq = 4/, 'the kernel found the 16550A');
  const exit: VmExit = await vm.exited;
  t.log(`${hostKind}: ${exit.stats.totalExits} exits, ${(exit.stats.runMs / 1000).toFixed(1)} s`);
  if (userSpaceRuns) {
    t.true(vm.console.output.includes(GUEST_READY_MARKER));
    t.true(vm.console.output.includes(`\n${version[1]}`) || vm.console.output.includes(version[1]), 'uname -r printed the running kernel');
    t.regex(vm.console.output, /guest-says-42/);
    t.regex(vm.console.output, GUEST_EXIT_RE);
    t.is(exit.kind, 'poweroff', 'init powers off after the command');
  } else {
    t.log(`user-space checks skipped: ${USER_SPACE_SKIP}`);
    // init cannot run here; the kernel panics and panic=-1 reboots.
    t.regex(vm.console.output, /Kernel panic - not syncing: Attempted to kill init/);
    t.is(exit.kind, 'reset');
  }
  t.is(exit.status, 0);
}, () => (defaultGuestPaths() ? null : DEFAULT_GUEST_MISSING));

kvmTestSerial('a stock Debian cloud kernel (bzImage, host-decompressed) starts and prints its first lines', async (t) => {
  const guest = debianGuestPaths()!;
  const vm = await Vm.boot({ kernel: guest.bzImage, initrd: guest.initrd, cmdline: 'console=ttyS0 panic=-1', memMiB: 512, timeoutMs: 10 * 60_000 });
  t.teardown(() => vm.stop());
  t.is(vm.info.format, 'bzImage');
  t.truthy(vm.info.compression, 'its payload was decompressed on the host');
  await vm.console.waitFor(new RegExp(`Linux version ${guest.release.replace(/[.+]/g, '\\$&')}`), { fromStart: true, timeoutMs: 5 * 60_000 });
  await vm.console.waitFor(/Command line: .*console=ttyS0/, { fromStart: true, timeoutMs: 5 * 60_000 });
  if (userSpaceRuns) {
    // On hardware KVM the whole boot is quick: see the modules load and the shell come up.
    await vm.console.waitFor(new RegExp(GUEST_READY_MARKER), { fromStart: true, timeoutMs: 5 * 60_000 });
  } else {
    t.log(`full boot not awaited: a stock kernel needs ~20 minutes on kvm_pvm; ${USER_SPACE_SKIP}`);
  }
  const exit = await vm.stop();
  t.true(['stopped', 'reset'].includes(exit.kind));
}, () => (debianGuestPaths() ? null : DEBIAN_GUEST_MISSING));
