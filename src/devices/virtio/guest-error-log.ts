// One rate-limited line per refused guest value (a bad ring, a register write
// the transport ignored, a feature set it refused). A hostile guest can fail
// thousands of times a second: the host must learn what was refused without
// the guest flooding the terminal. Per device, at most `burst` lines per
// `intervalMs` window; what is left out is counted and summarised as one
// "(K more suppressed)" line when the next window opens, or on flush().
//
// The check costs a clock read and a compare: callers on the exit path use
// `if (log.admit()) log.write(\`...\`)`, so a suppressed event builds no string.

/** Where lines go (stderr by default; tests count them). */
export type LogSink = (line: string) => void;

const stderrSink: LogSink = (line) => {
  process.stderr.write(`tsvisor: ${line}\n`);
};

export interface GuestErrorLogOptions {
  /** Lines per window, default 5. */
  burst?: number;
  /** Window length, default 1000 ms. */
  intervalMs?: number;
  sink?: LogSink;
  /** Clock, for tests. */
  now?: () => number;
}

export class GuestErrorLog {
  /** Lines written (summaries included). */
  printed = 0;
  /** Events left out, in all. */
  suppressed = 0;
  private readonly burst: number;
  private readonly intervalMs: number;
  private readonly now: () => number;
  sink: LogSink;
  private windowStart = -Infinity;
  private inWindow = 0;
  /** Left out since the last summary. */
  private pending = 0;

  constructor(readonly device: string, opts: GuestErrorLogOptions = {}) {
    this.burst = opts.burst ?? 5;
    this.intervalMs = opts.intervalMs ?? 1000;
    this.sink = opts.sink ?? stderrSink;
    this.now = opts.now ?? Date.now;
  }

  /** True when a line may be written now (then call write()); otherwise the event is counted as suppressed. */
  admit(): boolean {
    const now = this.now();
    if (now - this.windowStart >= this.intervalMs) {
      this.windowStart = now;
      this.inWindow = 0;
      this.summarise();
    }
    if (this.inWindow < this.burst) {
      this.inWindow++;
      return true;
    }
    this.pending++;
    this.suppressed++;
    return false;
  }

  /** Writes one line naming the device; call only after admit() returned true. */
  write(what: string): void {
    this.printed++;
    this.sink(`${this.device}: ${what}`);
  }

  /** admit() and write() in one, for paths where building `what` costs nothing that matters. */
  report(what: string): void {
    if (this.admit()) this.write(what);
  }

  /** Writes the summary of what was left out, if anything (at the end of a run). */
  flush(): void {
    this.summarise();
  }

  private summarise(): void {
    if (this.pending === 0) return;
    const n = this.pending;
    this.pending = 0;
    this.inWindow++;
    this.write(`(${n} more refused guest value${n === 1 ? '' : 's'} suppressed)`);
  }
}
