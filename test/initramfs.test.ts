// The cpio writer against the real cpio(1): listing, modes, devices, links and contents.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Initramfs } from '../src/boot/initramfs.js';
import { guestInitramfs } from '../src/guest/default-guest.js';

const isRoot = process.getuid?.() === 0;

function sample(): Initramfs {
  const fs = new Initramfs();
  fs.addDir('/etc');
  fs.addFile('etc/hostname', 'tsvisor\n');
  fs.addFile('/usr/share/deep/one', new Uint8Array([1])); // implicit parents, 1-byte body
  fs.addFile('usr/share/deep/three', new Uint8Array([1, 2, 3]), 0o600);
  fs.addFile('empty', new Uint8Array(0));
  fs.addFile('bin/tool', new Uint8Array(5000).map((_, i) => (i * 7) & 0xff), 0o755);
  fs.addSymlink('bin/sh', 'tool');
  fs.addCharDev('dev/console', 5, 1, 0o600);
  fs.addDir('tmp', 0o1777);
  return fs;
}

function withTemp<T>(fn: (dir: string) => T): T {
  const dir = mkdtempSync(join(tmpdir(), 'tsvisor-cpio-'));
  try {
    return fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('cpio -t lists every entry, parents first, in insertion order', (t) => {
  const bytes = sample().toBytes();
  t.is(bytes.length % 512, 0);
  const list = execFileSync('cpio', ['-t', '--quiet'], { input: bytes }).toString().trim().split('\n');
  t.deepEqual(list, [
    'etc', 'etc/hostname', 'usr', 'usr/share', 'usr/share/deep', 'usr/share/deep/one', 'usr/share/deep/three',
    'empty', 'bin', 'bin/tool', 'bin/sh', 'dev', 'dev/console', 'tmp',
  ]);
  const verbose = execFileSync('cpio', ['-tv', '--quiet'], { input: bytes }).toString();
  t.regex(verbose, /^crw------- +1 root +root +5, +1 .* dev\/console$/m);
  t.regex(verbose, /^lrwxrwxrwx .* bin\/sh -> tool$/m);
  t.regex(verbose, /^drwxrwxrwt .* tmp$/m);
  t.regex(verbose, /^-rwxr-xr-x .* 5000 .* bin\/tool$/m);
});

test('cpio -idm extracts the same contents', (t) => {
  const bytes = sample().toBytes();
  withTemp((dir) => {
    // Device nodes need root; without it cpio reports them and goes on.
    try {
      execFileSync('cpio', ['-idm', '--quiet', '--no-absolute-filenames'], { input: bytes, cwd: dir, stdio: ['pipe', 'pipe', 'pipe'] });
    } catch (e) {
      if (isRoot) throw e;
    }
    t.is(readFileSync(join(dir, 'etc/hostname'), 'utf8'), 'tsvisor\n');
    t.deepEqual([...readFileSync(join(dir, 'usr/share/deep/one'))], [1]);
    t.deepEqual([...readFileSync(join(dir, 'usr/share/deep/three'))], [1, 2, 3]);
    t.is(statSync(join(dir, 'usr/share/deep/three')).mode & 0o777, 0o600);
    t.is(readFileSync(join(dir, 'empty')).length, 0);
    const tool = readFileSync(join(dir, 'bin/tool'));
    t.is(tool.length, 5000);
    t.is(tool[4999], (4999 * 7) & 0xff);
    t.is(statSync(join(dir, 'bin/tool')).mode & 0o777, 0o755);
    t.is(readlinkSync(join(dir, 'bin/sh')), 'tool');
    if (isRoot) {
      const st = statSync(join(dir, 'dev/console'));
      t.true(st.isCharacterDevice());
      t.is(st.rdev, (5 << 8) | 1);
    } else {
      t.log('not root: device node extraction not checked');
    }
  });
});

test('output is deterministic and ends with TRAILER!!!', (t) => {
  const a = sample().toBytes();
  const b = sample().toBytes();
  t.deepEqual(a, b);
  const text = Buffer.from(a).toString('latin1');
  t.true(text.startsWith('070701'));
  // The last entry: a 110-byte header, "TRAILER!!!" + NUL, then zeros to a 512-byte block.
  const at = text.lastIndexOf('070701');
  t.is(text.slice(at + 110, at + 121), 'TRAILER!!!\0');
  t.regex(text.slice(at + 121), /^\0*$/);
});

test('bad paths and duplicates are refused', (t) => {
  const fs = new Initramfs();
  t.throws(() => fs.addFile('../x', 'x'), { message: /\.\./ });
  t.throws(() => fs.addFile('/', 'x'), { message: /empty path/ });
  fs.addFile('a/b', 'x');
  t.throws(() => fs.addFile('a/b', 'y'), { message: /twice/ });
  t.throws(() => fs.addFile('a/b/c', 'y'), { message: /not a directory/ });
  t.notThrows(() => fs.addDir('a', 0o700)); // existing directory: mode update
  t.regex(execFileSync('cpio', ['-tv', '--quiet'], { input: fs.toBytes() }).toString(), /^drwx------ .* a$/m);
});

test('guest initramfs: busybox, applet links, /init, console, modules in order', (t) => {
  const bytes = guestInitramfs({
    busybox: new Uint8Array([0x7f, 0x45, 0x4c, 0x46]),
    init: '#!/bin/sh\necho hi\n',
    modules: [['/x/virtio.ko', new Uint8Array([1])], ['/x/virtio_ring.ko.xz', new Uint8Array([2])]],
  }).toBytes();
  withTemp((dir) => {
    writeFileSync(join(dir, 'i.cpio'), bytes);
    const verbose = execFileSync('cpio', ['-tv', '--quiet', '-F', join(dir, 'i.cpio')]).toString();
    t.regex(verbose, /^-rwxr-xr-x .* init$/m);
    t.regex(verbose, /^lrwxrwxrwx .* bin\/sh -> busybox$/m);
    t.regex(verbose, /^lrwxrwxrwx .* bin\/cttyhack -> busybox$/m);
    t.regex(verbose, /^crw------- .* 5, +1 .* dev\/console$/m);
    t.regex(verbose, /^crw-rw-rw- .* 1, +3 .* dev\/null$/m);
    t.regex(verbose, /lib\/modules\/virtio_ring\.ko$/m);
    // (GNU cpio -i with -F prompts on /dev/tty at the end of the archive: use stdin.)
    const order = execFileSync('cpio', ['-i', '--quiet', '--to-stdout', 'lib/modules/load-order'], { input: bytes }).toString();
    t.is(order, 'virtio\nvirtio_ring\n');
  });
});
