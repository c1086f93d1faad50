// `--net sandbox` without root. Creating a TAP needs CAP_NET_ADMIN over the
// network namespace it is made in, and a user can get that over a namespace of
// their own: in a new user namespace (`unshare --user --map-root-user`) the user
// is root over a new network namespace (`--net`) made with it. Node cannot
// unshare itself (a multithreaded process cannot unshare CLONE_NEWUSER), so the
// CLI re-runs itself under unshare: the outer process checks what the host
// allows (one line if it does not), starts the inner one with TSVISOR_USERNS
// set, forwards SIGINT/SIGTERM to it and ends with its status. The inner one
// makes the sandbox in its own network namespace (no `ip netns`, nothing
// named), and when it ends the namespaces, the TAP and everything in them go
// with it: nothing outlives the run.
//
// What still needs the host's permission, for the user as they are outside:
// opening /dev/net/tun and /dev/kvm (a device owned by root stays root's inside:
// root in the new user namespace is the user, with the user's groups).
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, constants, openSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { TsvisorError } from '../errors.js';
import type { NetSpec } from './net-option.js';

/** Set in the re-run process: the outer process's network namespace (`net:[inode]`), which the inner one must not be in. */
export const USERNS_ENV = 'TSVISOR_USERNS';
/** The namespaces the inner process runs in: its own user namespace (the user mapped to root) and network namespace. */
export const UNSHARE_ARGS = ['--user', '--map-root-user', '--net'] as const;

function ownNetnsId(): string {
  return readlinkSync('/proc/self/ns/net');
}

/**
 * True in the process tsvisor re-ran under unshare: the marker is set, this
 * process is in another network namespace than the one that set it, and in a
 * user namespace other than the host's (whose uid_map is the identity).
 */
