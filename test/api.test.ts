// The package entry point exports what the README's example uses.
import test from 'ava';
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from './helpers/kvm.js';

test('the package entry point exports Vm and friends, with type declarations', async (t) => {
  const pkg = createRequire(import.meta.url)(join(repoRoot, 'package.json')) as { main: string; types: string };
  const api = (await import(join(repoRoot, pkg.main))) as Record<string, unknown>;
  for (const name of ['Vm', 'GuestConsole', 'TsvisorError', 'defaultGuestPaths', 'COMMAND_EXIT', 'NetNamespace', 'Tap', 'detectHostKind']) {
    t.truthy(api[name], name);
  }
  t.is(typeof (api.Vm as { boot: unknown }).boot, 'function');
  t.true(existsSync(join(repoRoot, pkg.types)), `${pkg.types} exists`);
});
