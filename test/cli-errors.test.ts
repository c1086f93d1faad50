// User mistakes through the command line, as a user makes them: each one gives
// exactly one line on stderr naming the problem (the file, the option) and the
// fix, status 2 for usage errors and 1 for runtime failures, no stack trace.
// None of them boots a guest: the kernels here are synthetic and every run is
// refused before its vCPU starts.
import test, { type ExecutionContext } from 'ava';
import { execFile, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, statSync, writeFileSync, ftruncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NetNamespace } from '../src/net/netns.js';
import { Tap } from '../src/net/tap.js';
import { defaultGuestPaths } from '../src/guest/default-guest.js';
import { bzImage, elf64, haltingMultiboot } from './helpers/kernel-images.js';
import { kvmTest, firmwareImage, firmwareMissing, repoRoot } from './helpers/kvm.js';
import { netMissing } from './helpers/netns.js';

const MiB = 1024 * 1024;
const isRoot = process.getuid?.() === 0;
const NOBODY = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'];

// ---- synthetic kernels ----

/** Deterministic bytes that do not compress (so a bzImage payload is as large as its vmlinux). */
function noise(length: number, seed = 1): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed;
  for (let i = 0; i < length; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}


// ---- the files, in a directory others can read (runs as nobody read them too) ----

const dir = mkdtempSync(join(tmpdir(), 'tsvisor-cli-errors-'));
chmodSync(dir, 0o755);
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, bytes: Uint8Array | string, mode = 0o644): string {
  const path = join(dir, name);
  writeFileSync(path, bytes);
  chmodSync(path, mode);
  return path;
}

/** A file of `bytes` zeros without writing them (sparse). */
function sparse(name: string, bytes: number): string {
  const path = join(dir, name);
  const fd = openSync(path, 'w');
  ftruncateSync(fd, bytes);
  closeSync(fd);
  return path;
}

const vmlinux = file('vmlinux', elf64(0x1000000, noise(4096)));
const mbImage = file('multiboot.bin', haltingMultiboot());
const initrd = file('initrd.cpio', noise(4096, 7));

// ---- running tsvisor ----

interface Run {
  status: number | null;
  stderr: string;
}

// A few at a time: the machine is small and shared.
let running = 0;
const waiting: Array<() => void> = [];

async function tsvisor(args: string[], opts: { prefix?: string[]; env?: NodeJS.ProcessEnv } = {}): Promise<Run> {
  if (running >= 4) await new Promise<void>((go) => waiting.push(go));
  running++;
  try {
    const argv = [...(opts.prefix ?? []), process.execPath, join(repoRoot, 'bin/tsvisor.js'), 'run', ...args];
    return await new Promise<Run>((resolve) => {
      const child = execFile(argv[0], argv.slice(1), { encoding: 'utf8', timeout: 60_000, env: { ...process.env, ...opts.env } }, (_err, _stdout, stderr) => {
        resolve({ status: child.exitCode, stderr });
      });
      child.stdin?.end();
    });
  } finally {
    running--;
    waiting.shift()?.();
  }
}

/** Exactly one line, no stack trace, the status, and every `names` (what went wrong, and the fix in parentheses). */
function oneLine(t: ExecutionContext, r: Run, status: 1 | 2, ...names: Array<string | RegExp>): void {
  t.is(r.status, status, r.stderr);
  t.regex(r.stderr, /^tsvisor: [^\n]+ \([^\n]+\)\n$/, 'one line, ending with the fix in parentheses');
  t.notRegex(r.stderr, /\bat .*:\d+:\d+|internal error/, 'no stack trace');
  for (const n of names) {
    if (typeof n === 'string') t.true(r.stderr.includes(n), `names ${JSON.stringify(n)}: ${r.stderr}`);
    else t.regex(r.stderr, n);
  }
}

/**
 * Runs tsvisor as a user who cannot read `path`: as root, as nobody with the
 * file root's own (mode 0600) — root itself reads any file; otherwise as this
 * user with the file at mode 000.
 */
async function withoutReadAccess(path: string, args: string[]): Promise<Run> {
  chmodSync(path, isRoot ? 0o600 : 0o000);
  return tsvisor(args, { prefix: isRoot ? NOBODY : [] });
}

const setprivMissing = () => (isRoot && spawnSync('setpriv', ['--version']).status !== 0 ? 'setpriv (util-linux) is not installed' : null);
const testUnlessMissing = (title: string, missing: string | null, fn: (t: ExecutionContext) => Promise<void>) =>
  missing === null ? test(title, fn) : test.skip(`${title} — skipped: ${missing}`, () => {});

// ---- missing and unreadable files ----

