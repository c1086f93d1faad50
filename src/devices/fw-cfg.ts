// fw_cfg, QEMU's firmware configuration device, through its legacy I/O
// interface: a 16-bit write to port 0x510 selects an item, byte reads return
// the item's bytes in order, and reads past its end give 0. Guests learn the
// machine from it: kvm-unit-tests reads the CPU count (and waits for that many
// to come up), SeaBIOS and Linux's qemu_fw_cfg driver list the named files.
// There is no DMA interface; the ID item says so.
//
// The main thread builds the items (`fwCfgItems`: RAM size, CPUs, the user's
// files and their directory); the vCPU thread answers the port exits (`FwCfg`).
import { readFileSync, statSync } from 'node:fs';
import type { PioDevice } from '../bus/io-bus.js';
import { usageError } from '../errors.js';

/** The selector (16-bit writes) and data (byte reads) ports, as on QEMU's pc machine. */
export const FW_CFG_PORT_SEL = 0x510;
export const FW_CFG_PORT_DATA = 0x511;

// Item keys (QEMU's include/standard-headers/linux/qemu_fw_cfg.h).
export const FW_CFG_SIGNATURE = 0x00;
export const FW_CFG_ID = 0x01;
export const FW_CFG_RAM_SIZE = 0x03;
export const FW_CFG_NB_CPUS = 0x05;
export const FW_CFG_MAX_CPUS = 0x0f;
export const FW_CFG_FILE_DIR = 0x19;
/** User files get keys from here, in the order of their names. */
export const FW_CFG_FILE_FIRST = 0x20;
/** Bit 14 marks a write, bit 15 the architecture's own items; the key is the rest. */
const FW_CFG_ARCH_LOCAL = 0x8000;
const FW_CFG_ENTRY_MASK = 0x3fff;
/** Feature bits in the ID item: bit 0 the traditional interface; bit 1 (DMA) stays clear. */
export const FW_CFG_VERSION = 0x01;
/** A directory entry's name field, NUL included. */
export const FW_CFG_MAX_FILE_PATH = 56;
/** Directory entry: u32 size, u16 select, u16 reserved (big-endian), then the name. */
const FW_CFG_FILE_ENTRY = 8 + FW_CFG_MAX_FILE_PATH;
/** User files take keys FW_CFG_FILE_FIRST..FW_CFG_ENTRY_MASK. */
export const FW_CFG_MAX_FILES = FW_CFG_ENTRY_MASK + 1 - FW_CFG_FILE_FIRST;

/** One item: its key and its bytes. Plain data, so it crosses to the vCPU thread as is. */
export interface FwCfgItem {
  key: number;
  data: Uint8Array;
}

/** A named file the guest finds in the directory (`opt/...`). */
export interface FwCfgFile {
  name: string;
  data: Uint8Array;
}

/** A file as the user names it: its bytes, or a host path read at boot. */
export interface FwCfgFileSource {
  name: string;
  path?: string;
  data?: Uint8Array;
}

export interface FwCfgMachine {
  ramBytes: number;
  cpus: number;
  files: FwCfgFile[];
}

/** Refuses a name QEMU's `-fw_cfg` would not take from a user (outside opt/, too long for the directory). */
export function checkFwCfgName(name: string): void {
  const bytes = new TextEncoder().encode(name).byteLength;
  if (!name.startsWith('opt/') || name.length <= 4)
    throw usageError(`--fw-cfg name "${name}" is not below opt/`, 'user items are named opt/SOMETHING, e.g. name=opt/org.example/config');
  if (bytes >= FW_CFG_MAX_FILE_PATH)
    throw usageError(`--fw-cfg name "${name}" is ${bytes} bytes, fw_cfg names hold at most ${FW_CFG_MAX_FILE_PATH - 1}`, 'shorten the name');
  if (name.includes('\0')) throw usageError(`--fw-cfg name "${name}" contains a NUL byte`, 'leave it out');
}

/**
 * `--fw-cfg name=opt/NAME,file=PATH` (or `string=TEXT`), as QEMU's `-fw_cfg`;
 * a literal comma in a value is written ",,". The file must exist now.
 */
export function parseFwCfgOption(text: string): FwCfgFileSource {
  const fields: Record<string, string> = {};
  for (const part of splitOptions(text)) {
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq);
    if (eq < 0 || !['name', 'file', 'string'].includes(key) || key in fields)
      throw usageError(`--fw-cfg "${text}" is not understood`, 'write --fw-cfg name=opt/NAME,file=PATH or name=opt/NAME,string=TEXT');
    fields[key] = part.slice(eq + 1);
  }
  const { name, file, string } = fields;
  if (name === undefined || (file === undefined) === (string === undefined))
    throw usageError(`--fw-cfg "${text}" needs name= and one of file= or string=`, 'write --fw-cfg name=opt/NAME,file=PATH');
  checkFwCfgName(name);
  if (string !== undefined) return { name, data: new TextEncoder().encode(string) };
  let isFile = false;
  try {
    isFile = statSync(file).isFile();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw usageError(code === 'ENOENT' ? `--fw-cfg file ${file} does not exist` : `--fw-cfg file ${file}: ${(e as Error).message}`, 'check the file= path');
  }
  if (!isFile) throw usageError(`--fw-cfg file ${file} is not a regular file`, 'pass a file, not a directory or device');
  return { name, path: file };
}

