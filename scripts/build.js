// Builds src/, test/ and scripts/*.ts with esbuild (one output file per source
// file, so the vCPU worker and tests load as separate modules), then type-checks
// and emits declarations with tsc. Run by `npm run build`, `npm test`, `npm install`.
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync, rmSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
process.chdir(root);

function sources(dir) {
  let out = [];
  let entries;
  try { entries = readdirSync(dir); } catch { return out; }
  for (const name of entries) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out = out.concat(sources(path));
    else if (name.endsWith('.ts') && !name.endsWith('.d.ts')) out.push(path);
  }
  return out;
}

// dist/ is rebuilt in place (never deleted: tests or a guest may be running
// from it), then outputs whose source is gone are removed so that a deleted
// test does not keep running.
const entryPoints = [...sources('src'), ...sources('test'), ...sources('scripts')];
function removeStale(dir) {
  let entries;
  try { entries = readdirSync(dir); } catch { return; }
  for (const name of entries) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) { removeStale(path); continue; }
    if (!name.endsWith('.js')) continue;
    const source = relative('dist', path).replace(/\.js$/, '.ts');
    if (!existsSync(source)) rmSync(path, { force: true });
  }
}
await build({
  entryPoints,
  outdir: 'dist',
  outbase: '.',
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: 'inline',
  logLevel: 'warning',
});
for (const top of ['src', 'test', 'scripts']) removeStale(join('dist', top));
// The command line runs from two bundles, the CLI and the vCPU worker: one
// file each to load instead of ~60 modules, which was a third of tsvisor's
// CPU at start. They sit at the same depth as dist/src/*.js, so the paths
// the code derives from import.meta.url (the worker beside vm.js, the repo
// root, package.json) hold in both layouts. Packages stay external.
await build({
  entryPoints: { 'bundle/cli': 'src/cli.ts', 'bundle/vcpu/worker': 'src/vcpu/worker.ts' },
  outdir: 'dist',
  bundle: true,
  packages: 'external',
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: 'linked',
  logLevel: 'warning',
});
if (!process.argv.includes('--no-check')) {
  try {
    execFileSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], { stdio: 'inherit' });
  } catch {
    console.error('build: type errors (see above)');
    process.exit(1);
  }
}
