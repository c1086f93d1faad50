// Building the default guest on first use: `tsvisor run` (and `npm start`)
// without --kernel runs guest/build.sh when the cache has no guest yet. The
// script shows its progress on stderr, installs missing Debian packages when
// it can (root with apt-get) and otherwise names the one apt-get line to run.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { TsvisorError } from '../errors.js';
import { defaultGuestPaths, type GuestPaths } from './default-guest.js';

/** The package's root directory (this module runs from dist/src/… or from a bundle in dist/bundle/). */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'guest/build.sh'))) {
    const up = dirname(dir);
    if (up === dir) throw new TsvisorError('guest/build.sh not found beside tsvisor', 1, 'run tsvisor from its checkout or package');
    dir = up;
  }
  return dir;
}

/** Builds the default guest (minutes the first time) and returns its paths. */
export async function buildDefaultGuest(cpus = 1): Promise<GuestPaths> {
  const script = join(packageRoot(), 'guest/build.sh');
  process.stderr.write('tsvisor: the default guest is not built yet: building it now (kernel and initramfs from Debian packages, cached for later runs)\n');
  const r = spawnSync('bash', [script], { stdio: ['ignore', 'ignore', 'inherit'] });
  const paths = defaultGuestPaths(process.env, cpus);
  if (r.status !== 0 || !paths) {
    throw new TsvisorError(`building the default guest failed${r.error ? `: ${r.error.message}` : ''}`, 1, 'see the guest: lines above; then run npm run guest');
  }
  return paths;
}
