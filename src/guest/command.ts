// A command run in the guest (`tsvisor run -- COMMAND`, `BootOptions.command`):
// the guest's /init runs it and writes its exit status to the debug-exit port,
// which ends the run with that status. Every other way such a run can end gets
// a status of its own (COMMAND_EXIT).
import { GUEST_READY_MARKER } from './default-guest.js';
import { COMMAND_EXIT, type ExitKind } from '../vcpu/protocol.js';

export { COMMAND_EXIT };

/** guest/init's console line when the debug-exit port could not be written. */
const CONSOLE_EXIT_RE = /^tsvisor-guest: exit (\d+)\r?$/m;

/** Printed by Linux when it panics, on the console. */
export const PANIC_RE = /Kernel panic - not syncing/;

/**
 * The command line for the guest's `sh -c`: one argument is taken as a shell
 * command as it is (`-- 'make && ./test'`), several are quoted word by word
 * (`-- sh -c 'exit 7'`).
 */
export function shellCommand(argv: string[]): string {
  if (argv.length === 1) return argv[0];
  return argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

export interface CommandEnd {
  kind: ExitKind;
  status: number;
  reason: string;
}

/**
 * How a command run ended, from how the vCPU's run ended and what the guest
 * printed on its console: the command's status when the guest reported one
 * (the debug-exit port), else the status of what happened instead.
 */
export function commandEnd(kind: ExitKind, code: number | undefined, reason: string, consoleText: string): CommandEnd {
  if (kind === 'debug-exit') {
    const status = (code ?? 0) & 0xff;
    return { kind: 'command', status, reason: `the command exited with status ${status}` };
  }
  // A kernel without /dev/port (Debian's cloud kernel) cannot reach the port:
  // init then says the status on the console, its last line before powering off.
  const said = kind !== 'timeout' && kind !== 'stopped' && kind !== 'vmm-bug' ? CONSOLE_EXIT_RE.exec(consoleText) : null;
  if (said) {
    const status = Number(said[1]) & 0xff;
    return { kind: 'command', status, reason: `the command exited with status ${status} (reported on the console; then ${reason})` };
  }
  if (PANIC_RE.test(consoleText)) {
    const line = /Kernel panic - not syncing:?[^\r\n]*/.exec(consoleText)?.[0] ?? 'Kernel panic';
    return { kind: 'panic', status: COMMAND_EXIT.panic, reason: `the guest kernel panicked: ${line.trim()}` };
  }
  const initRan = consoleText.includes(GUEST_READY_MARKER);
  switch (kind) {
    case 'timeout':
      return { kind, status: COMMAND_EXIT.timeout, reason: `${reason}${initRan ? ', while the command ran' : ', before the guest reached init'}` };
    case 'triple-fault':
    case 'emulation-failure':
    case 'internal-error':
    case 'error':
    case 'vmm-bug':
      return { kind, status: COMMAND_EXIT.failure, reason };
    default:
      if (!initRan) return { kind: 'no-init', status: COMMAND_EXIT.noInit, reason: `the guest never reached init (${reason})` };
      return { kind: 'no-status', status: COMMAND_EXIT.noStatus, reason: `the guest ended without the command's status (${reason})` };
  }
}
