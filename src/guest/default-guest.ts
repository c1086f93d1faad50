// The default guest (guest/build.sh: our small kernel plus a busybox
// initramfs) and the stock Debian cloud kernel guest (guest/debian-kernel.sh):
// where they live in the cache, what their initramfs holds, and how a command
// for the guest's /init is put on the kernel command line.
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { basename, join } from 'node:path';
import { Initramfs } from '../boot/initramfs.js';

/** The cache directory, chosen as guest/build-kernel.sh chooses it. */
export function cacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.TSVISOR_CACHE) return env.TSVISOR_CACHE;
  return join(env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'tsvisor');
}

export interface GuestPaths {
  /** The uncompressed kernel (vmlinux ELF) to load. */
  kernel: string;
  initrd: string;
  systemMap: string;
  /** The same kernel as a bzImage. */
  bzImage: string;
}

/** Shown when `defaultGuestPaths()` is null. */
export const DEFAULT_GUEST_MISSING = 'default guest not built: run npm run guest';

/**
 * The default guest built by guest/build.sh (`<cache>/default-guest/`), or
 * null if it is not built. With `cpus` > 1, its SMP kernel (`smp/`; the one-CPU
 * kernel boots faster where locked instructions are emulated) and the same initramfs.
 */
export function defaultGuestPaths(env: NodeJS.ProcessEnv = process.env, cpus = 1): GuestPaths | null {
  const dir = join(cacheDir(env), 'default-guest');
  const kdir = cpus > 1 ? join(dir, 'smp') : dir;
  const paths = {
    kernel: join(kdir, 'vmlinux'),
    initrd: join(dir, 'initramfs.cpio'),
    systemMap: join(kdir, 'System.map'),
    bzImage: join(kdir, 'bzImage'),
  };
  return Object.values(paths).every((p) => existsSync(p)) ? paths : null;
}

export interface DebianGuestPaths {
  /** The stock bzImage (its payload is LZ4: decompress it on the host). */
  bzImage: string;
  initrd: string;
  systemMap: string;
  /** The kernel release, e.g. 6.1.0-42-cloud-amd64. */
  release: string;
}

/** Shown when `debianGuestPaths()` is null. */
export const DEBIAN_GUEST_MISSING = 'Debian cloud kernel guest not prepared: run bash guest/debian-kernel.sh';

/** The stock Debian cloud kernel guest prepared by guest/debian-kernel.sh (`<cache>/debian-cloud/`), or null. */
export function debianGuestPaths(env: NodeJS.ProcessEnv = process.env): DebianGuestPaths | null {
  const dir = join(cacheDir(env), 'debian-cloud');
  let release: string;
  try {
    release = readFileSync(join(dir, 'release'), 'utf8').trim();
  } catch {
    return null;
  }
  const paths = { bzImage: join(dir, 'vmlinuz'), initrd: join(dir, 'initramfs.cpio'), systemMap: join(dir, 'System.map'), release };
  return [paths.bzImage, paths.initrd, paths.systemMap].every((p) => existsSync(p)) ? paths : null;
}

/** Where guest/init finds the command it runs instead of a shell (BootOptions.command puts it there). */
export const GUEST_COMMAND_FILE = '/etc/tsvisor/command';

/** Printed by guest/init once the system is up, before the command or shell. */
export const GUEST_READY_MARKER = 'tsvisor-guest: ready';

/** Busybox applets linked into /bin. */
export const GUEST_APPLETS = [
  'sh', 'ash', 'cttyhack', 'setsid', 'mount', 'umount', 'ip', 'ifconfig', 'route', 'ping', 'nc', 'poweroff', 'reboot',
  'halt', 'uname', 'cat', 'echo', 'printf', 'sleep', 'sha256sum', 'md5sum', 'dd', 'wc', 'ls', 'mkdir', 'rm', 'cp', 'mv',
  'ln', 'grep', 'sed', 'awk', 'head', 'tail', 'tr', 'cut', 'sort', 'uniq', 'base64', 'hexdump', 'od', 'insmod', 'lsmod',
  'dmesg', 'ps', 'kill', 'sync', 'true', 'false', 'test', '[', 'env', 'time', 'timeout', 'date', 'seq', 'xargs', 'find',
  'chmod', 'stat', 'uptime', 'free', 'sysctl', 'arp', 'nslookup', 'wget', 'udhcpc', 'vi', 'less', 'clear', 'yes', 'stty', 'hostname',
] as const;

export interface GuestInitramfsOptions {
  /** A statically linked busybox (Debian's busybox-static: /bin/busybox). */
  busybox: Uint8Array;
  /** The /init script (guest/init). */
  init: Uint8Array | string;
  /**
   * Kernel modules to load at boot, in load order, as [file name, contents]
   * (uncompressed .ko); stored in /lib/modules with a load-order list for /init.
   */
  modules?: [string, Uint8Array][];
}

/** The login shell's profile: a prompt, and what the guest offers. */
const GUEST_PROFILE = `export PS1='tsvisor:\\w# '
hostname -F /etc/hostname 2>/dev/null
echo "tsvisor guest: $(uname -sr); $(ip -4 -o addr show dev eth0 2>/dev/null | awk '{print "eth0 " $4}')"
echo "exit or poweroff ends the run (Ctrl-A x from the host)"
`;

/** The initramfs of tsvisor's guests: busybox, its applet links, /init, /dev/console and /dev/null. */
export function guestInitramfs(opts: GuestInitramfsOptions): Initramfs {
  const fs = new Initramfs();
  for (const d of ['bin', 'sbin', 'etc', 'proc', 'sys', 'dev', 'root', 'lib/modules']) fs.addDir(d);
  fs.addDir('tmp', 0o1777);
  fs.addCharDev('dev/console', 5, 1, 0o600);
  fs.addCharDev('dev/null', 1, 3, 0o666);
  fs.addFile('bin/busybox', opts.busybox, 0o755);
  for (const a of GUEST_APPLETS) fs.addSymlink(`bin/${a}`, 'busybox');
  fs.addFile('init', opts.init, 0o755);
  fs.addFile('etc/hostname', 'tsvisor\n');
  fs.addFile('etc/profile', GUEST_PROFILE);
  const modules = opts.modules ?? [];
  if (modules.length > 0) {
    const order: string[] = [];
    for (const [file, data] of modules) {
      const name = basename(file).replace(/\.ko(\.xz|\.gz|\.zst)?$/, '');
      fs.addFile(`lib/modules/${name}.ko`, data);
      order.push(name);
    }
    fs.addFile('lib/modules/load-order', order.join('\n') + '\n');
  }
  return fs;
}

