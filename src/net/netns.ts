// Network namespaces for tsvisor's own sandboxes (`--net sandbox`, the tests
// and the benchmarks): a namespace made here, a TAP opened inside it, commands
// run inside it, and the namespace deleted afterwards — which deletes the TAP
// too. Traffic between host side and guest never leaves the namespace.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import koffi from 'koffi';
import * as libc from '../sys/libc.js';
import { TsvisorError } from '../errors.js';

const CLONE_NEWNET = 0x40000000;
const setns = koffi.load('libc.so.6').func('int setns(int fd, int nstype)') as (fd: number, nstype: number) => number;

function ip(args: string[]): { status: number; out: string } {
  const r = spawnSync('ip', args, { encoding: 'utf8' });
  if (r.error) throw new TsvisorError(`cannot run ip: ${r.error.message}`, 1, 'install iproute2');
  return { status: r.status ?? 1, out: `${r.stdout}${r.stderr}`.trim() };
}

export class NetNamespace {
  private deleted = false;

  private constructor(readonly name: string) {}

  /** Creates a fresh namespace `prefix-<pid>-<n>` with its loopback up. Needs CAP_SYS_ADMIN (root). */
  static create(prefix = 'tsvisor'): NetNamespace {
    for (let n = 0; n < 100; n++) {
      const name = `${prefix}-${process.pid}-${n}`;
      if (existsSync(`/run/netns/${name}`)) continue;
      const r = ip(['netns', 'add', name]);
      if (r.status !== 0) {
        if (/Operation not permitted|Permission denied/.test(r.out)) throw new TsvisorError('creating a network namespace needs root (CAP_SYS_ADMIN)', 1, 'run as root, or pre-create a TAP and pass --net tap:NAME');
        throw new TsvisorError(`ip netns add ${name} failed: ${r.out}`);
      }
      const ns = new NetNamespace(name);
      ns.exec(['ip', 'link', 'set', 'lo', 'up']);
      return ns;
    }
    throw new TsvisorError(`no free namespace name for ${prefix}`);
  }

  /** Runs a command inside the namespace; returns its status and output. */
  exec(argv: string[], opts: { timeoutMs?: number; input?: string } = {}): { status: number; out: string } {
    const r = spawnSync('ip', ['netns', 'exec', this.name, ...argv], { encoding: 'utf8', timeout: opts.timeoutMs, input: opts.input });
    return { status: r.status ?? 1, out: `${r.stdout ?? ''}${r.stderr ?? ''}` };
  }

  /**
   * Runs a command inside the namespace without blocking the main loop (which
   * may be running a guest's devices); resolves with its status and output.
   */
  run(argv: string[], opts: { timeoutMs?: number } = {}): Promise<{ status: number; out: string }> {
    return new Promise((resolve) => {
      const child = spawn('ip', ['netns', 'exec', this.name, ...argv], { stdio: ['ignore', 'pipe', 'pipe'], timeout: opts.timeoutMs });
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (out += d.toString()));
      child.on('close', (code) => resolve({ status: code ?? 1, out }));
    });
  }

  /** Starts a long-running command inside the namespace (kill it when done). */
  start(argv: string[]): ChildProcess {
    return spawn('ip', ['netns', 'exec', this.name, ...argv], { stdio: ['ignore', 'pipe', 'inherit'] });
  }

  /** Like exec, but throws with the output when the command fails. */
  must(argv: string[]): string {
    const r = this.exec(argv);
    if (r.status !== 0) throw new TsvisorError(`in namespace ${this.name}: ${argv.join(' ')} failed: ${r.out.trim()}`);
    return r.out;
  }

  /**
   * Calls `fn` with this thread inside the namespace, then returns to the
   * original one. Sockets and TAPs opened meanwhile stay in the namespace.
   */
  enter<T>(fn: () => T): T {
    const self = libc.open('/proc/thread-self/ns/net', libc.O_RDONLY | libc.O_CLOEXEC, 0);
    const target = libc.open(`/run/netns/${this.name}`, libc.O_RDONLY | libc.O_CLOEXEC, 0);
    if (self < 0 || target < 0) {
      if (self >= 0) libc.close(self);
      if (target >= 0) libc.close(target);
      throw new TsvisorError(`cannot open namespace ${this.name}`);
    }
    try {
      if (setns(target, CLONE_NEWNET) !== 0) throw new libc.SyscallError('setns', libc.errno());
      try {
        return fn();
      } finally {
        // Failing to get back to our own namespace must win over fn's own error: nothing after it is safe.
        // eslint-disable-next-line no-unsafe-finally
        if (setns(self, CLONE_NEWNET) !== 0) throw new libc.SyscallError('setns (back)', libc.errno());
      }
    } finally {
      libc.close(self);
      libc.close(target);
    }
  }

  /** Deletes the namespace (and every interface in it). Idempotent. */
  delete(): void {
    if (this.deleted) return;
    this.deleted = true;
    ip(['netns', 'del', this.name]);
  }
}
