// `--net sandbox` without root: tsvisor re-runs itself in a user + network
// namespace of its own (unshare --user --map-root-user --net) and makes the
// sandbox there. Here:
//  - what the host must allow, each refusal as one line with the fix (the
//    checks fed with a fake host, so every case runs on any machine);
//  - the re-run itself: root inside, another network namespace, the exit status
//    passed back, SIGINT/SIGTERM forwarded;
//  - the CLI as nobody: /dev/net/tun closed to them gives the one line and
//    leaves nothing; with /dev/net/tun open to them (a 0666 node bound over it
//    in a private mount namespace, the host's device untouched) the sandbox is
//    made inside their own namespaces, seen from outside while the run waits
//    on its kernel (a FIFO), and it is gone when the run ends;
//  - with KVM: a guest pings the host side of such a sandbox.
import test, { type ExecutionContext } from 'ava';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { TsvisorError } from '../src/errors.js';
import { insideOwnUserNamespace, sandboxReexec, unprivilegedSandboxProblem, USERNS_ENV, type UsernsHost } from '../src/net/user-namespace.js';
import { firmwareImage, firmwareMissing, kvmTest, repoRoot } from './helpers/kvm.js';
import { haltingMultiboot } from './helpers/kernel-images.js';

const isRoot = process.getuid?.() === 0;
const NOBODY = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'];
const TSVISOR = join(repoRoot, 'bin/tsvisor.js');
const MODULE = pathToFileURL(join(repoRoot, 'dist/src/net/user-namespace.js')).href;
const ownNet = readlinkSync('/proc/self/ns/net');
const ownUser = readlinkSync('/proc/self/ns/user');

// ---------------------------------------------------------------- the checks, on a fake host

const MODE_LINE = 'mode 0600, owner root, group root';

function host(over: Partial<UsernsHost> & { sysctls?: Record<string, string>; devices?: Record<string, string | null> } = {}): UsernsHost {
  return {
    probe: over.probe ?? (() => ({ status: 0, output: '' })),
    sysctl: (path) => over.sysctls?.[path] ?? null,
    openDevice: (path) => over.devices?.[path] ?? null,
    describeDevice: () => MODE_LINE,
  };
}
const refused = (output: string) => () => ({ status: 1, output });

function line(t: ExecutionContext, e: TsvisorError | null, ...names: string[]): void {
  t.true(e instanceof TsvisorError, 'refused');
  if (!e) return;
  t.is(e.exitCode, 1);
  t.regex(e.line, /^[^\n]+ \([^\n]+\)$/, 'one line, ending with the fix in parentheses');
  for (const n of names) t.true(e.line.includes(n), `names ${JSON.stringify(n)}: ${e.line}`);
}

test('host allows it: no problem', (t) => {
  t.is(unprivilegedSandboxProblem(host(), '/dev/kvm'), null);
});

test('unshare not installed: util-linux and how to install it', (t) => {
  line(t, unprivilegedSandboxProblem(host({ probe: () => ({ errorCode: 'ENOENT', status: 1, output: 'spawnSync unshare ENOENT' }) })), 'unshare (util-linux)', 'apt-get install util-linux, or run as root');
});

test('user namespaces off (max_user_namespaces 0): the file and the sysctl that turns them on', (t) => {
  const e = unprivilegedSandboxProblem(host({ probe: refused('unshare: unshare failed: No space left on device\n'), sysctls: { '/proc/sys/user/max_user_namespaces': '0' } }));
  line(t, e, '/proc/sys/user/max_user_namespaces is 0', 'sysctl -w user.max_user_namespaces=', 'or run as root');
});

test('unprivileged user namespaces off (Debian unprivileged_userns_clone 0): the sysctl that allows them', (t) => {
  const e = unprivilegedSandboxProblem(host({ probe: refused('unshare: unshare failed: Operation not permitted\n'), sysctls: { '/proc/sys/kernel/unprivileged_userns_clone': '0', '/proc/sys/user/max_user_namespaces': '1000' } }));
  line(t, e, '/proc/sys/kernel/unprivileged_userns_clone is 0', 'sysctl -w kernel.unprivileged_userns_clone=1, or run as root');
});

