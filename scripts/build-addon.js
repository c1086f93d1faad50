// Builds addon/ with node-gyp against the headers of the Node that runs this
// script (they ship with Node: <prefix>/include/node), so the build never
// tries to download headers. Run by `npm install`.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const prefix = dirname(dirname(process.execPath));
const args = ['rebuild', '--directory', join(root, 'addon')];
if (existsSync(join(prefix, 'include/node/node.h'))) args.push(`--nodedir=${prefix}`);
else console.error(`build-addon: no Node headers under ${prefix}/include/node; node-gyp will look for them itself`);

// node-gyp ships with npm; find it beside the npm that is running us, else on PATH.
let gyp = null;
const npmCli = process.env.npm_execpath;
if (npmCli) {
  const candidate = join(dirname(dirname(npmCli)), 'node_modules/node-gyp/bin/node-gyp.js');
  if (existsSync(candidate)) gyp = candidate;
}
// Run directly (not by npm): the npm that ships with this Node.
const bundled = join(prefix, 'lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js');
if (!gyp && existsSync(bundled)) gyp = bundled;
if (!gyp) {
  try {
    gyp = createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js');
  } catch {
    gyp = null;
  }
}
try {
  if (gyp) execFileSync(process.execPath, [gyp, ...args], { stdio: ['ignore', 'ignore', 'inherit'] });
  else execFileSync('node-gyp', args, { stdio: ['ignore', 'ignore', 'inherit'] });
} catch {
  console.error('build-addon: building the native addon failed (needs make and g++: apt-get install build-essential)');
  process.exit(1);
}