test('a missing kernel: status 2, the path, and "check the --kernel path"', async (t) => {
  const path = join(dir, 'no-such-bzImage');
  oneLine(t, await tsvisor(['--kernel', path]), 2, `kernel ${path} does not exist`, 'check the --kernel path');
});

testUnlessMissing('an unreadable kernel (as nobody, or mode 000): status 2, the path, and how to get read access', setprivMissing(), async (t) => {
  const path = file('unreadable-vmlinux', elf64(0x1000000, noise(4096)));
  oneLine(t, await withoutReadAccess(path, ['--kernel', path]), 2, `kernel ${path} is not readable by this user`, `chmod a+r ${path}`);
});

test('a missing initrd: status 2, the path, and "check the --initrd path"', async (t) => {
  const path = join(dir, 'no-such-initrd');
  oneLine(t, await tsvisor(['--kernel', vmlinux, '--initrd', path]), 2, `initrd ${path} does not exist`, 'check the --initrd path');
});

test('a malformed --fw-cfg: status 2, the option, and how to write it', async (t) => {
  oneLine(t, await tsvisor(['--kernel', mbImage, '--fw-cfg', 'opt/env']), 2, '--fw-cfg "opt/env" is not understood', 'write --fw-cfg name=opt/NAME,file=PATH');
  oneLine(t, await tsvisor(['--kernel', mbImage, '--fw-cfg', `name=env,file=${initrd}`]), 2, '--fw-cfg name "env" is not below opt/', 'user items are named opt/SOMETHING');
});

test('a missing --fw-cfg file: status 2, the path, and "check the file= path"', async (t) => {
  const path = join(dir, 'no-such-fw-cfg-file');
  oneLine(t, await tsvisor(['--kernel', mbImage, '--fw-cfg', `name=opt/env,file=${path}`]), 2, `--fw-cfg file ${path} does not exist`, 'check the file= path');
});

testUnlessMissing('an unreadable initrd (as nobody, or mode 000): status 2, the path, and how to get read access', setprivMissing(), async (t) => {
  const path = file('unreadable-initrd', noise(4096, 3));
  oneLine(t, await withoutReadAccess(path, ['--kernel', vmlinux, '--initrd', path]), 2, `initrd ${path} is not readable by this user`, `chmod a+r ${path}`);
});

// ---- files that are not (whole) kernels ----

test('random bytes as kernel: status 1, bad magic, and what to pass instead', async (t) => {
  const path = file('random.bin', noise(64 * 1024, 5));
  oneLine(t, await tsvisor(['--kernel', path]), 1, `${path} is not a kernel tsvisor can load`, 'pass a bzImage, a vmlinux or a multiboot image');
});

test('a text file as kernel: status 1, bad magic, and what to pass instead', async (t) => {
  const path = file('notes.txt', 'console=ttyS0 root=/dev/vda\n'.repeat(100));
  oneLine(t, await tsvisor(['--kernel', path]), 1, `${path} is not a kernel tsvisor can load`, 'pass a bzImage, a vmlinux or a multiboot image');
});

test('a bzImage with boot protocol 2.04 (< 2.08): status 1, both versions, and which kernels work', async (t) => {
  const path = file('bzImage-2.04', bzImage(elf64(0x1000000, noise(4096)), { version: 0x0204 }));
  oneLine(t, await tsvisor(['--kernel', path]), 1, `${path} uses boot protocol 2.04, tsvisor needs 2.08 or newer`, 'use a Linux kernel from 2.6.26 on');
});

test('a bzImage cut to its first 4 KiB: status 1, truncated, and "copied whole"', async (t) => {
  const whole = bzImage(elf64(0x1000000, noise(32 * 1024)));
  const path = file('bzImage-4k', whole.subarray(0, 4096));
  oneLine(t, await tsvisor(['--kernel', path]), 1, `${path} is truncated`, 'check the file was copied whole');
});

testUnlessMissing('the default guest\'s real bzImage cut to 4 KiB: status 1, truncated, and "copied whole"', defaultGuestPaths() ? null : 'default guest not built (npm run guest)', async (t) => {
  const path = file('real-bzImage-4k', readFileSync(defaultGuestPaths()!.bzImage).subarray(0, 4096));
  oneLine(t, await tsvisor(['--kernel', path]), 1, `${path} is truncated`, 'check the file was copied whole');
});

test('a vmlinux ELF cut to 4 KiB: status 1, truncated ELF segment, and "copied whole"', async (t) => {
  const path = file('vmlinux-4k', elf64(0x1000000, noise(32 * 1024)).subarray(0, 4096));
  oneLine(t, await tsvisor(['--kernel', path]), 1, `${path} is truncated: ELF segment 0 runs past the end of the file`, 'check the file was copied whole');
});