test('AppArmor restricting user namespaces: says so, with what unshare printed', (t) => {
  const e = unprivilegedSandboxProblem(host({ probe: refused('unshare: write failed /proc/self/uid_map: Operation not permitted\n'), sysctls: { '/proc/sys/kernel/apparmor_restrict_unprivileged_userns': '1' } }));
  line(t, e, 'apparmor_restrict_unprivileged_userns is 1', 'unshare said: unshare: write failed /proc/self/uid_map: Operation not permitted', 'sysctl -w kernel.apparmor_restrict_unprivileged_userns=0');
});

test('unshare refused for another reason: what it printed, on one line', (t) => {
  const e = unprivilegedSandboxProblem(host({ probe: refused('unshare: unshare failed: Operation not permitted\nsecond line\n') }));
  line(t, e, 'could not make one: unshare: unshare failed: Operation not permitted; second line', 'allow unprivileged user namespaces on this host, or run as root');
});

test('/dev/net/tun not open to the user: the device, its mode, and chmod 0666 or root', (t) => {
  line(t, unprivilegedSandboxProblem(host({ devices: { '/dev/net/tun': 'EACCES' } })), '/dev/net/tun', MODE_LINE, 'chmod 0666 /dev/net/tun (its usual mode) or run as root');
});

test('/dev/net/tun missing: modprobe tun', (t) => {
  line(t, unprivilegedSandboxProblem(host({ devices: { '/dev/net/tun': 'ENOENT' } })), '/dev/net/tun is missing', 'modprobe tun');
});

test('the KVM device not open to the user: the kvm group or root; a missing one is left to the boot', (t) => {
  line(t, unprivilegedSandboxProblem(host({ devices: { '/dev/my-kvm': 'EACCES' } }), '/dev/my-kvm'), 'permission denied opening /dev/my-kvm', 'add your user to the kvm group or run as root');
  t.is(unprivilegedSandboxProblem(host({ devices: { '/dev/kvm': 'ENOENT' } }), '/dev/kvm'), null, 'the boot says "/dev/kvm does not exist" itself');
});

test('user namespaces are checked before the devices: a refused unshare is what the user hears first', (t) => {
  const e = unprivilegedSandboxProblem(host({ probe: refused('unshare: unshare failed: Operation not permitted'), devices: { '/dev/net/tun': 'EACCES' } }));
  line(t, e, 'user namespace');
  t.false(e!.line.includes('/dev/net/tun'));
});

test('no re-run without --net sandbox, for root, or outside a namespace the marker does not match', (t) => {
  t.is(sandboxReexec(['--net', 'tap:tap0'], { mode: 'tap', ifname: 'tap0', mac: '52:54:00:12:34:56' }), null);
  t.is(sandboxReexec([], undefined), null);
  if (isRoot) t.is(sandboxReexec(['--net', 'sandbox'], { mode: 'sandbox', mac: '52:54:00:12:34:56' }), null, 'root uses a named namespace');
  const saved = process.env[USERNS_ENV];
  t.teardown(() => (saved === undefined ? delete process.env[USERNS_ENV] : (process.env[USERNS_ENV] = saved)));
  delete process.env[USERNS_ENV];
  t.false(insideOwnUserNamespace(), 'no marker');
  process.env[USERNS_ENV] = ownNet;
  t.false(insideOwnUserNamespace(), 'a marker naming the namespace this process is in is not believed');
});

// ---------------------------------------------------------------- running things for real

