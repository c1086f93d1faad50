// npm run bench [-- PART... --runs N --json FILE]
// Benchmarks, each figure a median with min–max over the runs. Parts:
//   boot  the default guest from process start to its ready marker and to
//         process exit, with the exit counts (kvm_pvm: the marker is the
//         kernel's "Run /init", since guest user space cannot run there).
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { detectHostKind } from '../src/kvm/system.js';
import { defaultGuestPaths, DEFAULT_GUEST_MISSING, GUEST_READY_MARKER } from '../src/guest/default-guest.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const cli = join(root, 'bin/tsvisor.js');

interface Summary { median: number; min: number; max: number; runs: number[] }

function summarize(xs: number[]): Summary {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return { median: s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2, min: s[0], max: s[s.length - 1], runs: xs };
}

function fmt(s: Summary, unit: string, digits = 1): string {
  const u = unit ? ` ${unit}` : '';
  return `${s.median.toFixed(digits)}${u} (${s.min.toFixed(digits)}–${s.max.toFixed(digits)})`;
}

/** One boot in a child process: ms to the marker, ms to exit, and the exit statistics. */
async function bootOnce(marker: RegExp): Promise<{ readyMs: number; exitMs: number; exits: number; status: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'tsvisor-bench-'));
  const statsFile = join(dir, 'stats.json');
  try {
    const t0 = performance.now();
    const child = spawn(process.execPath, [cli, 'run', '--append', 'console=ttyS0 panic=-1 tsvisor.cmd=dHJ1ZQ==', '--timeout', '600', '--stats-json', statsFile], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    let readyMs = NaN;
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString('latin1');
      if (Number.isNaN(readyMs) && marker.test(out)) readyMs = performance.now() - t0;
    });
    const status = await new Promise<number>((resolve) => child.on('exit', (code) => resolve(code ?? 1)));
    const exitMs = performance.now() - t0;
    const stats = JSON.parse(readFileSync(statsFile, 'utf8')) as { stats: { totalExits: number } };
    return { readyMs, exitMs, exits: stats.stats.totalExits, status };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function benchBoot(runs: number): Promise<Record<string, unknown>> {
  if (!defaultGuestPaths()) throw new Error(DEFAULT_GUEST_MISSING);
  const host = detectHostKind();
  const marker = host === 'kvm_pvm' ? /Run \/init as init process/ : new RegExp(GUEST_READY_MARKER);
  const ready: number[] = [];
  const exit: number[] = [];
  const exits: number[] = [];
  for (let i = 0; i < runs; i++) {
    const r = await bootOnce(marker);
    process.stderr.write(`bench boot: run ${i + 1}/${runs}: ready ${(r.readyMs / 1000).toFixed(1)} s, exit ${(r.exitMs / 1000).toFixed(1)} s, ${r.exits} exits, status ${r.status}\n`);
    ready.push(r.readyMs);
    exit.push(r.exitMs);
    exits.push(r.exits);
  }
  const s = { ready: summarize(ready.map((x) => x / 1000)), exit: summarize(exit.map((x) => x / 1000)), exits: summarize(exits) };
  console.log(`\n## Boot of the default guest (${host}, ${runs} runs)\n`);
  console.log('| figure | median (min–max) |');
  console.log('| --- | --- |');
  console.log(`| process start → ${host === 'kvm_pvm' ? '"Run /init"' : 'ready marker'} | ${fmt(s.ready, 's')} |`);
  console.log(`| process start → process exit | ${fmt(s.exit, 's')} |`);
  console.log(`| VM exits per boot | ${fmt(s.exits, '', 0)} |`);
  return { host, boot_ready_s: s.ready, boot_exit_s: s.exit, boot_exits: s.exits };
}

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({ options: { runs: { type: 'string' }, json: { type: 'string' } }, allowPositionals: true });
  const parts = positionals.length ? positionals : ['boot'];
  const runs = values.runs ? Number(values.runs) : 3;
  if (!Number.isInteger(runs) || runs < 1) throw new Error('--runs takes a positive whole number');
  const result: Record<string, unknown> = {};
  for (const part of parts) {
    if (part === 'boot') result.boot = await benchBoot(runs);
    else throw new Error(`unknown bench part "${part}" (have: boot)`);
  }
  if (values.json) writeFileSync(values.json, JSON.stringify(result, null, 2));
}

main().catch((e) => {
  console.error(`bench: ${(e as Error).message}`);
  process.exit(1);
});
