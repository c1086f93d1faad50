// `tsvisor run -- COMMAND`: the command's exit status is the run's, and every
// other way a command run can end has a status of its own. The pure parts
// (quoting, how an end is classified, the archive of added files) are tested
// here without KVM; the statuses for real, through the CLI as a user runs it,
// on the default guest (one boot per status: few, and each checks its output).
import test from 'ava';
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { commandEnd, shellCommand } from '../src/guest/command.js';
import { COMMAND_EXIT } from '../src/vcpu/protocol.js';
import { appendArchive, hostFilesArchive, parseAddOption } from '../src/guest/host-files.js';
import { defaultGuestPaths, DEFAULT_GUEST_MISSING, GUEST_READY_MARKER } from '../src/guest/default-guest.js';
import { kvmTestSerial, repoRoot } from './helpers/kvm.js';
import { TSVISOR, tsvisorRun } from './helpers/cli.js';
import { TsvisorError } from '../src/errors.js';

test('one argument is a shell command as it is; several are quoted word by word', (t) => {
  t.is(shellCommand(['make && ./test']), 'make && ./test');
  t.is(shellCommand(['sh', '-c', 'exit 7']), "sh -c 'exit 7'");
  t.is(shellCommand(['echo', "it's", '$HOME']), `echo 'it'\\''s' '$HOME'`);
  t.is(shellCommand(['ls', '/tmp/a-b_c.d']), 'ls /tmp/a-b_c.d');
});

test('how a command run ended: the status, or a status of its own for each other end', (t) => {
  const booted = `Linux version 6.1\n${GUEST_READY_MARKER}\n`;
  t.deepEqual(commandEnd('debug-exit', 7, 'x', booted), { kind: 'command', status: 7, reason: 'the command exited with status 7' });
  t.is(commandEnd('debug-exit', 0, 'x', booted).status, 0);
  const panic = commandEnd('reset', undefined, 'the guest reset the machine', 'Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n');
  t.is(panic.status, COMMAND_EXIT.panic);
  t.regex(panic.reason, /Attempted to kill init/);
  t.is(commandEnd('reset', undefined, 'the guest reset the machine', 'Linux version 6.1\n').status, COMMAND_EXIT.noInit);
  t.deepEqual(commandEnd('poweroff', undefined, 'halted', `${booted}out\ntsvisor-guest: exit 3\r\n`).status, 3, 'a kernel without /dev/port: init says the status on the console');
  t.is(commandEnd('poweroff', undefined, 'halted', booted).status, COMMAND_EXIT.noStatus);
  t.is(commandEnd('stopped', undefined, 'stopped by the VMM', booted).status, COMMAND_EXIT.noStatus);
  t.regex(commandEnd('timeout', undefined, 'no exit within 3000 ms (--timeout)', 'Linux').reason, /before the guest reached init/);
  t.is(commandEnd('timeout', undefined, 'no exit within 3000 ms (--timeout)', booted).status, COMMAND_EXIT.timeout);
  for (const kind of ['triple-fault', 'emulation-failure', 'internal-error', 'error', 'vmm-bug'] as const) t.is(commandEnd(kind, undefined, 'x', booted).status, COMMAND_EXIT.failure, kind);
  const statuses = Object.values(COMMAND_EXIT);
  t.is(new Set(statuses).size, statuses.length, 'each end has its own status');
  t.true(statuses.every((s) => s > 128 + 64), 'above the shell\'s 128+signal range');
});