interface Ended {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function start(argv: string[], env: NodeJS.ProcessEnv = {}): { child: ChildProcess; ended: Promise<Ended>; stdout: () => string } {
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const ended = new Promise<Ended>((resolve) => child.on('close', (status, signal) => resolve({ status, signal, stdout, stderr })));
  return { child, ended, stdout: () => stdout };
}

async function within<T>(ms: number, what: string, p: Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms} ms`)), ms)));
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

async function until<T>(what: string, fn: () => T | null | undefined, ms = 30_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = fn();
    if (v !== null && v !== undefined) return v;
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const has = (cmd: string) => spawnSync(cmd, ['--version']).status === 0;
/** Who runs the unprivileged side: nobody when we are root, else this user. */
const asUser = isRoot ? NOBODY : [];

function usernsMissing(): string | null {
  if (isRoot && !has('setpriv')) return 'setpriv (util-linux) is not installed';
  if (!has('unshare')) return 'unshare (util-linux) is not installed';
  const r = spawnSync(asUser[0] ?? 'unshare', [...asUser.slice(1), ...(asUser.length ? ['unshare'] : []), '--user', '--map-root-user', '--net', 'true'], { encoding: 'utf8' });
  if (r.status !== 0) return `this host does not let ${isRoot ? 'nobody' : 'this user'} make a user namespace (${`${r.stderr}`.trim() || `status ${r.status}`})`;
  return null;
}
const usernsMissingNow = usernsMissing();
const testIf = (title: string, missing: string | null, fn: (t: ExecutionContext) => Promise<void>) =>
  missing === null ? test.serial(title, fn) : test.skip(`${title} — skipped: ${missing}`, () => {});

/** Runs `command` through runInOwnUserNamespace in a node process of its own (as nobody when root); the module is the built one. */
function reexecHarness(command: string[]) {
  const script = `const { runInOwnUserNamespace } = await import(${JSON.stringify(MODULE)}); process.exitCode = await runInOwnUserNamespace(JSON.parse(process.argv[1]));`;
  return start([...asUser, process.execPath, '--input-type=module', '-e', script, JSON.stringify(command)]);
}

testIf('the re-run: root inside, its own user and network namespaces, the marker believed, the status passed back', usernsMissingNow, async (t) => {
  const inner = `const { insideOwnUserNamespace } = await import(${JSON.stringify(MODULE)}); const { readlinkSync } = await import('node:fs');
    console.log(JSON.stringify({ uid: process.getuid(), net: readlinkSync('/proc/self/ns/net'), user: readlinkSync('/proc/self/ns/user'), inside: insideOwnUserNamespace() })); process.exit(42);`;
  const r = await within(30_000, 'the re-run', reexecHarness([process.execPath, '--input-type=module', '-e', inner]).ended);
  t.is(r.status, 42, r.stderr);
  const seen = JSON.parse(r.stdout.trim()) as { uid: number; net: string; user: string; inside: boolean };
  t.is(seen.uid, 0, 'the user is root inside');
  t.not(seen.net, ownNet, 'another network namespace');
  t.not(seen.user, ownUser, 'another user namespace');
  t.true(seen.inside, 'the inner process knows it is inside');
});

for (const [signal, code] of [['SIGTERM', 7], ['SIGINT', 8]] as const) {
  testIf(`the re-run: ${signal} to the outer process reaches the inner one, whose status comes back`, usernsMissingNow, async (t) => {
    const sig = signal.slice(3);
    const run = reexecHarness(['sh', '-c', `trap 'echo got-${sig}; exit ${code}' ${sig}; echo ready; i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; exit 99`]);
    t.teardown(() => run.child.kill('SIGKILL'));
    await until('the inner shell', () => (run.stdout().includes('ready') ? true : null));
    run.child.kill(signal);
    const r = await within(30_000, `after ${signal}`, run.ended);
    t.is(r.signal, null, 'the outer process did not die of it');
    t.true(r.stdout.includes(`got-${sig}`), r.stdout);
    t.is(r.status, code);
  });
}

testIf('the re-run: an inner process killed by a signal gives 128 + its number', usernsMissingNow, async (t) => {
  const r = await within(30_000, 'the re-run', reexecHarness(['sh', '-c', 'kill -KILL $$']).ended);
  t.is(r.status, 137, r.stderr);
});

// ---------------------------------------------------------------- the CLI as nobody

const dir = mkdtempSync(join(tmpdir(), 'tsvisor-userns-'));
chmodSync(dir, 0o755);
test.after.always(() => rmSync(dir, { recursive: true, force: true }));


function netnsList(): string {
  return spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout;
}
function hostLinks(): string[] {
  return spawnSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' }).stdout.split('\n').map((l) => /^\d+: ([^:@]+)/.exec(l)?.[1]).filter((n): n is string => !!n).sort();
}
function processesMentioning(text: string): number[] {
  const out: number[] = [];
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(text)) out.push(Number(pid));
    } catch {}
  }
  return out;
}
function processesIn(nsLink: string, kind: 'net' | 'user'): number[] {
  const out: number[] = [];
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      if (readlinkSync(`/proc/${pid}/ns/${kind}`) === nsLink) out.push(Number(pid));
    } catch {}
  }
  return out;
}

function oneLine(t: ExecutionContext, r: Ended, status: number, ...names: string[]): void {
  t.is(r.status, status, r.stderr);
  t.regex(r.stderr, /^tsvisor: [^\n]+ \([^\n]+\)\n$/, 'one line, ending with the fix in parentheses');
  t.notRegex(r.stderr, /\bat .*:\d+:\d+|internal error/, 'no stack trace');
  for (const n of names) t.true(r.stderr.includes(n), `names ${JSON.stringify(n)}: ${r.stderr}`);
}

function tunClosedMissing(): string | null {
  if (!isRoot) return 'needs root to run tsvisor as nobody';
  if (!existsSync('/dev/net/tun')) return '/dev/net/tun does not exist';
  const s = statSync('/dev/net/tun');
  if ((s.mode & 0o006) === 0o006 || s.uid === 65534) return `/dev/net/tun is open to nobody here (mode ${(s.mode & 0o777).toString(8)})`;
  return usernsMissingNow;
}

testIf('as nobody, /dev/net/tun closed to them: status 1, one line naming /dev/net/tun and the fix, nothing left behind', tunClosedMissing(), async (t) => {
  const kernel = join(dir, 'tun-closed-multiboot.bin');
  writeFileSync(kernel, haltingMultiboot());
  chmodSync(kernel, 0o644);
  const linksBefore = hostLinks();
  const run = start([...NOBODY, process.execPath, TSVISOR, 'run', '--kernel', kernel, '--mem', '16', '--net', 'sandbox']);
  const r = await within(60_000, 'tsvisor', run.ended);
  oneLine(t, r, 1, '/dev/net/tun', 'chmod 0666 /dev/net/tun (its usual mode) or run as root');
  t.false(r.stderr.includes('needs root:'), 'not the old "needs root" refusal: without root, sandbox is tried in a user namespace');
  t.notRegex(netnsList(), new RegExp(`tsvisor-${run.child.pid}-`), 'no namespace was made');
  t.deepEqual(hostLinks(), linksBefore, 'no interface appeared in the host\'s namespace');
  t.deepEqual(processesMentioning(kernel), [], 'no process of the run is left');
});

function tunOpenMissing(): string | null {
  if (!isRoot) return 'needs root to run tsvisor as nobody with its own /dev/net/tun node';
  for (const cmd of ['mknod', 'mount', 'mkfifo']) if (!has(cmd)) return `${cmd} is not installed`;
  return usernsMissingNow;
}

/**
 * tsvisor run `argv` as nobody in a private mount namespace where /dev/net/tun (and the
 * KVM device, where there is one) are 0666 nodes on a tmpfs bound over the
 * host's: the host's devices and their modes are not touched.
 */
function startAsNobodyWithDevices(argv: string[]) {
  return startWithDevices([...NOBODY, process.execPath, TSVISOR, 'run', ...argv]);
}

function startWithDevices(command: string[]) {
  const nodes = mkdtempSync(join(dir, 'nodes-'));
  const binds = [`mount -t tmpfs -o mode=0755 tsvt-dev ${nodes}`, `mknod -m 0666 ${nodes}/tun c 10 200`, `mount --bind ${nodes}/tun /dev/net/tun`];
  if (existsSync('/dev/kvm')) binds.push(`mknod -m 0666 ${nodes}/kvm c 10 232`, `mount --bind ${nodes}/kvm /dev/kvm`);
  const quoted = command.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  return start(['unshare', '--mount', '--propagation', 'private', 'sh', '-c', `set -e; ${binds.join('; ')}; exec ${quoted}`]);
}

/** The re-run tsvisor: a child of `outer` in another network namespace, carrying the marker. */
function innerOf(outer: number): number | null {
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      if (!new RegExp(`^PPid:\\s+${outer}$`, 'm').test(readFileSync(`/proc/${pid}/status`, 'utf8'))) continue;
      if (readlinkSync(`/proc/${pid}/ns/net`) === ownNet) continue;
      if (!readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').some((v) => v.startsWith(`${USERNS_ENV}=`))) continue;
      if (!readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(TSVISOR)) continue;
      return Number(pid);
    } catch {}
  }
  return null;
}

const inside = (pid: number, argv: string[]) => spawnSync('nsenter', ['-t', String(pid), '-U', '-n', ...argv], { encoding: 'utf8' }).stdout;

testIf('as nobody, /dev/net/tun open to them: the sandbox is made in their own user + network namespace, and is gone with the run', tunOpenMissing(), async (t) => {
  // The kernel is a FIFO: the run waits there, after the sandbox is made and before the boot.
  const kernel = join(dir, 'kernel-fifo');
  t.is(spawnSync('mkfifo', ['-m', '0666', kernel]).status, 0);
  chmodSync(kernel, 0o666);
  const linksBefore = hostLinks();
  const run = startAsNobodyWithDevices(['--kernel', kernel, '--mem', '16', '--net', 'sandbox']);
  const outer = run.child.pid!;
  let innerPid: number | null = null;
  // Were the test to fail before feeding the FIFO, the inner process would wait there for ever: kill both.
  t.teardown(() => {
    run.child.kill('SIGKILL');
    if (innerPid !== null) {
      try {
        process.kill(innerPid, 'SIGKILL');
      } catch {}
    }
  });
  // Set up: tap0 has its address and is up (the boot comes next, and waits on the FIFO).
  const pid = await until('the re-run tsvisor with tap0 up in its namespace', () => {
    innerPid ??= innerOf(outer);
    if (innerPid === null) return null;
    const addr = inside(innerPid, ['ip', '-o', 'addr', 'show', 'dev', 'tap0']);
    return /inet 10\.0\.2\.2\/24/.test(addr) && /<[^>]*\bUP\b[^>]*>/.test(inside(innerPid, ['ip', '-o', 'link', 'show', 'dev', 'tap0'])) ? innerPid : null;
  });
  const net = readlinkSync(`/proc/${pid}/ns/net`);
  const user = readlinkSync(`/proc/${pid}/ns/user`);
  t.not(user, ownUser, 'in a user namespace of its own');
  t.regex(readFileSync(`/proc/${pid}/status`, 'utf8'), /^Uid:\s+65534\s+65534\s+65534\s+65534$/m, 'nobody, seen from outside');
  t.is(readFileSync(`/proc/${pid}/uid_map`, 'utf8').trim().split(/\s+/).join(' '), '0 65534 1', 'nobody mapped to root inside');
  t.regex(inside(pid, ['ip', '-o', 'link', 'show', 'dev', 'lo']), /<[^>]*\bUP\b[^>]*>/, 'lo is up');
  t.regex(inside(pid, ['ip', '-d', 'link', 'show', 'dev', 'tap0']), /tun type tap/, 'tap0 is a TAP');
  t.notRegex(netnsList(), new RegExp(`tsvisor-(${outer}|${pid})-`), 'no named namespace');
  t.deepEqual(hostLinks(), linksBefore, 'nothing in the host\'s namespace');

  // SIGTERM to the outer process meanwhile: it stays (forwards it) instead of dying and leaving the inner one.
  run.child.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 300));
  t.is(run.child.exitCode, null, 'the outer process is still there');
  t.is(run.child.signalCode, null);

  // Not a kernel: the run fails later than the sandbox, at the kernel.
  await writeFile(kernel, 'not a kernel\n');
  const r = await within(60_000, 'tsvisor', run.ended);
  oneLine(t, r, 1, `${kernel} is not a kernel tsvisor can load`);
  t.false(r.stderr.includes('/dev/net/tun'), 'not the sandbox error');
  t.false(existsSync(`/proc/${pid}`), 'the inner process has ended');
  t.deepEqual(processesIn(net, 'net'), [], 'no process is left in its network namespace (so it, and tap0 in it, are gone)');
  t.deepEqual(processesIn(user, 'user'), [], 'nor in its user namespace');
  t.notRegex(netnsList(), new RegExp(`tsvisor-(${outer}|${pid})-`));
  t.deepEqual(hostLinks(), linksBefore);
});

testIf('Sandbox.create() in the re-run, as nobody: tap0 10.0.2.2/24 in its own namespace, ping works there, and the nsenter line it prints reaches it', tunOpenMissing(), async (t) => {
  const go = join(dir, 'sandbox-go');
  const sandboxModule = pathToFileURL(join(repoRoot, 'dist/src/net/sandbox.js')).href;
  const inner = `const { Sandbox } = await import(${JSON.stringify(sandboxModule)}); const { existsSync } = await import('node:fs');
    const s = Sandbox.create();
    const self = await s.ns.run(['ping', '-c', '1', '-W', '5', '10.0.2.2']);
    console.log(JSON.stringify({ inUserNamespace: s.inUserNamespace, tap: s.tap.name, describe: s.describe(), ping: self.status, pid: process.pid }));
    for (let i = 0; i < 600 && !existsSync(${JSON.stringify(go)}); i++) await new Promise((r) => setTimeout(r, 50));
    s.close();`;
  const outer = `const { runInOwnUserNamespace } = await import(${JSON.stringify(MODULE)}); process.exitCode = await runInOwnUserNamespace(JSON.parse(process.argv[1]));`;
  const run = startWithDevices([...NOBODY, process.execPath, '--input-type=module', '-e', outer, JSON.stringify([process.execPath, '--input-type=module', '-e', inner])]);
  t.teardown(() => {
    writeFileSync(go, '');
    run.child.kill('SIGKILL');
  });
  const seen = await until('the sandbox', () => {
    const l = run.stdout().split('\n')[0];
    return run.stdout().includes('\n') ? (JSON.parse(l) as { inUserNamespace: boolean; tap: string; describe: string; ping: number; pid: number }) : null;
  });
  t.true(seen.inUserNamespace);
  t.is(seen.tap, 'tap0');
  t.is(seen.ping, 0, 'ping works in there (root of the namespace may open raw sockets)');
  t.is(seen.describe, `network sandbox: namespace of process ${seen.pid} (in a user namespace of its own), tap0 10.0.2.2/24, guest 10.0.2.15; try: nsenter -t ${seen.pid} -U -n --preserve-credentials ping 10.0.2.15`);
  // The suggested way in, as the same user from outside (the guest is not there, so ping its host side).
  const enter = /try: (nsenter .*) ping /.exec(seen.describe)![1].split(' ');
  const r = spawnSync(NOBODY[0], [...NOBODY.slice(1), ...enter, 'ping', '-c', '1', '-W', '5', '10.0.2.2'], { encoding: 'utf8', timeout: 30_000 });
  t.is(r.status, 0, `${r.stdout}${r.stderr}`);
  writeFileSync(go, '');
  const end = await within(30_000, 'the end', run.ended);
  t.is(end.status, 0, end.stderr);
  t.false(existsSync(`/proc/${seen.pid}`));
});

function rootSandboxMissing(): string | null {
  return isRoot ? null : 'needs root to create a named network namespace';
}

testIf('Sandbox.create() as root (no re-run): a named namespace with tap0 10.0.2.2/24, the usual line, deleted by close()', rootSandboxMissing(), async (t) => {
  const { Sandbox } = await import('../src/net/sandbox.js');
  const s = Sandbox.create();
  let closed = false;
  t.teardown(() => {
    if (!closed) s.close();
  });
  t.false(s.inUserNamespace);
  t.regex(s.ns.name, new RegExp(`^tsvisor-${process.pid}-\\d+$`));
  t.true(netnsList().split('\n').some((l) => l.split(' ')[0] === s.ns.name), 'listed by ip netns');
  const addr = spawnSync('ip', ['netns', 'exec', s.ns.name, 'ip', '-o', 'addr', 'show', 'dev', 'tap0'], { encoding: 'utf8' }).stdout;
  t.regex(addr, /inet 10\.0\.2\.2\/24/);
  t.is(s.describe(), `network sandbox: namespace ${s.ns.name}, tap0 10.0.2.2/24, guest 10.0.2.15; try: ip netns exec ${s.ns.name} ping 10.0.2.15`);
  s.close();
  closed = true;
  t.false(netnsList().split('\n').some((l) => l.split(' ')[0] === s.ns.name), 'deleted');
});

kvmTest('as nobody, with KVM: a guest pings the host side of a sandbox in nobody\'s own namespaces, gone afterwards', async (t) => {
  const image = join(dir, 'ping.elf');
  copyFileSync(firmwareImage('ping'), image);
  chmodSync(image, 0o644);
  const run = startAsNobodyWithDevices(['--kernel', image, '--append', 'count=5', '--net', 'sandbox,mac=52:54:00:00:00:42', '--mem', '64', '--timeout', '60']);
  t.teardown(() => run.child.kill('SIGKILL'));
  const r = await within(120_000, 'tsvisor', run.ended);
  t.regex(r.stdout, /ping: 5\/5 replies/, r.stderr);
  t.is(r.status, 1, r.stderr);
  const pid = /network sandbox: namespace of process (\d+) \(in a user namespace of its own\)/.exec(r.stderr)?.[1];
  t.truthy(pid, r.stderr);
  t.false(existsSync(`/proc/${pid}`), 'the inner process has ended');
  t.notRegex(netnsList(), new RegExp(`tsvisor-${pid}-`), 'no named namespace');
}, () => tunOpenMissing() ?? firmwareMissing('ping')());