/** The files' bytes, read now (a missing or unreadable one is one line, status 2). */
export function loadFwCfgFiles(sources: FwCfgFileSource[]): FwCfgFile[] {
  return sources.map((s) => {
    checkFwCfgName(s.name);
    if (s.data !== undefined) return { name: s.name, data: s.data };
    if (s.path === undefined) throw usageError(`fw_cfg file ${s.name} has neither a path nor data`, 'give one of them');
    try {
      return { name: s.name, data: readFileSync(s.path) };
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw usageError(`--fw-cfg file ${s.path} does not exist`, 'check the file= path');
      throw usageError(`cannot read --fw-cfg file ${s.path}: ${(e as Error).message}`, 'make it readable');
    }
  });
}

/** The items of a machine: signature, ID, RAM size, CPU counts, and the files with their directory. */
export function fwCfgItems(m: FwCfgMachine): FwCfgItem[] {
  if (!Number.isSafeInteger(m.ramBytes) || m.ramBytes < 0) throw new RangeError(`fw_cfg: RAM size ${m.ramBytes} is not a byte count`);
  if (!Number.isInteger(m.cpus) || m.cpus < 1 || m.cpus > 0xffff) throw new RangeError(`fw_cfg: ${m.cpus} CPUs`);
  if (m.files.length > FW_CFG_MAX_FILES) throw usageError(`${m.files.length} fw_cfg files are more than the ${FW_CFG_MAX_FILES} keys allow`, 'pass fewer --fw-cfg files');
  const enc = new TextEncoder();
  // QEMU keeps the directory sorted by name (strcmp) and numbers the keys in that order.
  const files = m.files.map((f) => ({ ...f, nameBytes: enc.encode(f.name) })).sort((a, b) => compareBytes(a.nameBytes, b.nameBytes));
  for (let i = 0; i < files.length; i++) {
    checkFwCfgName(files[i].name);
    if (i > 0 && files[i].name === files[i - 1].name) throw usageError(`--fw-cfg name ${files[i].name} is given twice`, 'give each item its own name');
    if (files[i].data.byteLength > 0xffffffff) throw usageError(`--fw-cfg ${files[i].name} is larger than 4 GiB`, 'pass a smaller file');
  }
  const u16 = (v: number) => le(v, 2);
  const items: FwCfgItem[] = [
    { key: FW_CFG_SIGNATURE, data: enc.encode('QEMU') },
    { key: FW_CFG_ID, data: le(FW_CFG_VERSION, 4) },
    { key: FW_CFG_RAM_SIZE, data: le(m.ramBytes, 8) },
    { key: FW_CFG_NB_CPUS, data: u16(m.cpus) },
    { key: FW_CFG_MAX_CPUS, data: u16(m.cpus) },
  ];
  // The directory, big-endian as QEMU writes it: count, then {size, select, reserved, name[56]}.
  const dir = new Uint8Array(4 + files.length * FW_CFG_FILE_ENTRY);
  const dv = new DataView(dir.buffer);
  dv.setUint32(0, files.length);
  files.forEach((f, i) => {
    const o = 4 + i * FW_CFG_FILE_ENTRY;
    dv.setUint32(o, f.data.byteLength);
    dv.setUint16(o + 4, FW_CFG_FILE_FIRST + i);
    dir.set(f.nameBytes, o + 8); // the rest of the field stays 0: NUL-terminated
    items.push({ key: FW_CFG_FILE_FIRST + i, data: f.data });
  });
  items.push({ key: FW_CFG_FILE_DIR, data: dir });
  return items;
}

/** The device on the vCPU thread: the selected item and how far the guest has read it. */
export class FwCfg implements PioDevice {
  readonly name = 'fw-cfg';
  private readonly items = new Map<number, Uint8Array>();
  private current: Uint8Array | null = null;
  private offset = 0;

  constructor(items: FwCfgItem[]) {
    for (const it of items) {
      if (!Number.isInteger(it.key) || it.key < 0 || it.key > FW_CFG_ENTRY_MASK) throw new RangeError(`fw_cfg key 0x${it.key.toString(16)} is out of range`);
      this.items.set(it.key, it.data);
    }
  }

  /** Selects by key; an unknown key (or an arch-local one: tsvisor has none) selects nothing, which reads 0. */
  select(selector: number): void {
    const key = selector & 0xffff;
    this.offset = 0;
    this.current = key & FW_CFG_ARCH_LOCAL ? null : this.items.get(key & FW_CFG_ENTRY_MASK) ?? null;
  }

  /** The next byte of the selected item; 0 past its end, with the offset left there. */
  readByte(): number {
    const cur = this.current;
    if (cur === null || this.offset >= cur.byteLength) return 0;
    return cur[this.offset++];
  }

  // QEMU's combined port pair: 16-bit writes select, byte reads (at either port)
  // read data. Byte writes went with writable items (QEMU 2.4); other widths do nothing.
  pioRead(_port: number, size: number): number {
    return size === 1 ? this.readByte() : 0;
  }

  pioWrite(port: number, size: number, value: number): void {
    if (port === FW_CFG_PORT_SEL && size === 2) this.select(value);
  }
}

/** Little-endian bytes of a non-negative integer (up to 2^53). */
function le(value: number, bytes: number): Uint8Array {
  const out = new Uint8Array(bytes);
  let v = BigInt(value);
  for (let i = 0; i < bytes; i++, v >>= 8n) out[i] = Number(v & 0xffn);
  return out;
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

/** Splits at commas, QEMU's way: ",," is a comma inside a value. */
function splitOptions(text: string): string[] {
  const parts = [''];
  for (let i = 0; i < text.length; i++) {
    if (text[i] !== ',') parts[parts.length - 1] += text[i];
    else if (text[i + 1] === ',') parts[parts.length - 1] += text[i++];
    else parts.push('');
  }
  return parts;
}
