// The tsvisor command line: `tsvisor run` boots a guest on the terminal.
// User mistakes end with one line naming the problem and the fix (status 2
// for usage, 1 for runtime failures); a guest's own end gives its status.
import { parseArgs } from 'node:util';
import { readFileSync, writeFileSync } from 'node:fs';
import { describeBug, TsvisorError, usageError } from './errors.js';
import { DEVICE_NAMES, Vm, type BootOptions, type DeviceName, type VmExit } from './vm.js';
import { defaultGuestPaths } from './guest/default-guest.js';
import { formatStats, formatNetStats, topSymbols } from './stats.js';
import { parseNetOption, sandboxIpParam, type NetSpec } from './net/net-option.js';
import { Sandbox } from './net/sandbox.js';
import { insideOwnUserNamespace, sandboxPreflight, sandboxReexec } from './net/user-namespace.js';
import { GUEST_READY_MARKER } from './guest/default-guest.js';
import { buildDefaultGuest } from './guest/build.js';
import { parseAddOption, type HostFile } from './guest/host-files.js';
import { parseFwCfgOption } from './devices/fw-cfg.js';
import { shellCommand } from './guest/command.js';
import { COMMAND_EXIT, EXIT_VMM_BUG } from './vcpu/protocol.js';
import { ensureHostTool } from './util/host-tools.js';
import { defaultQueuePairs } from './devices/net/virtio-net-options.js';

const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const MAIN_HELP = `tsvisor ${VERSION} — a KVM hypervisor in TypeScript

Usage:
  tsvisor run [options]                 boot a guest with its serial console on this terminal
  tsvisor run [options] -- COMMAND ...  run COMMAND in the guest; exit with its status
  tsvisor --help                        this text
  tsvisor run --help                    the options of run
  tsvisor --version

Without --kernel, run boots the default guest (built on first use, or: npm run guest).`;

