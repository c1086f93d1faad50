// The tsvisor CLI as a test harness runs it: to its end, stdout and stderr apart.
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { repoRoot } from './kvm.js';

export const TSVISOR = join(repoRoot, 'bin/tsvisor.js');

/**
 * Runs tsvisor to its end. After `timeoutMs` it is killed (SIGKILL); if it
 * still has not ended 30 s later (a process stuck in the kernel cannot die)
 * the result comes anyway, with status null and a note on stderr, so the test
 * fails with the output it had instead of hanging until ava's own timeout.
 */
export function tsvisorRun(args: string[], timeoutMs = 15 * 60_000): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [TSVISOR, ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: timeoutMs, killSignal: 'SIGKILL' });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const stuck = setTimeout(() => resolve({ status: null, stdout, stderr: `${stderr}\n(test harness: tsvisor did not end ${(timeoutMs + 30_000) / 1000} s after it started, not even after SIGKILL)` }), timeoutMs + 30_000);
    child.on('close', (status) => {
      clearTimeout(stuck);
      resolve({ status, stdout, stderr });
    });
  });
}
