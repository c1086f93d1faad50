// How a run ends, for real on KVM: every way a guest can stop gives a clear
// reason and its own exit status, through the CLI as a user sees it.
import test from 'ava';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { kvmTest, firmwareImage, firmwareMissing, repoRoot } from './helpers/kvm.js';

function tsvisor(args: string[]) {
  const r = spawnSync(process.execPath, [join(repoRoot, 'bin/tsvisor.js'), ...args], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

kvmTest('a guest that halts with interrupts off (Linux power-off without ACPI) ends the run with status 0', (t) => {
  const r = tsvisor(['run', '--kernel', firmwareImage('halt'), '--mem', '16', '--timeout', '30', '--verbose']);
  t.regex(r.stdout, /halt: halting/);
  t.regex(r.stderr, /halted with interrupts disabled/);
  t.is(r.status, 0);
}, firmwareMissing('halt'));

kvmTest('a triple fault ends the run with status 3 and the registers', (t) => {
  const r = tsvisor(['run', '--kernel', firmwareImage('triple-fault'), '--mem', '16', '--timeout', '30']);
  t.regex(r.stderr, /triple-faulted \(KVM_EXIT_SHUTDOWN\) at rip=0x[0-9a-f]+ .*cr0=/);
  t.is(r.status, 3);
}, firmwareMissing('triple-fault'));

kvmTest('a guest that never ends is stopped by --timeout with status 124', (t) => {
  const r = tsvisor(['run', '--kernel', firmwareImage('exits'), '--append', 'kind=pio_out n=100000000', '--mem', '16', '--timeout', '2']);
  t.regex(r.stderr, /no exit within 2000 ms \(--timeout\)/);
  t.is(r.status, 124);
}, firmwareMissing('exits'));

kvmTest('a debug-exit write of v ends the run with status (v << 1) | 1', (t) => {
  const r = tsvisor(['run', '--kernel', firmwareImage('hello'), '--mem', '16', '--stats']);
  t.is(r.status, 1);
  t.regex(r.stderr, /0xf4 debug-exit/);
}, firmwareMissing('hello'));

test('user mistakes get one line, no stack trace, and status 2', (t) => {
  for (const args of [['run', '--mem', '0'], ['run', '--kernel', '/nonexistent/bzImage'], ['run', '--what'], ['fly'], ['run', '--timeout', 'soon']]) {
    const r = tsvisor(args);
    t.is(r.status, 2, args.join(' '));
    t.regex(r.stderr, /^tsvisor: .+\n$/, args.join(' '));
    t.notRegex(r.stderr, /\n\s+at /);
  }
});

test('a file that is not a kernel is a runtime error with a hint', (t) => {
  const r = tsvisor(['run', '--kernel', join(repoRoot, 'package.json'), '--mem', '16']);
  t.is(r.status, 1);
  t.regex(r.stderr, /^tsvisor: .*package\.json is not a kernel.*\(pass a bzImage, a vmlinux or a multiboot image\)\n$/);
});
