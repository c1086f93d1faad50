#!/usr/bin/env node
// The tsvisor command. The TypeScript sources are built into dist/ by
// `npm install` (prepare) or `npm run build`.
import { existsSync } from 'node:fs';
const cli = new URL('../dist/bundle/cli.js', import.meta.url);
if (!existsSync(cli)) {
  console.error('tsvisor: not built yet (run npm install or npm run build)');
  process.exit(1);
}
const { main } = await import(cli);
process.exitCode = await main(process.argv.slice(2));
