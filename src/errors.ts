// Errors a user can cause (bad arguments, missing files, no /dev/kvm). The CLI
// renders them as one line naming the problem and the fix, with exit code 2 for
// usage errors and 1 for runtime failures. Errors a guest causes never become
// exceptions: devices record them and go on.
export class TsvisorError extends Error {
  constructor(
    message: string,
    readonly exitCode: 1 | 2 = 1,
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'TsvisorError';
  }

  /** The one line the CLI prints. */
  get line(): string {
    return this.hint ? `${this.message} (${this.hint})` : this.message;
  }
}

/** A usage error: exit status 2. */
export function usageError(message: string, hint?: string): TsvisorError {
  return new TsvisorError(message, 2, hint);
}

/**
 * One line for an exception that is a bug in tsvisor: its message and the
 * innermost frame in tsvisor's own code, so a report can name where it was.
 */
export function describeBug(e: unknown): string {
  if (!(e instanceof Error)) return String(e);
  const frames = (e.stack ?? '').split('\n').slice(1).map((l) => l.trim());
  const own = frames.find((f) => /\/(src|dist)\//.test(f) && !f.includes('node_modules')) ?? frames[0];
  const where = own ? /\(?([^()\s]+:\d+):\d+\)?$/.exec(own)?.[1] : undefined;
  const message = `${e.name}: ${e.message}`.replace(/\s*\n\s*/g, ' ');
  return where ? `${message} (at ${where.replace(/^.*\/(src|dist)\//, '$1/')})` : message;
}

/** How a run that a bug in tsvisor stopped is reported: one line, `where` the exception was thrown. */
export function bugReport(where: string, e: unknown): string {
  return `internal error in ${where}: ${describeBug(e)} (a bug in tsvisor; the guest was stopped)`;
}
