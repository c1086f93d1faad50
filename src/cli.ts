// The tsvisor command line: `tsvisor run` boots a guest on the terminal.
// User mistakes end with one line naming the problem and the fix (status 2
// for usage, 1 for runtime failures); a guest's own end gives its status.
import { parseArgs } from 'node:util';
import { readFileSync, writeFileSync } from 'node:fs';
import { TsvisorError, usageError } from './errors.js';
import { Vm, type BootOptions, type VmExit } from './vm.js';
import { defaultGuestPaths, DEFAULT_GUEST_MISSING } from './guest/default-guest.js';
import { formatStats, formatNetStats, topSymbols } from './stats.js';
import { parseNetOption, sandboxIpParam, SANDBOX_GUEST_IP, SANDBOX_HOST_IP, type NetSpec } from './net/net-option.js';
import { Sandbox } from './net/sandbox.js';
import { idleInitArgs } from './guest/default-guest.js';
import { detectHostKind } from './kvm/system.js';

const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const MAIN_HELP = `tsvisor ${VERSION} — a KVM hypervisor in TypeScript

Usage:
  tsvisor run [options]     boot a guest with its serial console on this terminal
  tsvisor --help            this text
  tsvisor run --help        the options of run
  tsvisor --version

Without --kernel, run boots the default guest (build it with: npm run guest).`;

const RUN_HELP = `Usage: tsvisor run [options]

Boots a guest: any x86-64 Linux kernel (bzImage or vmlinux, with an initramfs),
or a multiboot image. The guest's serial console (COM1) is this terminal;
type Ctrl-A then x to stop the guest. The guest rebooting or powering off ends
tsvisor with status 0.

Options:
  --kernel FILE         bzImage, uncompressed vmlinux ELF, or multiboot image
                        (default: the default guest's kernel)
  --initrd FILE         initramfs (default: the default guest's, when --kernel is not given)
  --append "ARGS"       kernel command line (default for the default guest:
                        "console=ttyS0 panic=-1")
  --mem MIB             guest RAM in MiB (default 256; at most the host's RAM + swap)
  --net tap:NAME[,mac=M]  a virtio-net NIC on TAP NAME (an existing TAP you own needs
                        no root; a new one needs CAP_NET_ADMIN)
  --net tap[,mac=M]     a virtio-net NIC on a new TAP (CAP_NET_ADMIN)
  --net sandbox[,mac=M] a network namespace for this run with the TAP inside:
                        host side 10.0.2.2/24, guest 10.0.2.15 (Linux guests get
                        ip= for it); the host pings the guest once it is up; all
                        of it is deleted at exit (needs root)
  --tx-burst N          packets one TX bottom-half run sends (default 256)
  --ioeventfd           bind queue-notify writes to eventfds (KVM_IOEVENTFD): no
                        exit to userspace; the default is the exit path
  --timeout SECONDS     stop the guest after this long (exit status 124)
  --host-params "ARGS"  kernel parameters appended for this host, replacing the
                        defaults (on kvm_pvm these avoid instructions its emulator
                        lacks; on hardware KVM there are none); "" for none
  --stats               print VM exit statistics when the guest ends
  --stats-json FILE     write the exit, its reason and the statistics as JSON
  --profile MS          sample the guest's RIP every MS milliseconds and print the
                        hottest symbols at the end (needs --system-map for names)
  --system-map FILE     System.map for --profile (default: the default guest's)
  --verbose             print how the guest is booted (format, command line, host)
  -h, --help            this text

Exit status: 0 guest reset or power-off; (v<<1)|1 for a debug-exit write of v;
2 usage error; 1 runtime error; 3 triple fault; 4 unsupported instruction;
5 KVM internal error; 124 timeout; 130 SIGINT, 143 SIGTERM (the guest is
stopped, the terminal restored, a TAP or sandbox tsvisor made deleted).`;

const RUN_OPTIONS = {
  kernel: { type: 'string' },
  initrd: { type: 'string' },
  append: { type: 'string' },
  mem: { type: 'string' },
  timeout: { type: 'string' },
  'host-params': { type: 'string' },
  stats: { type: 'boolean' },
  'stats-json': { type: 'string' },
  profile: { type: 'string' },
  'system-map': { type: 'string' },
  verbose: { type: 'boolean' },
  net: { type: 'string' },
  'tx-burst': { type: 'string' },
  ioeventfd: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

function positiveInt(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!/^\d+$/.test(value) || Number(value) <= 0) throw usageError(`--${name} ${value} is not a positive whole number`, `for example --${name} ${fallback}`);
  return Number(value);
}

/**
 * `--mem -5` gives -5 as the value (to be refused by its own check, with the
 * option named) instead of parseArgs' "argument is ambiguous".
 */
