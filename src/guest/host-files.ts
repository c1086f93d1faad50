// Host files and directories put into the guest for one run (`--add`), and the
// command its init runs: an extra newc archive appended to the initramfs.
// Linux unpacks concatenated archives in order, so the additions land on top
// of the guest's own files without rebuilding its image.
import { lstatSync, readdirSync, readFileSync, readlinkSync, type Stats } from 'node:fs';
import { basename, join, posix } from 'node:path';
import { Initramfs } from '../boot/initramfs.js';
import { usageError } from '../errors.js';
import { GUEST_COMMAND_FILE } from './default-guest.js';

export interface HostFile {
  /** The path on the host. */
  host: string;
  /** The absolute path in the guest. */
  guest: string;
}

/** Where `--add HOST` lands without a guest path: the directory the command runs in. */
export const GUEST_ADD_DIR = '/root';

/** Parses one `--add HOST[:GUEST]`; GUEST defaults to /root/<basename of HOST>. */
export function parseAddOption(text: string): HostFile {
  const colon = text.lastIndexOf(':');
  const host = colon > 0 ? text.slice(0, colon) : text;
  const guest = colon > 0 ? text.slice(colon + 1) : posix.join(GUEST_ADD_DIR, basename(host));
  if (host === '') throw usageError(`--add "${text}" names no host file`, 'write --add HOST_PATH[:GUEST_PATH]');
  if (!guest.startsWith('/') || guest === '/' || guest.split('/').includes('..')) {
    throw usageError(`--add "${text}": the guest path ${guest} is not an absolute path below /`, 'write e.g. --add ./test.sh:/root/test.sh');
  }
  statOrFail(host); // a missing file is reported now, before anything is built or booted
  return { host, guest };
}

function statOrFail(path: string): Stats {
  try {
    return lstatSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw usageError(`--add ${path}: no such file or directory`, 'check the path');
    if (code === 'EACCES') throw usageError(`--add ${path} is not readable by this user`, 'make it readable or run as a user who can read it');
    throw usageError(`--add ${path}: ${(e as Error).message}`);
  }
}

function readOrFail(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw usageError(`--add ${path} is not readable (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, 'make it readable or leave it out');
  }
}

/** Adds `host` (a file, a symlink, or a directory with everything below it) at `guest`. */
function addTree(fs: Initramfs, host: string, guest: string): void {
  const st = statOrFail(host);
  const mode = st.mode & 0o7777;
  if (st.isDirectory()) {
    fs.addDir(guest, mode);
    let names: string[];
    try {
      names = readdirSync(host).sort();
    } catch (e) {
      throw usageError(`--add ${host}: cannot list the directory (${(e as NodeJS.ErrnoException).code})`, 'make it readable or leave it out');
    }
    for (const name of names) addTree(fs, join(host, name), posix.join(guest, name));
  } else if (st.isSymbolicLink()) {
    fs.addSymlink(guest, readlinkSync(host));
  } else if (st.isFile()) {
    fs.addFile(guest, readOrFail(host), mode);
  } else {
    throw usageError(`--add ${host} is neither a file, a directory nor a symlink`, 'add regular files and directories only');
  }
}

/** The archive holding every addition and the command for init, to append to the initramfs. */
export function hostFilesArchive(files: HostFile[], command?: string): Uint8Array {
  const fs = new Initramfs();
  if (command !== undefined) fs.addFile(GUEST_COMMAND_FILE, command + '\n', 0o644);
  // Parent directories are in the archive too, and unpacking one sets its
  // mode: keep /tmp world-writable and sticky as the guest has it.
  if (files.some((f) => f.guest.startsWith('/tmp/'))) fs.addDir('tmp', 0o1777);
  for (const f of files) addTree(fs, f.host, f.guest);
  return fs.toBytes();
}

/** `initrd` followed by `extra`, the first padded to 4 bytes as newc requires between archives. */
export function appendArchive(initrd: Uint8Array, extra: Uint8Array): Uint8Array {
  const start = (initrd.length + 3) & ~3;
  const out = new Uint8Array(start + extra.length);
  out.set(initrd, 0);
  out.set(extra, start);
  return out;
}