export function insideOwnUserNamespace(): boolean {
  const outer = process.env[USERNS_ENV];
  if (!outer) return false;
  try {
    if (ownNetnsId() === outer) return false;
    const map = readFileSync('/proc/self/uid_map', 'utf8').trim().split(/\s+/);
    return !(map.length === 3 && map[0] === '0' && map[1] === '0' && map[2] === '4294967295');
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------- what the host allows

/** What the checks read from the host; tests replace it. */
export interface UsernsHost {
  /** Runs `unshare --user --map-root-user --net true` as this user: spawn error code (ENOENT: no unshare), else status and output. */
  probe(): { errorCode?: string; status: number; output: string };
  /** The contents of a /proc/sys file, trimmed; null if it does not exist. */
  sysctl(path: string): string | null;
  /** Opens a device read-write and closes it: null if that worked, else the errno code (EACCES, ENOENT, …). */
  openDevice(path: string): string | null;
  /** `mode 0600, owner root` for the message, or null. */
  describeDevice(path: string): string | null;
}

export const realHost: UsernsHost = {
  probe() {
    const r = spawnSync('unshare', [...UNSHARE_ARGS, 'true'], { encoding: 'utf8', timeout: 10_000 });
    if (r.error) return { errorCode: (r.error as NodeJS.ErrnoException).code ?? 'error', status: 1, output: r.error.message };
    return { status: r.status ?? 1, output: `${r.stdout ?? ''}${r.stderr ?? ''}` };
  },
  sysctl(path) {
    try {
      return readFileSync(path, 'utf8').trim();
    } catch {
      return null;
    }
  },
  openDevice(path) {
    try {
      // libuv opens with O_CLOEXEC by itself.
      closeSync(openSync(path, constants.O_RDWR | constants.O_NONBLOCK));
      return null;
    } catch (e) {
      return (e as NodeJS.ErrnoException).code ?? 'error';
    }
  },
  describeDevice(path) {
    try {
      const s = statSync(path);
      const owner = s.uid === 0 ? 'root' : `uid ${s.uid}`;
      const group = s.gid === 0 ? 'root' : `gid ${s.gid}`;
      return `mode ${(s.mode & 0o7777).toString(8).padStart(4, '0')}, owner ${owner}, group ${group}`;
    } catch {
      return null;
    }
  },
};

const PREFIX = '--net sandbox without root';

/** Why a user namespace could not be made, from the sysctls that forbid it, else from what unshare printed. */
function usernsRefused(host: UsernsHost, said: string): TsvisorError {
  const zero = (path: string) => host.sysctl(path) === '0';
  if (zero('/proc/sys/user/max_user_namespaces')) {
    return new TsvisorError(`${PREFIX} runs in a user namespace of its own, and this host allows none (/proc/sys/user/max_user_namespaces is 0)`, 1, 'sysctl -w user.max_user_namespaces=10000, or run as root');
  }
  if (zero('/proc/sys/kernel/unprivileged_userns_clone')) {
    return new TsvisorError(`${PREFIX} runs in a user namespace of its own, and this host does not let users make one (/proc/sys/kernel/unprivileged_userns_clone is 0)`, 1, 'sysctl -w kernel.unprivileged_userns_clone=1, or run as root');
  }
  if (zero('/proc/sys/user/max_net_namespaces')) {
    return new TsvisorError(`${PREFIX} runs in a network namespace of its own, and this host allows none (/proc/sys/user/max_net_namespaces is 0)`, 1, 'sysctl -w user.max_net_namespaces=10000, or run as root');
  }
  if (host.sysctl('/proc/sys/kernel/apparmor_restrict_unprivileged_userns') === '1') {
    return new TsvisorError(`${PREFIX} runs in a user namespace of its own, and AppArmor keeps users from using one (kernel.apparmor_restrict_unprivileged_userns is 1; unshare said: ${said})`, 1, 'sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or run as root');
  }
  return new TsvisorError(`${PREFIX} runs in a user namespace of its own, and unshare ${UNSHARE_ARGS.join(' ')} could not make one: ${said}`, 1, 'allow unprivileged user namespaces on this host, or run as root');
}

/**
 * Whether this user can run `--net sandbox` in a user namespace of its own:
 * null if so, else the one-line error saying what is missing and the fix.
 * /dev/kvm missing altogether is left to the boot, which says so itself.
 */
export function unprivilegedSandboxProblem(host: UsernsHost = realHost, kvmPath = process.env.TSVISOR_KVM_DEVICE || '/dev/kvm'): TsvisorError | null {
  const p = host.probe();
  if (p.errorCode === 'ENOENT') {
    return new TsvisorError(`${PREFIX} runs in a user namespace of its own, made by unshare (util-linux), which is not installed`, 1, 'apt-get install util-linux, or run as root');
  }
  if (p.errorCode !== undefined || p.status !== 0) {
    const said = p.output.trim().replace(/\s*\n\s*/g, '; ') || `exit status ${p.status}`;
    return usernsRefused(host, said);
  }
  const tun = host.openDevice('/dev/net/tun');
  if (tun === 'ENOENT' || tun === 'ENODEV' || tun === 'ENXIO') {
    return new TsvisorError('/dev/net/tun is missing: the kernel has no TUN/TAP support loaded', 1, 'modprobe tun');
  }
  if (tun === 'EACCES' || tun === 'EPERM') {
    const how = host.describeDevice('/dev/net/tun');
    return new TsvisorError(`${PREFIX} needs /dev/net/tun, which this user cannot open${how ? `: ${how}` : ''}`, 1, 'chmod 0666 /dev/net/tun (its usual mode) or run as root');
  }
  if (tun !== null) return new TsvisorError(`${PREFIX}: cannot open /dev/net/tun: ${tun}`, 1, 'run as root');
  const kvm = host.openDevice(kvmPath);
  if (kvm === 'EACCES' || kvm === 'EPERM') {
    return new TsvisorError(`permission denied opening ${kvmPath}`, 1, 'add your user to the kvm group or run as root');
  }
  return null;
}

// ---------------------------------------------------------------- the re-run

/**
 * Runs `command` in a user + network namespace of its own (the user mapped to
 * root) with the terminal passed through and TSVISOR_USERNS set; SIGINT and
 * SIGTERM received meanwhile are forwarded to it. Resolves with its exit
 * status, or 128 + the signal number if a signal ended it.
 */
export function runInOwnUserNamespace(command: string[]): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    const child = spawn('unshare', [...UNSHARE_ARGS, '--', ...command], { stdio: 'inherit', env: { ...process.env, [USERNS_ENV]: ownNetnsId() } });
    const forward = (signal: NodeJS.Signals) => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    };
    process.on('SIGINT', forward);
    process.on('SIGTERM', forward);
    const done = () => {
      process.off('SIGINT', forward);
      process.off('SIGTERM', forward);
    };
    child.once('error', (e: NodeJS.ErrnoException) => {
      done();
      if (e.code === 'ENOENT') reject(new TsvisorError(`${PREFIX} runs in a user namespace of its own, made by unshare (util-linux), which is not installed`, 1, 'apt-get install util-linux, or run as root'));
      else reject(new TsvisorError(`cannot run unshare: ${e.message}`, 1, 'run as root'));
    });
    child.once('exit', (code, signal) => {
      done();
      resolve(code ?? 128 + (signal ? osConstants.signals[signal] : 0));
    });
  });
}