test('--add: host files, directories and symlinks become a newc archive at their guest paths', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvisor-add-'));
  try {
    mkdirSync(join(dir, 'tree/sub'), { recursive: true });
    writeFileSync(join(dir, 'tree/sub/data.txt'), 'data\n');
    writeFileSync(join(dir, 'run.sh'), '#!/bin/sh\necho hi\n');
    chmodSync(join(dir, 'run.sh'), 0o755);
    symlinkSync('sub/data.txt', join(dir, 'tree/link'));
    const files = [parseAddOption(join(dir, 'run.sh')), parseAddOption(`${join(dir, 'tree')}:/opt/tree`), parseAddOption(`${join(dir, 'run.sh')}:/tmp/x/run.sh`)];
    t.deepEqual(files[0], { host: join(dir, 'run.sh'), guest: '/root/run.sh' });
    const archive = hostFilesArchive(files, 'echo hello');
    const listing = execFileSync('cpio', ['-itv', '--quiet'], { input: archive, encoding: 'utf8' });
    t.regex(listing, /^-rwxr-xr-x .* root\/run\.sh$/m);
    t.regex(listing, /^-rw-r--r-- .* opt\/tree\/sub\/data\.txt$/m);
    t.regex(listing, /^lrwxrwxrwx .* opt\/tree\/link -> sub\/data\.txt$/m);
    t.regex(listing, /^drwxrwxrwt .* tmp$/m, '/tmp stays world-writable and sticky');
    t.regex(listing, /^-rw-r--r-- .* etc\/tsvisor\/command$/m);
    // Appended to an archive, both unpack in order (cpio reads the first; the kernel reads both).
    const joined = appendArchive(Uint8Array.of(1, 2, 3), archive);
    t.is(joined.length % 4, archive.length % 4);
    t.deepEqual(joined.subarray(4), archive);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('--add mistakes: one line each, before anything boots', (t) => {
  const err = (text: string) => t.throws(() => parseAddOption(text), { instanceOf: TsvisorError });
  t.regex(err('/nonexistent/file')!.line, /--add \/nonexistent\/file: no such file or directory \(check the path\)/);
  t.regex(err(`${repoRoot}package.json:relative/path`)!.line, /not an absolute path/);
  t.regex(err(`${repoRoot}package.json:/../etc`)!.line, /not an absolute path below \//);
  t.is(err('/nonexistent/file')!.exitCode, 2);
});

/** Runs the tsvisor CLI to its end; stdout and stderr apart, as a harness sees them. */
const tsvisor = tsvisorRun;

test(`with -- COMMAND, tsvisor's own failure (no KVM device) is ${COMMAND_EXIT.failure}, never a status the command could give`, (t) => {
  const r = spawnSync(process.execPath, [TSVISOR, 'run', '--', 'true'], { encoding: 'utf8', env: { ...process.env, TSVISOR_KVM_DEVICE: '/nonexistent/kvm' } });
  t.is(r.status, COMMAND_EXIT.failure);
  t.regex(r.stderr, /^tsvisor: .*\/nonexistent\/kvm.*\n$/);
});

const guestMissing = () => (defaultGuestPaths() ? null : DEFAULT_GUEST_MISSING);

kvmTestSerial('tsvisor run -- COMMAND exits with the command\'s status: true 0, false 1, exit 7, a missing command 127', async (t) => {
  const cases: Array<[string[], number, RegExp]> = [
    [['sh', '-c', 'echo out-$((6*7)); echo err >&2; true'], 0, /^out-42\nerr\n$/],
    [['false'], 1, /^$/],
    [['exit 7'], 7, /^$/],
    [['no-such-command', '--flag'], 127, /no-such-command: not found/],
  ];
  for (const [argv, status, output] of cases) {
    // A run that hangs ends at --timeout, saying where the vCPU was.
    const r = await tsvisor(['run', '--timeout', '600', '--', ...argv]);
    t.log(`${argv.join(' ')} → ${r.status}`);
    t.is(r.status, status, `${argv.join(' ')}: ${r.stderr.slice(-3000)}`);
    t.regex(r.stdout, output, 'the command\'s output, and only it, on stdout');
  }
}, guestMissing);

kvmTestSerial('--add puts host files into the guest, where the command finds them (a guest booted with acpi=off: the MP table alone)', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvisor-add-run-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'check.sh'), '#!/bin/sh\n[ -d /sys/firmware/acpi ] && echo acpi-on\nsha256sum /opt/data/blob | cut -d" " -f1\nexit 3\n');
  chmodSync(join(dir, 'check.sh'), 0o755);
  mkdirSync(join(dir, 'data'));
  const blob = Buffer.alloc(100_000, 'tsvisor');
  writeFileSync(join(dir, 'data/blob'), blob);
  const expected = execFileSync('sha256sum', [join(dir, 'data/blob')], { encoding: 'utf8' }).split(' ')[0];
  const r = await tsvisor(['run', '--append', 'console=ttyS0 panic=-1 quiet acpi=off', '--add', join(dir, 'check.sh'), '--add', `${join(dir, 'data')}:/opt/data`, '--', './check.sh']);
  t.is(r.stdout.trim(), expected, 'the file arrived whole, and nothing else printed: with acpi=off the kernel left ACPI alone');
  t.is(r.status, 3);
}, guestMissing);

