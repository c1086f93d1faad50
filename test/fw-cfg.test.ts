// fw_cfg through its legacy I/O ports as a guest reads it: select with a
// 16-bit write to 0x510, read bytes at 0x511; the items tsvisor builds (what
// kvm-unit-tests' lib/x86/fwcfg.c and Linux's qemu_fw_cfg read), the file
// directory, and the --fw-cfg option's checks.
import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PioBus } from '../src/bus/io-bus.js';
import { TsvisorError } from '../src/errors.js';
import {
  FwCfg, fwCfgItems, loadFwCfgFiles, parseFwCfgOption, FW_CFG_FILE_DIR, FW_CFG_FILE_FIRST, FW_CFG_ID, FW_CFG_MAX_CPUS, FW_CFG_NB_CPUS,
  FW_CFG_PORT_DATA, FW_CFG_PORT_SEL, FW_CFG_RAM_SIZE, FW_CFG_SIGNATURE, type FwCfgFile,
} from '../src/devices/fw-cfg.js';

const MiB = 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'tsvisor-fw-cfg-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

/** A PIO bus with fw_cfg registered as the vCPU thread does it (after a structured clone, as workerData arrives). */
function machine(files: FwCfgFile[] = [], ramBytes = 256 * MiB, cpus = 1) {
  const pio = new PioBus();
  pio.register(new FwCfg(structuredClone(fwCfgItems({ ramBytes, cpus, files }))), FW_CFG_PORT_SEL, 2);
  const select = (key: number) => pio.lookup(FW_CFG_PORT_SEL)!.pioWrite(FW_CFG_PORT_SEL, 2, key);
  const readByte = () => pio.lookup(FW_CFG_PORT_DATA)!.pioRead(FW_CFG_PORT_DATA, 1);
  const read = (n: number) => Uint8Array.from({ length: n }, readByte);
  /** What lib/x86/fwcfg.c's fwcfg_get_u does: select, then `bytes` byte reads, little-endian. */
  const getU = (key: number, bytes: number) => {
    select(key);
    let v = 0n;
    for (let i = 0; i < bytes; i++) v |= BigInt(readByte()) << BigInt(8 * i);
    return v;
  };
  return { pio, select, readByte, read, getU };
}

const text = (b: Uint8Array) => new TextDecoder().decode(b);
const be32 = (b: Uint8Array, o: number) => new DataView(b.buffer, b.byteOffset).getUint32(o);
const be16 = (b: Uint8Array, o: number) => new DataView(b.buffer, b.byteOffset).getUint16(o);

test('the signature, the ID (traditional interface, no DMA), RAM size and CPU counts', (t) => {
  const m = machine([], 3 * 1024 * MiB + 512 * MiB, 1);
  m.select(FW_CFG_SIGNATURE);
  t.is(text(m.read(4)), 'QEMU');
  t.is(m.getU(FW_CFG_ID, 4), 1n, 'bit 0 only: no DMA');
  t.is(m.getU(FW_CFG_RAM_SIZE, 8), 3584n * BigInt(MiB), 'u64 little-endian, all of RAM');
  t.is(m.getU(FW_CFG_NB_CPUS, 2), 1n, 'kvm-unit-tests waits for NB_CPUS - 1 APs');
  t.is(m.getU(FW_CFG_MAX_CPUS, 2), 1n);
  // lib/x86/fwcfg.c reads MAX_RAM (its own key 0x11) and treats 0 as no limit.
  t.is(m.getU(0x11, 8), 0n);
});

test('reads past the end give 0 and stay there; selecting again starts over', (t) => {
  const m = machine();
  m.select(FW_CFG_SIGNATURE);
  t.deepEqual([...m.read(8)], [0x51, 0x45, 0x4d, 0x55, 0, 0, 0, 0]);
  m.select(FW_CFG_SIGNATURE);
  t.is(m.readByte(), 0x51, 'a new select resets the offset');
  t.is(m.readByte(), 0x45);
  m.select(FW_CFG_NB_CPUS);
  t.deepEqual([...m.read(4)], [1, 0, 0, 0]);
});

test('unknown and arch-local keys read 0; the write bit is not part of the key', (t) => {
  const m = machine();
  for (const key of [0x02, 0x04, 0x18, 0x20, 0x3fff, 0x8000, 0x8003, 0xffff]) {
    m.select(key);
    t.deepEqual([...m.read(4)], [0, 0, 0, 0], `key 0x${key.toString(16)}`);
  }
  m.select(0x4000 | FW_CFG_SIGNATURE);
  t.is(text(m.read(4)), 'QEMU', 'bit 14 (write) selects the same item');
});

test('only 16-bit writes select and only byte reads return data (as QEMU\'s combined port pair)', (t) => {
  const m = machine();
  const dev = m.pio.lookup(FW_CFG_PORT_SEL)!;
  m.select(FW_CFG_SIGNATURE);
  t.is(dev.pioRead(FW_CFG_PORT_DATA, 2), 0, 'a word read is not data');
  t.is(dev.pioRead(FW_CFG_PORT_DATA, 4), 0);
  t.is(m.readByte(), 0x51, 'and did not advance the offset');
  dev.pioWrite(FW_CFG_PORT_SEL, 1, FW_CFG_NB_CPUS);
  dev.pioWrite(FW_CFG_PORT_SEL, 4, FW_CFG_NB_CPUS);
  dev.pioWrite(FW_CFG_PORT_DATA, 1, 0xff);
  t.is(m.readByte(), 0x45, 'byte and dword writes neither select nor write');
  t.is(dev.pioRead(FW_CFG_PORT_SEL, 1), 0x4d, 'a byte read at 0x510 reads data too');
  t.is(m.pio.lookup(0x512), undefined, 'two ports, no DMA port');
});

