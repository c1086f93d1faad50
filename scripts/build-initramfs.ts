// Writes the initramfs of tsvisor's guests (uncompressed newc cpio): busybox,
// its applet links, guest/init, /dev/console, /dev/null and, for a stock
// kernel, modules that /init loads in the order given.
//   node dist/scripts/build-initramfs.js --out FILE [--busybox /bin/busybox]
//        [--init guest/init] [--module a.ko --module b.ko ...]
// Run by guest/build.sh and guest/debian-kernel.sh.
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { guestInitramfs } from '../src/guest/default-guest.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const { values } = parseArgs({
  options: {
    out: { type: 'string' },
    busybox: { type: 'string', default: '/bin/busybox' },
    init: { type: 'string', default: `${root}guest/init` },
    module: { type: 'string', multiple: true, default: [] },
  },
});
if (!values.out) {
  console.error('usage: build-initramfs --out FILE [--busybox PATH] [--init PATH] [--module FILE.ko]...');
  process.exit(2);
}

let busybox: Buffer;
try {
  busybox = readFileSync(values.busybox!);
} catch {
  console.error(`build-initramfs: ${values.busybox} is missing; install it with: apt-get install busybox-static`);
  process.exit(1);
}
// A dynamically linked busybox would need its libraries in the image too.
if (busybox.includes(Buffer.from('/lib64/ld-linux-x86-64.so.2'))) {
  console.error(`build-initramfs: ${values.busybox} is dynamically linked; install busybox-static`);
  process.exit(1);
}

const modules = values.module!.map((m): [string, Uint8Array] => [m, readFileSync(m)]);
const bytes = guestInitramfs({ busybox, init: readFileSync(values.init!), modules }).toBytes();
const tmp = `${values.out}.tmp.${process.pid}`;
writeFileSync(tmp, bytes);
renameSync(tmp, values.out);
console.error(`build-initramfs: ${values.out} (${bytes.length} bytes, ${modules.length} modules)`);