kvmTestSerial(`a guest kernel that panics gives status ${COMMAND_EXIT.panic}; a run past --timeout gives ${COMMAND_EXIT.timeout}`, async (t) => {
  // init that exits at once: Linux panics ("Attempted to kill init") and panic=-1 reboots.
  const panic = await tsvisor(['run', '--append', 'console=ttyS0 panic=-1 quiet rdinit=/bin/false', '--', 'true']);
  t.is(panic.status, COMMAND_EXIT.panic, panic.stderr);
  t.regex(panic.stderr, /the guest kernel panicked: Kernel panic - not syncing: Attempted to kill init/);
  const late = await tsvisor(['run', '--timeout', '3', '--', 'sleep 600']);
  t.is(late.status, COMMAND_EXIT.timeout, late.stderr);
  t.regex(late.stderr, /no exit within 3000 ms \(--timeout\)/);
}, guestMissing);

kvmTestSerial('npm start\'s guest: a shell on the console with the network up; ping both ways; exit powers off by ACPI with status 0', async (t) => {
  // What `npm start` runs, with this test typing instead of a person.
  // --stats-json only to learn how the run ended, which a quiet power-off does not print.
  const endJson = join(mkdtempSync(join(tmpdir(), 'tsvisor-npm-start-')), 'end.json');
  t.teardown(() => rmSync(dirname(endJson), { recursive: true, force: true }));
  const child = spawn(process.execPath, [TSVISOR, 'run', '--net', 'sandbox', '--stats-json', endJson], { stdio: ['pipe', 'pipe', 'pipe'], timeout: 15 * 60_000 });
  let stdout = '';
  let stderr = '';
  const seen: Array<{ re: RegExp; resolve: () => void }> = [];
  const check = () => {
    for (const w of [...seen]) if (w.re.test(stdout + stderr)) { seen.splice(seen.indexOf(w), 1); w.resolve(); }
  };
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); check(); });
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); check(); });
  const closed = new Promise<number | null>((resolve) => child.on('close', resolve));
  // A run that ends before printing `re` fails the wait with what it printed last, never hangs the test.
  const waitFor = (re: RegExp) => Promise.race([
    new Promise<void>((resolve) => { seen.push({ re, resolve }); check(); }),
    closed.then((code) => {
      if (re.test(stdout + stderr)) return;
      const tail = (stdout + stderr).trim().split('\n').slice(-15).join('\n');
      throw new Error(`tsvisor ended (status ${code}) before printing ${re}; its last lines:\n${tail}`);
    }),
  ]);
  t.teardown(() => child.kill('SIGTERM'));

  await waitFor(/exit or poweroff ends the run/);
  child.stdin.write('ping -c 3 -W 5 10.0.2.2 && echo "guest-ping-$((40+2))"\n');
  await waitFor(/guest-ping-42/);
  await waitFor(/host → guest ping (answered|FAILED)/);
  child.stdin.write('exit\n');
  const status = await closed;
  t.log(stderr.trim().split('\n').filter((l) => l.startsWith('tsvisor:')).join('\n'));
  t.regex(stdout, /eth0 10\.0\.2\.15\/24/, 'the login message shows eth0 configured');
  t.regex(stdout, /3 packets transmitted, 3 packets received/);
  t.regex(stderr, /host → guest ping answered/);
  const end = JSON.parse(readFileSync(endJson, 'utf8')) as { kind: string; reason: string };
  t.deepEqual([end.kind, end.reason], ['poweroff', 'the guest powered off (ACPI S5)'], 'exit → init\'s poweroff -f → Linux writes S5 to PM1a_CNT');
  t.is(status, 0);
}, () => (process.getuid?.() === 0 ? guestMissing() : 'needs root for --net sandbox'));
