// One full garbage collection, on request. Once a guest's kernel and initrd
// are in guest RAM, the host-side copies are garbage (a decompressed vmlinux
// alone is 15 MB), but V8 collects only when its own heap grows, which an
// idle VMM may not do for the whole run: they would stay resident. V8 hands
// `gc` to contexts made after --expose-gc is set, so no command-line flag is
// needed.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

let gc: (() => void) | null | undefined;

export function collectGarbage(): void {
  if (gc === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      gc = runInNewContext('gc') as () => void;
    } catch {
      gc = null; // not offered: the copies go at V8's next collection
    }
  }
  gc?.();
}