const RUN_HELP = `Usage: tsvisor run [options] [-- COMMAND [ARGS...]]

Boots a guest: any x86-64 Linux kernel (bzImage or vmlinux, with an initramfs),
or a multiboot image. The guest's serial console (COM1) is this terminal;
type Ctrl-A then x to stop the guest. The guest rebooting or powering off ends
tsvisor with status 0. The default guest (no --kernel) is built on first use
and gives a shell; \`exit\` or \`poweroff\` ends the run.

With -- COMMAND, the guest's init runs COMMAND (with sh -c; one argument is
taken as a shell command, several are quoted word by word) in /root, with
stdin /dev/null, and tsvisor exits with COMMAND's status. Its output streams
here; the boot is shown with --verbose. For example:
  tsvisor run --net sandbox -- ping -c 3 10.0.2.2
  tsvisor run --add ./test.sh -- ./test.sh

Options:
  --kernel FILE         bzImage, uncompressed vmlinux ELF, or multiboot image
                        (default: the default guest's kernel)
  --initrd FILE         initramfs (default: the default guest's, when --kernel is not given);
                        for a multiboot image, module 0
  --append "ARGS"       kernel command line (default for the default guest:
                        "console=ttyS0 panic=-1")
  --mem MIB             guest RAM in MiB (default 256; at most the host's RAM + swap)
  --cpus N              vCPUs (default 1; at most 64, or KVM's limit if lower); each
                        is a thread; the APs start when the guest sends them INIT/SIPI
  --net tap:NAME[,mac=M][,queues=N]  a virtio-net NIC on TAP NAME (an existing TAP
                        you own needs no root; a new one needs CAP_NET_ADMIN).
                        queues=N: N queue pairs (VIRTIO_NET_F_MQ) on a multi-queue
                        TAP; default one per vCPU up to 8 (one for an existing
                        single-queue TAP)
  --net tap[,mac=M][,queues=N]  a virtio-net NIC on a new TAP (CAP_NET_ADMIN)
  --net sandbox[,mac=M][,queues=N]  a network namespace for this run with the TAP inside:
                        host side 10.0.2.2/24, guest 10.0.2.15 (Linux guests get
                        ip= for it); the host pings the guest once it is up; all
                        of it is deleted at exit. Without root it runs in a user
                        namespace of its own (needs unshare, and /dev/net/tun and
                        /dev/kvm open to you)
  --tx-burst N          packets one TX bottom-half run sends (default 256)
  --ioeventfd           bind queue-notify writes to eventfds (KVM_IOEVENTFD): no
                        exit to userspace; the default is the exit path
  --device NAME         add a device; repeatable. NAME: pci-testdev (QEMU's PCI
                        test device, for kvm-unit-tests' vmexit pci-mem/pci-io; a
                        PCI slot each) or pc-testdev (QEMU's ISA test device, as
                        kvm-unit-tests' x86/run adds it: ports 0xe0-0xeb and
                        0x2000-0x2017, MMIO at 0xff000000; no PCI slot, once)
  --pit-reinject on|off whether the PIT re-injects timer ticks the guest missed
                        (default on, as KVM and QEMU; off is QEMU's
                        kvm-pit.lost_tick_policy=discard)
  --acpi on|off         ACPI tables (with the PCI host bridge) and the PM block
                        (PM timer, power-off by S5); default on. The MP table is
                        always there, for kernels without ACPI
  --timeout SECONDS     stop the guest after this long (exit status 124)
  --host-params "ARGS"  kernel parameters appended for this host, replacing the
                        defaults (on kvm_pvm these avoid instructions its emulator
                        lacks; on hardware KVM there are none); "" for none
  --stats               print VM exit statistics when the guest ends
  --stats-json FILE     write the exit, its reason and the statistics as JSON
  --profile MS          sample the guest's RIP every MS milliseconds and print the
                        hottest symbols at the end (needs --system-map for names)
  --system-map FILE     System.map for --profile (default: the default guest's)
  --add HOST[:GUEST]    put a host file or directory into the guest for this run
                        (default GUEST: /root/<name>); repeatable
  --fw-cfg name=opt/NAME,file=PATH
                        a file in the guest's fw_cfg, as QEMU's -fw_cfg (or
                        string=TEXT instead of file=); repeatable
  --verbose             print how the guest is booted (format, command line, host)
  -h, --help            this text

Exit status: 0 guest reset or power-off; (v<<1)|1 for a debug-exit write of v;
2 usage error; 1 runtime error; 3 triple fault; 4 unsupported instruction;
5 KVM internal error; 70 a bug in tsvisor (the guest is stopped, one line names
the error); 124 timeout; 130 SIGINT, 143 SIGTERM (the guest is stopped, the
terminal restored, a TAP or sandbox tsvisor made deleted).
With -- COMMAND: COMMAND's own status, or ${COMMAND_EXIT.panic} the guest kernel panicked;
${COMMAND_EXIT.noInit} the guest never reached init; ${COMMAND_EXIT.timeout} --timeout passed; ${COMMAND_EXIT.failure} tsvisor or KVM
could not go on (no KVM, triple fault, unsupported instruction, internal error); ${COMMAND_EXIT.noStatus} the
guest ended without the command's status (it rebooted or was stopped).`;