function joinNegativeValues(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const option = argv[i].startsWith('--') ? (RUN_OPTIONS as Record<string, { type: string }>)[argv[i].slice(2)] : undefined;
    const next = argv[i + 1];
    if (option?.type === 'string' && next !== undefined && /^-\d/.test(next)) {
      out.push(`${argv[i]}=${next}`);
      i++;
    } else {
      out.push(argv[i]);
    }
  }
  return out;
}

export async function main(argv: string[]): Promise<number> {
  try {
    return await dispatch(argv);
  } catch (e) {
    if (e instanceof TsvisorError) {
      process.stderr.write(`tsvisor: ${e.line}\n`);
      return e.exitCode;
    }
    process.stderr.write(`tsvisor: internal error: ${(e as Error).stack ?? e}\n`);
    return 1;
  }
}

async function dispatch(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(MAIN_HELP + '\n');
    return command === undefined ? 2 : 0;
  }
  if (command === '--version' || command === '-v') {
    process.stdout.write(`${VERSION}\n`);
    return 0;
  }
  if (command !== 'run') throw usageError(`unknown command "${command}"`, 'see tsvisor --help');
  return run(rest);
}

async function run(argv: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({ args: joinNegativeValues(argv), options: RUN_OPTIONS, strict: true, allowPositionals: false }));
  } catch (e) {
    // parseArgs may explain over several lines; the user gets one.
    throw usageError((e as Error).message.replace(/\s*\n\s*/g, ' ').replace(/\.$/, ''), 'see tsvisor run --help');
  }
  if (values.help) {
    process.stdout.write(RUN_HELP + '\n');
    return 0;
  }
  const memMiB = positiveInt('mem', values.mem, 256);
  const timeoutS = values.timeout === undefined ? undefined : positiveInt('timeout', values.timeout, 60);
  const profileMs = values.profile === undefined ? undefined : positiveInt('profile', values.profile, 50);

  const netSpec: NetSpec | undefined = values.net === undefined ? undefined : parseNetOption(values.net);
  const txBurst = values['tx-burst'] === undefined ? undefined : positiveInt('tx-burst', values['tx-burst'], 256);
  const defaultGuest = values.kernel === undefined;
  let kernel = values.kernel;
  let initrd = values.initrd;
  let cmdline = values.append;
  let systemMap = values['system-map'];
  if (kernel === undefined) {
    const guest = defaultGuestPaths();
    if (!guest) throw new TsvisorError(DEFAULT_GUEST_MISSING, 1, 'it builds the kernel and initramfs from Debian packages, about 10 minutes the first time');
    kernel = guest.kernel;
    initrd ??= guest.initrd;
    if (cmdline === undefined) {
      cmdline = 'console=ttyS0 panic=-1';
      // On kvm_pvm the guest's init cannot run; with a network to show, keep
      // the kernel up for a minute with the syscall-free init instead.
      if (netSpec?.mode === 'sandbox' && detectHostKind() === 'kvm_pvm') cmdline += ` ${idleInitArgs(3e9 * 60)}`;
    }
    systemMap ??= guest.systemMap;
  }
  // The sandbox's addresses, for Linux guests that did not choose their own.
  const linuxParams = netSpec?.mode === 'sandbox' && !/(^|\s)ip=/.test(cmdline ?? '') ? [sandboxIpParam()] : [];
  const opts: BootOptions = {
    kernel,
    initrd: initrd ?? null,
    cmdline: cmdline ?? '',
    memMiB,
    timeoutMs: timeoutS === undefined ? undefined : timeoutS * 1000,
    sampleRipMs: profileMs,
    linuxParams,
    hostParams: values['host-params'] === undefined ? undefined : values['host-params'].split(/\s+/).filter(Boolean),
    kvmPath: process.env.TSVISOR_KVM_DEVICE || undefined,
  };

  if (!netSpec && values.ioeventfd) throw usageError('--ioeventfd needs a NIC', 'add --net tap:NAME or --net sandbox');
  // SIGINT/SIGTERM from here on stop the guest (or, during setup, the run as soon
  // as the guest exists), so the sandbox and the TAP are always cleaned up.
  const signals: SignalState = { vm: undefined, signal: undefined };
  const onSignal = (sig: NodeJS.Signals) => {
    signals.signal ??= sig;
    void signals.vm?.stop();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let sandbox: Sandbox | undefined;
  try {
    if (netSpec) {
      if (netSpec.mode === 'sandbox') sandbox = Sandbox.create();
      const onBackendLost = (message: string) => process.stderr.write(`\ntsvisor: TAP ${message}\n`);
      opts.net = { tap: sandbox ? sandbox.tap : netSpec.ifname ?? 'tap%d', mac: netSpec.mac, txBurst, ioeventfd: values.ioeventfd, onBackendLost };
    }
    const vm = await Vm.boot(opts);
    signals.vm = vm;
    if (signals.signal) void vm.stop();
    return await supervise(vm, values, profileMs, systemMap, sandbox, defaultGuest, signals);
  } finally {
    sandbox?.close();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/** The first SIGINT/SIGTERM of a run, and the guest it stops. */
interface SignalState {
  vm: Vm | undefined;
  signal: NodeJS.Signals | undefined;
}

async function supervise(vm: Vm, values: { verbose?: boolean; stats?: boolean; 'stats-json'?: string }, profileMs: number | undefined, systemMap: string | undefined, sandbox: Sandbox | undefined, defaultGuest: boolean, signals: SignalState): Promise<number> {
  if (values.verbose) {
    const i = vm.info;
    process.stderr.write(`tsvisor: ${i.format}${i.compression ? ` (${i.compression} payload, decompressed on the host)` : ''}, ${i.memMiB} MiB, host ${i.hostKind}\n`);
    process.stderr.write(`tsvisor: command line: ${i.cmdline}\n`);
    if (i.hostParams.length) process.stderr.write(`tsvisor: host parameters (--host-params to change): ${i.hostParams.join(' ')}\n`);
  }
  if (sandbox) {
    process.stderr.write(`tsvisor: network sandbox: namespace ${sandbox.ns.name}, ${sandbox.tap.name} ${SANDBOX_HOST_IP}/24, guest ${SANDBOX_GUEST_IP}; try: ip netns exec ${sandbox.ns.name} ping ${SANDBOX_GUEST_IP}\n`);
    if (defaultGuest && vm.info.hostKind === 'kvm_pvm') {
      process.stderr.write('tsvisor: on kvm_pvm guest user space cannot make system calls: the guest kernel boots and answers the network for a minute, then its init dies and the run ends\n');
    }
    // Once the guest kernel has configured its address and finished booting, show the host reaching it.
    vm.console.waitFor(/IP-Config: Complete[^]*Run \S+ as init process/, { fromStart: true }).then(async () => {
      const r = await sandbox.pingGuest(5);
      process.stderr.write(`\ntsvisor: host → guest ping ${r.ok ? 'answered' : 'FAILED'}: ${r.summary}\n`);
    }, () => {});
  }
  const restoreTerminal = attachTerminal(vm);
  let exit: VmExit;
  try {
    exit = await vm.exited;
  } finally {
    restoreTerminal();
  }
  const signalled = exit.kind === 'stopped' ? signals.signal : undefined;
  if (signalled) {
    process.stderr.write(`\ntsvisor: ${signalled} received: guest stopped\n`);
  } else if (exit.kind !== 'reset' && exit.kind !== 'poweroff' && exit.kind !== 'debug-exit' && exit.kind !== 'stopped') {
    process.stderr.write(`\ntsvisor: ${exit.reason}\n`);
  } else if (values.verbose) {
    process.stderr.write(`\ntsvisor: ${exit.reason}\n`);
  }
  if (values.stats) process.stderr.write(formatStats(exit.stats) + (exit.net ? formatNetStats(exit.net) : ''));
  if (values['stats-json']) writeFileSync(values['stats-json'], JSON.stringify({ status: exit.status, kind: exit.kind, reason: exit.reason, stats: exit.stats, net: exit.net }, null, 2));
  if (profileMs && exit.stats.ripSamples) process.stderr.write(topSymbols(exit.stats.ripSamples, systemMap));
  if (signalled) return 128 + (signalled === 'SIGINT' ? 2 : 15);
  return exit.status;
}

/** Raw terminal in, console out; Ctrl-A x stops the guest. Returns the undo. */
function attachTerminal(vm: Vm): () => void {
  const onData = (b: Buffer) => process.stdout.write(b);
  vm.console.on('data', onData);
  const stdin = process.stdin;
  const tty = stdin.isTTY === true;
  let escape = false;
  const onInput = (b: Buffer) => {
    for (let i = 0; i < b.length; i++) {
      if (escape) {
        escape = false;
        if (b[i] === 0x78 /* x */) {
          void vm.stop();
          return;
        }
        if (b[i] !== 0x01) vm.console.write(Uint8Array.of(0x01));
      } else if (b[i] === 0x01 && tty) {
        escape = true;
        continue;
      }
      vm.console.write(b.subarray(i, i + 1));
    }
  };
  if (tty) stdin.setRawMode(true);
  stdin.on('data', onInput);
  stdin.resume();
  return () => {
    vm.console.off('data', onData);
    stdin.off('data', onInput);
    if (tty) stdin.setRawMode(false);
    stdin.pause();
  };
}