test('the file directory: count and entries big-endian, sorted by name, keys from 0x20; the files\' bytes', (t) => {
  const a = new Uint8Array(5000).map((_, i) => (i * 13) & 0xff);
  const m = machine([
    { name: 'opt/zz', data: new TextEncoder().encode('last') },
    { name: 'opt/kvm-unit-tests/env', data: a },
    { name: 'opt/a', data: new Uint8Array(0) },
  ]);
  m.select(FW_CFG_FILE_DIR);
  const dirBytes = m.read(4 + 3 * 64);
  t.is(be32(dirBytes, 0), 3);
  const entries = [0, 1, 2].map((i) => {
    const e = dirBytes.subarray(4 + i * 64, 4 + (i + 1) * 64);
    return { size: be32(e, 0), select: be16(e, 4), reserved: be16(e, 6), name: text(e.subarray(8, 8 + e.subarray(8).indexOf(0))), pad: e.subarray(8).every((b, j) => j < e.subarray(8).indexOf(0) || b === 0) };
  });
  t.deepEqual(entries, [
    { size: 0, select: FW_CFG_FILE_FIRST, reserved: 0, name: 'opt/a', pad: true },
    { size: 5000, select: FW_CFG_FILE_FIRST + 1, reserved: 0, name: 'opt/kvm-unit-tests/env', pad: true },
    { size: 4, select: FW_CFG_FILE_FIRST + 2, reserved: 0, name: 'opt/zz', pad: true },
  ]);
  t.is(m.readByte(), 0, 'past the directory');
  m.select(FW_CFG_FILE_FIRST + 1);
  t.deepEqual(m.read(5000), a);
  t.is(m.readByte(), 0);
  m.select(FW_CFG_FILE_FIRST + 2);
  t.is(text(m.read(4)), 'last');
  m.select(FW_CFG_FILE_FIRST);
  t.is(m.readByte(), 0, 'an empty file');
  m.select(FW_CFG_FILE_FIRST + 3);
  t.is(m.readByte(), 0, 'no fourth file');
});

test('without files the directory holds a count of 0', (t) => {
  const m = machine();
  m.select(FW_CFG_FILE_DIR);
  t.deepEqual([...m.read(5)], [0, 0, 0, 0, 0]);
});

test('file names: below opt/, at most 55 bytes, each once', (t) => {
  const build = (...names: string[]) => fwCfgItems({ ramBytes: 64 * MiB, cpus: 1, files: names.map((name) => ({ name, data: new Uint8Array(1) })) });
  t.notThrows(() => build(`opt/${'x'.repeat(51)}`), '55 bytes');
  const long = t.throws(() => build(`opt/${'x'.repeat(52)}`), { instanceOf: TsvisorError });
  t.is(long?.exitCode, 2);
  t.regex(long!.message, /56 bytes, fw_cfg names hold at most 55/);
  t.throws(() => build(`opt/${'é'.repeat(26)}`), { message: /56 bytes/ }, 'bytes, not characters');
  t.throws(() => build('etc/e820'), { message: /not below opt\// });
  t.throws(() => build('opt/'), { message: /not below opt\// });
  t.throws(() => build('opt/a', 'opt/b', 'opt/a'), { message: /opt\/a is given twice/ });
});

test('--fw-cfg: name= and file= (the file must exist), string=, ",," for a comma; mistakes are usage errors', (t) => {
  const path = join(dir, 'env');
  writeFileSync(path, 'NR_CPUS=1\n');
  t.deepEqual(parseFwCfgOption(`name=opt/env,file=${path}`), { name: 'opt/env', path });
  t.deepEqual(parseFwCfgOption(`file=${path},name=opt/env`), { name: 'opt/env', path }, 'in any order');
  t.deepEqual(parseFwCfgOption('name=opt/s,string=a,,b'), { name: 'opt/s', data: new TextEncoder().encode('a,b') });
  const usage = (text: string, message: RegExp) => {
    const e = t.throws(() => parseFwCfgOption(text), { instanceOf: TsvisorError, message });
    t.is(e?.exitCode, 2, text);
    t.notRegex(e!.line, /\n/);
  };
  usage('opt/env', /not understood/);
  usage(`name=opt/env,file=${path},bogus=1`, /not understood/);
  usage(`name=opt/env,name=opt/x,file=${path}`, /not understood/);
  usage(`file=${path}`, /needs name= and one of file= or string=/);
  usage('name=opt/env', /needs name= and one of/);
  usage(`name=opt/env,file=${path},string=x`, /needs name= and one of/);
  usage(`name=env,file=${path}`, /not below opt\//);
  usage(`name=opt/env,file=${join(dir, 'missing')}`, /--fw-cfg file .*missing does not exist/);
  usage(`name=opt/env,file=${dir}`, /is not a regular file/);
});

test('BootOptions.fwCfgFiles: paths are read at boot, data is taken as is; a file gone by then is one line', (t) => {
  const path = join(dir, 'boot-env');
  writeFileSync(path, 'A=1\n');
  const files = loadFwCfgFiles([{ name: 'opt/p', path }, { name: 'opt/d', data: Uint8Array.of(1, 2) }]);
  t.deepEqual(files.map((f) => [f.name, [...f.data]]), [['opt/p', [...Buffer.from('A=1\n')]], ['opt/d', [1, 2]]]);
  t.throws(() => loadFwCfgFiles([{ name: 'opt/p', path: join(dir, 'gone') }]), { instanceOf: TsvisorError, message: /gone does not exist/ });
  t.throws(() => loadFwCfgFiles([{ name: 'opt/p' }]), { message: /neither a path nor data/ });
  t.throws(() => loadFwCfgFiles([{ name: 'p', data: new Uint8Array(0) }]), { message: /not below opt\// });
});
