// The tsvisor CLI as a test harness runs it: to its end, stdout and stderr apart.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { repoRoot } from './kvm.js';

export const TSVISOR = join(repoRoot, 'bin/tsvisor.js');

export function tsvisorRun(args: string[], timeoutMs = 15 * 60_000): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [TSVISOR, ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}
