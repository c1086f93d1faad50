// A writer for the cpio "newc" archives Linux unpacks as its initramfs
// (Documentation/driver-api/early-userspace/buffer-format.rst). Each entry is
// a 110-byte ASCII header ("070701" and 13 eight-digit hex fields), the
// NUL-terminated name padded to 4 bytes, then the data padded to 4 bytes; the
// archive ends with the entry "TRAILER!!!", padded with zeros to a multiple of
// 512 bytes as cpio(1) and the kernel's gen_init_cpio do (the kernel skips
// zeros between entries; some cpio readers want whole blocks). Output is deterministic: owner
// root, mtime 0, inode numbers in insertion order, parents before children.

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;
const NEWC_MAGIC = '070701';
const HEADER_SIZE = 110;
const TRAILER = 'TRAILER!!!';

interface Entry {
  name: string;
  mode: number;
  nlink: number;
  data: Uint8Array;
  rdevMajor: number;
  rdevMinor: number;
}

const empty = new Uint8Array(0);
const encoder = new TextEncoder();

/** `path` without leading or doubled slashes; rejects `.`/`..` and empty paths. */
function normalize(path: string): string {
  const parts = path.split('/').filter((p) => p !== '');
  if (parts.length === 0) throw new Error(`initramfs: empty path ${JSON.stringify(path)}`);
  for (const p of parts) {
    if (p === '.' || p === '..') throw new Error(`initramfs: path ${JSON.stringify(path)} has a ${p} component`);
    if (p.includes('\0')) throw new Error('initramfs: path contains NUL');
  }
  return parts.join('/');
}

export class Initramfs {
  private readonly entries = new Map<string, Entry>();

  /** A directory (idempotent: adding an existing directory sets its mode). */
  addDir(path: string, mode = 0o755): this {
    const name = normalize(path);
    const old = this.entries.get(name);
    if (old) {
      if ((old.mode & 0o170000) !== S_IFDIR) throw new Error(`initramfs: ${name} exists and is not a directory`);
      old.mode = S_IFDIR | (mode & 0o7777);
      return this;
    }
    this.parents(name);
    this.entries.set(name, { name, mode: S_IFDIR | (mode & 0o7777), nlink: 2, data: empty, rdevMajor: 0, rdevMinor: 0 });
    return this;
  }

  addFile(path: string, data: Uint8Array | string, mode = 0o644): this {
    return this.add(path, S_IFREG | (mode & 0o7777), typeof data === 'string' ? encoder.encode(data) : data);
  }

  addSymlink(path: string, target: string): this {
    return this.add(path, S_IFLNK | 0o777, encoder.encode(target));
  }

  addCharDev(path: string, major: number, minor: number, mode = 0o600): this {
    return this.add(path, S_IFCHR | (mode & 0o7777), empty, major, minor);
  }

  has(path: string): boolean {
    return this.entries.has(normalize(path));
  }

  /** The archive, TRAILER!!! and block padding included. */
  toBytes(): Uint8Array {
    const all = [...this.entries.values()];
    let size = 0;
    for (const e of all) size += entrySize(e.name, e.data.length);
    size += entrySize(TRAILER, 0);
    size = (size + 511) & ~511;
    const out = new Uint8Array(size);
    let off = 0;
    let ino = 1;
    for (const e of all) off = writeEntry(out, off, ino++, e);
    off = writeEntry(out, off, 0, { name: TRAILER, mode: 0, nlink: 1, data: empty, rdevMajor: 0, rdevMinor: 0 });
    off = (off + 511) & ~511;
    if (off !== size) throw new Error(`initramfs: size mismatch ${off} != ${size}`);
    return out;
  }

  private add(path: string, mode: number, data: Uint8Array, rdevMajor = 0, rdevMinor = 0): this {
    const name = normalize(path);
    if (this.entries.has(name)) throw new Error(`initramfs: ${name} added twice`);
    this.parents(name);
    this.entries.set(name, { name, mode, nlink: 1, data, rdevMajor, rdevMinor });
    return this;
  }

  private parents(name: string): void {
    const slash = name.lastIndexOf('/');
    if (slash < 0) return;
    const parent = name.slice(0, slash);
    const e = this.entries.get(parent);
    if (!e) this.addDir(parent);
    else if ((e.mode & 0o170000) !== S_IFDIR) throw new Error(`initramfs: ${parent} is not a directory`);
  }
}

const align4 = (n: number): number => (n + 3) & ~3;

function entrySize(name: string, dataLength: number): number {
  return align4(HEADER_SIZE + encoder.encode(name).length + 1) + align4(dataLength);
}

function writeEntry(out: Uint8Array, off: number, ino: number, e: Entry): number {
  const name = encoder.encode(e.name);
  const fields = [ino, e.mode, 0, 0, e.nlink, 0, e.data.length, 0, 0, e.rdevMajor, e.rdevMinor, name.length + 1, 0];
  let header = NEWC_MAGIC;
  for (const f of fields) {
    if (!Number.isInteger(f) || f < 0 || f > 0xffffffff) throw new Error(`initramfs: field out of range in ${e.name}`);
    header += f.toString(16).padStart(8, '0');
  }
  out.set(encoder.encode(header), off);
  out.set(name, off + HEADER_SIZE);
  off = align4(off + HEADER_SIZE + name.length + 1); // the NUL and padding are already zero
  out.set(e.data, off);
  return align4(off + e.data.length);
}
