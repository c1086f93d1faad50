// Where the default guest is looked for, the command encoding for guest/init,
// and guest/init itself run by the real busybox (in a chroot inside fresh
// mount/pid/net namespaces, with the final reboot replaced by a marker).
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  DEFAULT_GUEST_MISSING,
  GUEST_EXIT_RE,
  GUEST_READY_MARKER,
  cacheDir,
  defaultGuestPaths,
  guestCommandArg,
  guestInitramfs,
} from '../src/guest/default-guest.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const initScript = readFileSync(join(root, 'guest/init'), 'utf8');

test('cache directory: TSVISOR_CACHE, then XDG_CACHE_HOME, then ~/.cache', (t) => {
  t.is(cacheDir({ TSVISOR_CACHE: '/c', XDG_CACHE_HOME: '/x' }), '/c');
  t.is(cacheDir({ XDG_CACHE_HOME: '/x' }), '/x/tsvisor');
  t.regex(cacheDir({}), /\/\.cache\/tsvisor$/);
});

test('defaultGuestPaths is null until every file exists', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvisor-cache-'));
  try {
    t.is(defaultGuestPaths({ TSVISOR_CACHE: dir }), null);
    mkdirSync(join(dir, 'default-guest'));
    for (const f of ['vmlinux', 'bzImage', 'System.map']) writeFileSync(join(dir, 'default-guest', f), '');
    t.is(defaultGuestPaths({ TSVISOR_CACHE: dir }), null);
    writeFileSync(join(dir, 'default-guest', 'initramfs.cpio'), '');
    t.deepEqual(defaultGuestPaths({ TSVISOR_CACHE: dir }), {
      kernel: join(dir, 'default-guest/vmlinux'),
      initrd: join(dir, 'default-guest/initramfs.cpio'),
      systemMap: join(dir, 'default-guest/System.map'),
      bzImage: join(dir, 'default-guest/bzImage'),
    });
    t.is(DEFAULT_GUEST_MISSING, 'default guest not built: run npm run guest');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('guestCommandArg is one word of base64', (t) => {
  const arg = guestCommandArg('echo "a  b" | wc -c; exit 3');
  t.regex(arg, /^tsvisor\.cmd=[A-Za-z0-9+/=]+$/);
  t.is(Buffer.from(arg.slice('tsvisor.cmd='.length), 'base64').toString(), 'echo "a  b" | wc -c; exit 3');
});

test('guest/init is valid sh', (t) => {
  t.notThrows(() => execFileSync('sh', ['-n', join(root, 'guest/init')]));
});

// Running /init needs root (chroot, namespaces) and busybox-static.
const canRun = process.getuid?.() === 0 && existsSync('/bin/busybox') && spawnSync('unshare', ['-m', '-p', '-n', '-f', 'true']).status === 0;
(canRun ? test : test.skip)(`guest/init runs tsvisor.cmd and reports its status${canRun ? '' : ' (SKIPPED: needs root, unshare and /bin/busybox from busybox-static)'}`, (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvisor-init-'));
  try {
    // The guest's init, with the parts that would touch the host swapped out.
    const testInit = initScript.replace(/\b(poweroff|reboot) -f/g, 'echo HALT').replace(/\/proc\/cmdline/g, '/cmdline-test');
    t.not(testInit, initScript);
    const bytes = guestInitramfs({ busybox: readFileSync('/bin/busybox'), init: testInit }).toBytes();
    execFileSync('cpio', ['-idm', '--quiet'], { input: bytes, cwd: dir });
    writeFileSync(join(dir, 'cmdline-test'), `console=ttyS0 ${guestCommandArg('echo "hello  world"; ip -o link show lo | grep -c UP; exit 7')} panic=-1\n`);
    const r = spawnSync('timeout', ['-s', 'KILL', '60', 'unshare', '--kill-child', '-m', '-p', '-n', '-f', 'chroot', dir, '/init'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    t.log(r.stdout + r.stderr);
    const lines = r.stdout.split('\n');
    t.deepEqual(lines.slice(lines.indexOf(GUEST_READY_MARKER)), [GUEST_READY_MARKER, 'hello  world', '1', 'tsvisor-guest: exit 7', 'HALT', '']);
    t.is(GUEST_EXIT_RE.exec(r.stdout)?.[1], '7');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