testUnlessMissing('a real multiboot ELF (firmware hello) cut to 4 KiB: status 1, truncated, and "copied whole"', firmwareMissing('hello')(), async (t) => {
  const path = file('hello-4k.elf', readFileSync(firmwareImage('hello')).subarray(0, 4096));
  oneLine(t, await tsvisor(['--kernel', path]), 1, `${path} is truncated`, 'check the file was copied whole');
});

// ---- malformed options ----

for (const value of ['abc', '0', '-5', '1.5']) {
  test(`--mem ${value}: status 2, the option and value, and an example`, async (t) => {
    oneLine(t, await tsvisor(['--kernel', vmlinux, '--mem', value]), 2, `--mem ${value} is not a positive whole number`, 'for example --mem 256');
  });
}

for (const value of ['abc', '0', '-2', '1.5']) {
  test(`--cpus ${value}: status 2, the option and value, and an example`, async (t) => {
    oneLine(t, await tsvisor(['--kernel', vmlinux, '--cpus', value]), 2, `--cpus ${value} is not a positive whole number`, 'for example --cpus 1');
  });
}

kvmTest('--cpus 1000 (more than tsvisor runs): status 2, both limits, and how many to give', async (t) => {
  oneLine(t, await tsvisor(['--kernel', vmlinux, '--cpus', '1000']), 2, /--cpus 1000 is more than tsvisor runs here \(at most \d+: KVM allows \d+, tsvisor 64\)/, /give --cpus \d+ or fewer/);
});

test('--mem 100000000 (more than the host has): status 2, the host\'s memory, and "lower --mem"', async (t) => {
  oneLine(t, await tsvisor(['--kernel', vmlinux, '--mem', '100000000']), 2, /--mem 100000000 is more than this host has \(\d+ MiB of RAM and swap\)/, 'lower --mem');
});

