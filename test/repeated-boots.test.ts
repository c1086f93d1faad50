// API users boot many VMs in one process (a test suite, a fuzzer): every run
// must give back what it took — file descriptors, mappings (guest RAM, the
// vCPU's kvm_run, native buffers), the vCPU thread — whether the guest ended
// by itself or was stopped by vm.stop().
import { readdirSync, readFileSync } from 'node:fs';
import { kvmTestSerial, firmwareImage, firmwareMissing } from './helpers/kvm.js';
import { testNet, netMissing } from './helpers/netns.js';
import { until } from './helpers/net-fakes.js';

const fds = () => readdirSync('/proc/self/fd').length;
/** vCPU threads alive (the worker names its thread vcpu0). */
const vcpuThreads = () => readdirSync('/proc/self/task').filter((tid) => {
  try {
    return readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim() === 'vcpu0';
  } catch {
    return false; // ended meanwhile
  }
}).length;
const maps = () => readFileSync('/proc/self/maps', 'utf8').trim().split('\n');
/** Bytes of address space mapped (VSZ): guest RAM left mapped shows here whether or not the guest touched it. */
const mappedBytes = () => maps().reduce((sum, l) => {
  const [lo, hi] = l.split(' ')[0].split('-').map((x) => parseInt(x, 16));
  return sum + (hi - lo);
}, 0);
const rssBytes = () => Number(readFileSync('/proc/self/statm', 'utf8').split(' ')[1]) * 4096;
const MiB = 1024 * 1024;

kvmTestSerial('12 VMs booted one after another in one process, with a NIC, half stopped by vm.stop(): fds, vCPU threads, KVM mappings, address space and RSS stay flat', async (t) => {
  const { Vm } = await import('../src/vm.js');
  const net = testNet(t);
  const MEM_MIB = 128;
  const RUNS = 12;
  const bootOnce = async (i: number) => {
    if (i % 2 === 0) {
      // Ends by itself: prints a line, writes the debug-exit port.
      const vm = await Vm.boot({ kernel: firmwareImage('hello'), cmdline: `run=${i}`, memMiB: MEM_MIB, timeoutMs: 120_000, net: { tap: net.tap } });
      const exit = await vm.exited;
      t.is(exit.kind, 'debug-exit', `run ${i}: ${exit.reason}`);
    } else {
      // Runs until stopped: exits without end.
      const vm = await Vm.boot({ kernel: firmwareImage('exits'), cmdline: 'kind=pio_out n=2000000000', memMiB: MEM_MIB, timeoutMs: 120_000, net: { tap: net.tap } });
      const exit = await vm.stop();
      t.is(exit.kind, 'stopped', `run ${i}: ${exit.reason}`);
    }
  };
  // The first runs load modules, the addon and libraries, and warm V8's heap.
  for (let i = 0; i < 4; i++) {
    await bootOnce(i);
    await until(() => vcpuThreads() === 0, 30_000, 'the warm-up vCPU threads to end');
  }
  const before = { fds: fds(), mapped: mappedBytes(), rss: rssBytes() };
  for (let i = 4; i < RUNS; i++) {
    await bootOnce(i);
    // The previous VM is torn down before the next is made: in the hardware-KVM
    // lane, KVM_CREATE_VM racing a VM's teardown locked up the lane's kernel.
    await until(() => vcpuThreads() === 0, 30_000, `run ${i}'s vCPU thread to end`);
    t.is(fds(), before.fds, `run ${i}: no file descriptor left behind`);
    t.deepEqual(maps().filter((l) => /kvm/.test(l)), [], `run ${i}: no KVM mapping left (kvm_run holds the whole VM)`);
  }
  const grewMapped = mappedBytes() - before.mapped;
  const grewRss = rssBytes() - before.rss;
  t.log(`${RUNS - 4} runs: address space ${(grewMapped / MiB).toFixed(1)} MiB, RSS ${(grewRss / MiB).toFixed(1)} MiB (each run maps ${MEM_MIB} MiB of guest RAM)`);
  // What may remain: koffi's per-thread call memory, which it never frees when
  // a worker ends (src/sys/libc.ts shrinks it to about 0.2 MiB per run).
  t.true(grewMapped < 32 * MiB, `address space grew ${(grewMapped / MiB).toFixed(1)} MiB over ${RUNS - 4} runs (a guest's RAM left mapped would be ${MEM_MIB} MiB per run)`);
  t.true(grewRss < 32 * MiB, `RSS grew ${(grewRss / MiB).toFixed(1)} MiB over ${RUNS - 4} runs`);
}, () => netMissing() ?? firmwareMissing('hello')() ?? firmwareMissing('exits')());