/** Whether this run needs the re-run: `--net sandbox`, not root, and not already inside. */
function reexecNeeded(netSpec: NetSpec | undefined): boolean {
  return netSpec?.mode === 'sandbox' && !insideOwnUserNamespace() && process.geteuid?.() !== 0;
}

let checked: TsvisorError | null | undefined;

/**
 * Throws the one-line TsvisorError when `--net sandbox` is asked by a user who
 * is not root and this host will not let them run it in a user namespace of
 * their own; does nothing otherwise. Checked once per process: the CLI may
 * call it early (before anything slow) and sandboxReexec checks again for free.
 */
export function sandboxPreflight(netSpec: NetSpec | undefined): void {
  if (!reexecNeeded(netSpec)) return;
  checked ??= unprivilegedSandboxProblem();
  if (checked) throw checked;
}

/**
 * Called by the CLI just before it sets up the run (after anything that needs
 * the host's network, such as building the default guest: the re-run process
 * has a network namespace of its own, empty). When `--net sandbox` is asked by
 * a user who is not root (and this is not already the re-run process), checks
 * what the host allows — throwing the one-line TsvisorError if it does not —
 * and re-runs the same node, script and `run` arguments in a user + network
 * namespace of its own; the promise is that run's exit status. Null when
 * nothing is to be done: no sandbox, root, or already inside.
 */
export function sandboxReexec(runArgv: string[], netSpec: NetSpec | undefined): Promise<number> | null {
  if (!reexecNeeded(netSpec)) return null;
  sandboxPreflight(netSpec);
  const script = process.argv[1];
  if (!script) throw new TsvisorError(`${PREFIX} re-runs tsvisor, and this process has no script to re-run`, 1, 'run the tsvisor command, or run as root');
  return runInOwnUserNamespace([process.execPath, ...process.execArgv, script, 'run', ...runArgv]);
}

// ---------------------------------------------------------------- inside

function runHere(argv: string[], timeoutMs?: number): { status: number; out: string } {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', timeout: timeoutMs });
  if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') {
    throw new TsvisorError(`cannot run ${argv[0]}: not installed`, 1, argv[0] === 'ip' ? 'install iproute2' : `install ${argv[0]}`);
  }
  return { status: r.status ?? 1, out: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}

/**
 * The network namespace of this process, inside the user namespace tsvisor
 * re-ran in: the same surface as NetNamespace for what the sandbox needs,
 * with commands run directly (no `ip netns exec`). Nothing to delete: it ends
 * with the process.
 */
export class OwnNetNamespace {
  /** For messages: "namespace of process N". */
  readonly name: string;
  /** Run before a command to run it in here from outside, as the same user. */
  readonly enterCommand: string;

  constructor(readonly pid = process.pid) {
    this.name = `of process ${pid}`;
    // --preserve-credentials: setgroups is denied in a user namespace made by an unprivileged user.
    this.enterCommand = `nsenter -t ${pid} -U -n --preserve-credentials`;
  }

  exec(argv: string[], opts: { timeoutMs?: number } = {}): { status: number; out: string } {
    return runHere(argv, opts.timeoutMs);
  }

  must(argv: string[]): string {
    const r = runHere(argv);
    if (r.status !== 0) throw new TsvisorError(`in the sandbox's namespace: ${argv.join(' ')} failed: ${r.out.trim()}`);
    return r.out;
  }

  run(argv: string[], opts: { timeoutMs?: number } = {}): Promise<{ status: number; out: string }> {
    return new Promise((resolve) => {
      const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], timeout: opts.timeoutMs });
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (out += d.toString()));
      child.on('error', (e) => (out += e.message));
      child.on('close', (code) => resolve({ status: code ?? 1, out }));
    });
  }

  /** Nothing to do: the namespace goes when this process ends. */
  delete(): void {}
}
