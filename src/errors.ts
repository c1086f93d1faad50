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
