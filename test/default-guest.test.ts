// Where the default guest is looked for, and guest/init itself run by the real
// busybox (in a chroot inside fresh mount/pid/net namespaces, with the
// console, the debug-exit port and the final power-off replaced by files).
import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  DEFAULT_GUEST_MISSING,
  GUEST_COMMAND_FILE,
  GUEST_READY_MARKER,
  cacheDir,
  defaultGuestPaths,
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

test('guest/init is valid sh', (t) => {
  t.notThrows(() => execFileSync('sh', ['-n', join(root, 'guest/init')]));
});

// Running /init needs root (chroot, namespaces) and busybox-static.
const canRun = process.getuid?.() === 0 && existsSync('/bin/busybox') && spawnSync('unshare', ['-m', '-p', '-n', '-f', 'true']).status === 0;
(canRun ? test : test.skip)(`guest/init runs the command and writes its status to the debug-exit port${canRun ? '' : ' (SKIPPED: needs root, unshare and /bin/busybox from busybox-static)'}`, (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvisor-init-'));
  try {
    // The guest's init, with the parts that would touch the host swapped for files.
    const testInit = initScript.replace(/\b(poweroff|reboot) -f/g, 'echo HALT >>/console-test').replace(/>\/dev\/console/g, '>>/console-test').replace(/\/dev\/console/g, '/console-test').replace(/\/dev\/port/g, '/port-test');
    t.not(testInit, initScript);
    const bytes = guestInitramfs({ busybox: readFileSync('/bin/busybox'), init: testInit }).toBytes();
    execFileSync('cpio', ['-idm', '--quiet'], { input: bytes, cwd: dir });
    mkdirSync(join(dir, 'etc/tsvisor'));
    writeFileSync(join(dir, GUEST_COMMAND_FILE), 'echo "hello  world"; pwd; ip -o link show lo | grep -c UP; read x && echo "stdin not empty"; exit 7\n');
    const r = spawnSync('timeout', ['-s', 'KILL', '60', 'unshare', '--kill-child', '-m', '-p', '-n', '-f', 'chroot', dir, '/init'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    const console = readFileSync(join(dir, 'console-test'), 'utf8');
    t.log(console + r.stdout + r.stderr);
    const lines = console.split('\n');
    t.deepEqual(lines.slice(lines.indexOf(GUEST_READY_MARKER)), [GUEST_READY_MARKER, 'hello  world', '/root', '1', 'tsvisor-guest: exit 7', 'HALT', '']);
    const port = readFileSync(join(dir, 'port-test'));
    t.is(port.length, 0xf4 + 1, 'one byte written at port 0xf4');
    t.is(port[0xf4], 7, "the command's status");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