const netCases: Array<[string, string]> = [
  ['foo', '--net foo is not understood'],
  ['tap:', '--net tap: has no interface name'],
  ['tap:name-that-is-way-too-long-for-IFNAMSIZ', '--net tap:name-that-is-way-too-long-for-IFNAMSIZ names an interface of 38 characters, Linux allows 15 (IFNAMSIZ)'],
  ['sandbox,mac=zz:00:00:00:00:01', '--net mac "zz:00:00:00:00:01" is not a MAC address'],
  ['sandbox,mac=01:00:5e:00:00:01', '--net mac 01:00:5e:00:00:01 is a multicast address'],
];
for (const [value, problem] of netCases) {
  test(`--net ${value}: status 2, what is wrong, and what to write`, async (t) => {
    oneLine(t, await tsvisor(['--kernel', vmlinux, '--net', value]), 2, problem, /\((use|write|the first byte must be even)/);
  });
}

test('--pit-reinject maybe: status 2, the value, and what to write', async (t) => {
  oneLine(t, await tsvisor(['--kernel', vmlinux, '--pit-reinject', 'maybe']), 2, '--pit-reinject maybe is not on or off', 'write --pit-reinject on or --pit-reinject off');
});

test('--device pc-testdev twice: status 2, the device, and "give it once"', async (t) => {
  oneLine(t, await tsvisor(['--kernel', vmlinux, '--device', 'pc-testdev', '--device', 'pc-testdev']), 2, '--device pc-testdev is given 2 times', 'give it once');
});

// ---- /dev/kvm ----

test('a missing KVM device (TSVISOR_KVM_DEVICE=/nonexistent/kvm): status 1, the path, and how to get KVM', async (t) => {
  const r = await tsvisor(['--kernel', vmlinux], { env: { TSVISOR_KVM_DEVICE: '/nonexistent/kvm' } });
  oneLine(t, r, 1, '/nonexistent/kvm does not exist', 'load the kvm module');
});

function kvmNotPermittedMissing(): string | null {
  if (!isRoot) return 'needs root to run tsvisor as nobody';
  if (!existsSync('/dev/kvm')) return '/dev/kvm is not available';
  if (statSync('/dev/kvm').mode & 0o006) return '/dev/kvm is open to every user here';
  return setprivMissing();
}

testUnlessMissing('/dev/kvm not permitted (run as nobody): status 1, the device, and "kvm group or run as root"', kvmNotPermittedMissing(), async (t) => {
  oneLine(t, await tsvisor(['--kernel', vmlinux], { prefix: NOBODY }), 1, 'permission denied opening /dev/kvm', 'add your user to the kvm group or run as root');
});

// ---- what does not fit (found while loading, after KVM is open) ----

kvmTest('--mem too small for the kernel: status 2, both sizes, and "raise --mem"', async (t) => {
  const path = file('vmlinux-32m', elf64(0x1000000, noise(4096), 32 * MiB));
  oneLine(t, await tsvisor(['--kernel', path, '--mem', '16']), 2, 'the kernel needs guest RAM up to 48 MiB but --mem gives 16 MiB', 'raise --mem');
});

kvmTest('--mem too small for kernel and initrd: status 2, the initrd\'s size, and "raise --mem"', async (t) => {
  const big = sparse('initrd-24m', 24 * MiB);
  oneLine(t, await tsvisor(['--kernel', vmlinux, '--initrd', big, '--mem', '32']), 2,
    'the initrd (24.0 MiB) does not fit in guest RAM above the kernel (--mem 32 MiB)', 'raise --mem or use a smaller initrd');
});

kvmTest('an initrd above the kernel\'s initrd_addr_max: status 2, the limit, and "use a smaller initrd" (not more RAM)', async (t) => {
  // Kernel at 16 MiB with a 4 MiB footprint, initrds only below 32 MiB: 12 MiB of room whatever --mem is.
  const path = file('bzImage-addr-max-32m', bzImage(elf64(0x1000000, noise(4096)), { initrdAddrMax: 32 * MiB - 1 }));
  const big = sparse('initrd-16m', 16 * MiB);
  oneLine(t, await tsvisor(['--kernel', path, '--initrd', big, '--mem', '256']), 2,
    'the initrd (16.0 MiB) does not fit between the kernel and this kernel\'s initrd_addr_max (0x1ffffff)', '(use a smaller initrd)');
});

kvmTest('--append longer than the bzImage\'s cmdline_size: status 2, the limit from its header, and "shorten --append"', async (t) => {
  const path = file('bzImage-cmdline-255', bzImage(elf64(0x1000000, noise(4096)), { cmdlineSize: 255 }));
  oneLine(t, await tsvisor(['--kernel', path, '--append', 'x'.repeat(300)]), 2, /the kernel command line is \d+ bytes, longer than this kernel's limit of 255 \(its cmdline_size\)/, 'shorten --append');
});

kvmTest('--append longer than tsvisor passes to a multiboot image: status 2, the limit, and "shorten --append"', async (t) => {
  // The guest's command line is the kernel's path, a space, then --append (as QEMU passes it).
  oneLine(t, await tsvisor(['--kernel', mbImage, '--mem', '16', '--append', 'x'.repeat(70_000)]), 2,
    `the multiboot command line is too long: ${Buffer.byteLength(mbImage) + 1 + 70_000} bytes (the kernel's name, a space, --append), tsvisor passes at most 65535`, 'shorten --append');
});

// ---- TAP (each inside a namespace made here and deleted afterwards) ----

function namespace(t: ExecutionContext): NetNamespace {
  const ns = NetNamespace.create('tsvt');
  t.teardown(() => ns.delete());
  return ns;
}

kvmTest('creating a TAP without CAP_NET_ADMIN: status 1, the capability, and the three ways out', async (t) => {
  const ns = namespace(t);
  // Root without CAP_NET_ADMIN: /dev/net/tun opens, creating the interface is refused.
  const r = await tsvisor(['--kernel', mbImage, '--mem', '16', '--timeout', '10', '--net', 'tap:tsvt0'], {
    prefix: ['ip', 'netns', 'exec', ns.name, 'setpriv', '--bounding-set=-net_admin', '--inh-caps=-net_admin'],
  });
  oneLine(t, r, 1, 'cannot use TAP tsvt0: creating a TAP needs CAP_NET_ADMIN, which this process lacks', 'run as root or grant CAP_NET_ADMIN, or pre-create a TAP you own: ip tuntap add dev tsvt0');
  t.false(ns.exec(['ip', 'link', 'show', 'tsvt0']).status === 0, 'no TAP was created');
}, () => netMissing() ?? setprivMissing());

kvmTest('a TAP another process has open: status 1, busy, and what to do', async (t) => {
  const ns = namespace(t);
  const holder = ns.enter(() => Tap.open('tsvbusy0'));
  t.teardown(() => holder.close());
  const r = await tsvisor(['--kernel', mbImage, '--mem', '16', '--timeout', '10', '--net', 'tap:tsvbusy0'], { prefix: ['ip', 'netns', 'exec', ns.name] });
  oneLine(t, r, 1, 'TAP tsvbusy0 is busy: another process has it open', 'stop the other VMM or pick another --net tap name');
}, netMissing);
