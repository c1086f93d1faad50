// The guest's serial console as the host sees it: what the guest printed (kept
// for `waitFor`), streamed to listeners such as the terminal, and a way to type.
import { EventEmitter } from 'node:events';
import { TsvisorError } from './errors.js';

/** Keep at most this much console history for matching. */
const HISTORY_LIMIT = 8 * 1024 * 1024;

export class GuestConsole extends EventEmitter {
  private history = '';
  private dropped = 0;
  private waiters = new Set<{ re: RegExp; from: number; resolve: (m: RegExpMatchArray) => void; check: () => void }>();

  constructor(private readonly input: (bytes: Uint8Array) => void) {
    super();
    this.setMaxListeners(0);
  }

  /** Everything the guest printed (the last 8 MiB). */
  get output(): string {
    return this.history;
  }

  /** Main thread: bytes from the guest. */
  feed(bytes: Buffer): void {
    if (bytes.length === 0) return;
    this.emit('data', bytes);
    this.history += bytes.toString('latin1');
    if (this.history.length > HISTORY_LIMIT) {
      const cut = this.history.length - HISTORY_LIMIT;
      this.history = this.history.slice(cut);
      this.dropped += cut;
    }
    for (const w of this.waiters) w.check();
  }

  /** Types `text` on the guest's console. */
  write(text: string | Uint8Array): void {
    this.input(typeof text === 'string' ? Buffer.from(text, 'utf8') : text);
  }

  /**
   * Resolves with the first match of `re` in output printed from now on (or,
   * with `fromStart`, since boot). Rejects after `timeoutMs`, or when the run ends.
   */
  waitFor(re: RegExp, opts: { timeoutMs?: number; fromStart?: boolean } = {}): Promise<RegExpMatchArray> {
    const from = opts.fromStart ? 0 : this.dropped + this.history.length;
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const w = {
        re, from, resolve,
        check: () => {
          const start = Math.max(0, w.from - this.dropped);
          const m = this.history.slice(start).match(re);
          if (m) {
            this.waiters.delete(w);
            if (timer) clearTimeout(timer);
            this.off('end', onEnd);
            resolve(m);
          }
        },
      };
      const onEnd = (reason: string) => {
        if (!this.waiters.has(w)) return;
        this.waiters.delete(w);
        if (timer) clearTimeout(timer);
        reject(new TsvisorError(`console never printed ${re} (${reason}); its last line: ${JSON.stringify(this.lastLine())}`));
      };
      if (opts.timeoutMs !== undefined) {
        timer = setTimeout(() => onEnd(`timed out after ${opts.timeoutMs} ms`), opts.timeoutMs);
      }
      this.once('end', onEnd);
      this.waiters.add(w);
      w.check();
    });
  }

  /** The last non-empty line the guest printed, where a failed wait says the guest was. */
  lastLine(): string {
    const lines = this.history.slice(-4096).split(/\r?\n/).filter((l) => l.trim() !== '');
    return lines.at(-1)?.slice(0, 200) ?? '';
  }

  /** Main thread: the run is over; pending waits fail. */
  end(reason: string): void {
    this.emit('end', reason);
  }
}