const RUN_OPTIONS = {
  kernel: { type: 'string' },
  initrd: { type: 'string' },
  append: { type: 'string' },
  mem: { type: 'string' },
  cpus: { type: 'string' },
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
  add: { type: 'string', multiple: true },
  'fw-cfg': { type: 'string', multiple: true },
  device: { type: 'string', multiple: true },
  acpi: { type: 'string' },
  'pit-reinject': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** A --device NAME, one of DEVICE_NAMES. */
function deviceName(name: string): DeviceName {
  const known = DEVICE_NAMES.find((n) => n === name);
  if (!known) throw usageError(`--device ${name}: no such device`, `known devices: ${DEVICE_NAMES.join(', ')}`);
  return known;
}

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
  // With -- COMMAND, 1 is the command's to give: tsvisor's own failures there say 245.
  const runtimeFailure = argv[0] === 'run' && argv.includes('--') ? COMMAND_EXIT.failure : 1;
  try {
    return await dispatch(argv);
  } catch (e) {
    if (e instanceof TsvisorError) {
      process.stderr.write(`tsvisor: ${e.line}\n`);
      return e.exitCode === 1 ? runtimeFailure : e.exitCode;
    }
    process.stderr.write(`tsvisor: internal error: ${describeBug(e)} (a bug in tsvisor)\n`);
    return runtimeFailure === 1 ? EXIT_VMM_BUG : runtimeFailure;
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
  // Everything after `--` is the guest's command, never an option of tsvisor.
  const dashes = argv.indexOf('--');
  const commandArgv = dashes < 0 ? undefined : argv.slice(dashes + 1);
  const options = dashes < 0 ? argv : argv.slice(0, dashes);
  try {
    ({ values } = parseArgs({ args: joinNegativeValues(options), options: RUN_OPTIONS, strict: true, allowPositionals: false }));
  } catch (e) {
    // parseArgs may explain over several lines; the user gets one.
    throw usageError((e as Error).message.replace(/\s*\n\s*/g, ' ').replace(/\.$/, ''), 'see tsvisor run --help');
  }
  if (values.help) {
    process.stdout.write(RUN_HELP + '\n');
    return 0;
  }
  const memMiB = positiveInt('mem', values.mem, 256);
  const cpus = positiveInt('cpus', values.cpus, 1);
  const timeoutS = values.timeout === undefined ? undefined : positiveInt('timeout', values.timeout, 60);
  const profileMs = values.profile === undefined ? undefined : positiveInt('profile', values.profile, 50);

  const netSpec: NetSpec | undefined = values.net === undefined ? undefined : parseNetOption(values.net);
  // Without root, --net sandbox runs in a user namespace of its own: say now if this host will not allow it.
  sandboxPreflight(netSpec);
  const txBurst = values['tx-burst'] === undefined ? undefined : positiveInt('tx-burst', values['tx-burst'], 256);
  if (commandArgv !== undefined && commandArgv.length === 0) throw usageError('-- is followed by no command', 'write e.g. tsvisor run -- uname -a');
  const command = commandArgv === undefined ? undefined : shellCommand(commandArgv);
  const addFiles: HostFile[] = (values.add ?? []).map(parseAddOption);
  const fwCfgFiles = (values['fw-cfg'] ?? []).map(parseFwCfgOption);
  const devices = (values.device ?? []).map(deviceName);
  if (values.acpi !== undefined && values.acpi !== 'on' && values.acpi !== 'off') throw usageError(`--acpi ${values.acpi} is not on or off`, 'write --acpi on or --acpi off');
  const acpi = values.acpi as 'on' | 'off' | undefined;
  const pitReinject = values['pit-reinject'];
  if (pitReinject !== undefined && pitReinject !== 'on' && pitReinject !== 'off') throw usageError(`--pit-reinject ${pitReinject} is not on or off`, 'write --pit-reinject on or --pit-reinject off');
  const defaultGuest = values.kernel === undefined;
  let kernel = values.kernel;
  let initrd = values.initrd;
  let cmdline = values.append;
  let systemMap = values['system-map'];
  if (kernel === undefined || (initrd === undefined && (command !== undefined || addFiles.length > 0))) {
    // The default guest (or its initramfs, which holds the init that runs commands).
    const guest = defaultGuestPaths(process.env, cpus) ?? (await buildDefaultGuest(cpus));
    kernel ??= guest.kernel;
    initrd ??= guest.initrd;
    systemMap ??= guest.systemMap;
  }
  // quiet: a command's output is not interleaved with the kernel's log.
  if (defaultGuest && cmdline === undefined) cmdline = `console=ttyS0 panic=-1${command !== undefined && !values.verbose ? ' quiet' : ''}`;
  // The sandbox's addresses, for Linux guests that did not choose their own.
  const linuxParams = netSpec?.mode === 'sandbox' && !/(^|\s)ip=/.test(cmdline ?? '') ? [sandboxIpParam()] : [];
  const opts: BootOptions = {
    kernel,
    initrd: initrd ?? null,
    cmdline: cmdline ?? '',
    memMiB,
    cpus,
    timeoutMs: timeoutS === undefined ? undefined : timeoutS * 1000,
    sampleRipMs: profileMs,
    linuxParams,
    hostParams: values['host-params'] === undefined ? undefined : values['host-params'].split(/\s+/).filter(Boolean),
    kvmPath: process.env.TSVISOR_KVM_DEVICE || undefined,
    command,
    addFiles,
    fwCfgFiles,
    devices,
    acpi,
    pitReinject: pitReinject as 'on' | 'off' | undefined,
  };

  if (!netSpec && values.ioeventfd) throw usageError('--ioeventfd needs a NIC', 'add --net tap:NAME or --net sandbox');
  // ... by running itself again there (after the default guest is built: inside there is no network).
  const inUserNamespace = sandboxReexec(argv, netSpec);
  if (inUserNamespace) return await inUserNamespace;
  // SIGINT/SIGTERM from here on stop the guest (or, during setup, the run as soon
  // as the guest exists), so the sandbox and the TAP are always cleaned up.
  const signals: SignalState = { vm: undefined, signal: undefined };
  const onSignal = (sig: NodeJS.Signals) => {
    signals.signal ??= sig;
    void signals.vm?.stop();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // The last resort: an exception nothing caught (a bug in tsvisor) stops the
  // guest as a signal does, so the terminal is restored and the sandbox deleted.
  const onBug = (e: unknown) => {
    signals.bug ??= e;
    signals.vm?.stopOnBug(e, 'the main thread');
  };
  process.on('uncaughtException', onBug);
  process.on('unhandledRejection', onBug);
  let sandbox: Sandbox | undefined;
  try {
    if (netSpec) {
      // The sandbox's TAP is made here, so with as many queues as the NIC will have pairs.
      if (netSpec.mode === 'sandbox') sandbox = Sandbox.create(netSpec.queues ?? defaultQueuePairs(cpus));
      const onBackendLost = (message: string) => process.stderr.write(`\ntsvisor: TAP ${message}\n`);
      opts.net = { tap: sandbox ? sandbox.tap : netSpec.ifname ?? 'tap%d', mac: netSpec.mac, queues: netSpec.queues, txBurst, ioeventfd: values.ioeventfd, onBackendLost };
    }
    const vm = await Vm.boot(opts);
    signals.vm = vm;
    if (signals.signal) void vm.stop();
    if (signals.bug !== undefined) vm.stopOnBug(signals.bug, 'the main thread');
    return await supervise(vm, values, profileMs, systemMap, sandbox, command !== undefined, signals);
  } finally {
    sandbox?.close();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.off('uncaughtException', onBug);
    process.off('unhandledRejection', onBug);
  }
}

/** The first SIGINT/SIGTERM of a run, and the guest it stops. */
interface SignalState {
  vm: Vm | undefined;
  signal: NodeJS.Signals | undefined;
  /** The first exception nothing caught, if one came before the guest existed. */
  bug?: unknown;
}

async function supervise(vm: Vm, values: { verbose?: boolean; stats?: boolean; 'stats-json'?: string }, profileMs: number | undefined, systemMap: string | undefined, sandbox: Sandbox | undefined, commandMode: boolean, signals: SignalState): Promise<number> {
  if (values.verbose) {
    const i = vm.info;
    process.stderr.write(`tsvisor: ${i.format}${i.compression ? ` (${i.compression} payload, decompressed on the host)` : ''}, ${i.memMiB} MiB, host ${i.hostKind}\n`);
    process.stderr.write(`tsvisor: command line: ${i.cmdline}\n`);
    if (i.hostParams.length) process.stderr.write(`tsvisor: host parameters (--host-params to change): ${i.hostParams.join(' ')}\n`);
  }
  const ready = vm.console.waitFor(new RegExp(GUEST_READY_MARKER), { fromStart: true });
  ready.catch(() => {});
  if (sandbox && (!commandMode || values.verbose)) {
    process.stderr.write(`tsvisor: ${sandbox.describe()}\n`);
  }
  const noPing = sandbox && !commandMode ? ensureHostTool('ping', 'iputils-ping', (l) => process.stderr.write(`tsvisor: ${l}\n`), process.getuid?.() === 0 && !insideOwnUserNamespace()) : null;
  if (noPing) process.stderr.write(`tsvisor: the host → guest ping is skipped: ${noPing}\n`);
  if (sandbox && !commandMode && !noPing) {
    // Once the guest is up, show the host reaching it.
    ready.then(async () => {
      const r = await sandbox.pingGuest(3);
      process.stderr.write(`\r\ntsvisor: host → guest ping ${r.ok ? 'answered' : 'FAILED'}: ${r.summary}\r\n`);
    }, () => {});
  }
  // A command run hides the boot (unless --verbose): say that it is happening.
  const stopProgress = commandMode && !values.verbose ? showBootProgress(vm, ready) : () => {};
  const restoreTerminal = commandMode ? streamCommandOutput(vm, values.verbose === true, stopProgress) : attachTerminal(vm);
  let exit: VmExit;
  try {
    exit = await vm.exited;
  } finally {
    stopProgress();
    restoreTerminal();
  }
  const signalled = exit.kind === 'stopped' ? signals.signal : undefined;
  const quietEnd = ['reset', 'poweroff', 'debug-exit', 'stopped', 'command'];
  if (signalled) {
    process.stderr.write(`\ntsvisor: ${signalled} received: guest stopped\n`);
  } else if (!quietEnd.includes(exit.kind) || values.verbose) {
    process.stderr.write(`${commandMode ? '' : '\n'}tsvisor: ${exit.reason}\n`);
  }
  if (values.stats) process.stderr.write(formatStats(exit.stats) + (exit.net ? formatNetStats(exit.net) : ''));
  if (values['stats-json']) writeFileSync(values['stats-json'], JSON.stringify({ status: exit.status, kind: exit.kind, reason: exit.reason, stats: exit.stats, net: exit.net }, null, 2));
  if (profileMs && exit.stats.ripSamples) process.stderr.write(topSymbols(exit.stats.ripSamples, systemMap));
  if (signalled) return 128 + (signalled === 'SIGINT' ? 2 : 15);
  return exit.status;
}

/**
 * While the guest boots, a line on a terminal's stderr that counts the
 * seconds (a kernel under kvm_pvm's emulator takes tens of them). Returns the undo.
 */
function showBootProgress(vm: Vm, ready: Promise<unknown>): () => void {
  if (!process.stderr.isTTY) return () => {};
  const t0 = Date.now();
  let shown = false;
  const clear = () => {
    if (shown) process.stderr.write('\r\x1b[K');
    shown = false;
  };
  const tick = setInterval(() => {
    process.stderr.write(`\r\x1b[Ktsvisor: booting the guest (${vm.info.hostKind}), ${Math.round((Date.now() - t0) / 1000)} s`);
    shown = true;
  }, 1000);
  const stop = () => {
    clearInterval(tick);
    clear();
  };
  ready.then(stop, stop);
  return stop;
}

/**
 * A command run's output: the guest's console from the line after the ready
 * marker on goes to stdout, as the guest prints it; the boot before it goes to
 * stderr with --verbose and nowhere otherwise. Returns the undo.
 */
function streamCommandOutput(vm: Vm, verbose: boolean, onReady: () => void): () => void {
  const marker = Buffer.from(GUEST_READY_MARKER + '\n');
  let pending: Buffer | null = Buffer.alloc(0);
  const onData = (b: Buffer) => {
    if (pending === null) {
      process.stdout.write(b);
      return;
    }
    pending = Buffer.concat([pending, b]);
    const at = pending.indexOf(marker);
    if (at < 0) {
      // Keep only what could still be the start of the marker.
      const keep = Math.max(0, pending.length - marker.length);
      if (verbose) process.stderr.write(pending.subarray(0, keep));
      pending = pending.subarray(keep);
      return;
    }
    if (verbose) process.stderr.write(pending.subarray(0, at + marker.length));
    const rest = pending.subarray(at + marker.length);
    pending = null;
    onReady();
    if (rest.length) process.stdout.write(rest);
  };
  vm.console.on('data', onData);
  return () => {
    vm.console.off('data', onData);
    if (pending?.length && verbose) process.stderr.write(pending);
  };
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
