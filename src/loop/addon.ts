// The main loop's view of the native addon: fd readiness (addon/src/fd-watch.cc).
import { native } from '../native.js';

/** Readiness callback: (readable, writable, error). An error reports both readable and writable. */
export type FdWatchCallback = (readable: boolean, writable: boolean, error: boolean) => void;

/** A libuv uv_poll_t on one fd (addon/src/fd-watch.cc). It does not own the fd. */
export interface FdWatch {
  /** (Re)arms the watch for the given events; (false, false) stops it. An armed watch keeps Node alive. */
  start(readable: boolean, writable: boolean): void;
  /** Disarms the watch (it can be started again). */
  stop(): void;
  /** Stops and releases the libuv handle; the object is dead afterwards. */
  close(): void;
}

export interface FdWatchClass {
  new (fd: number, callback: FdWatchCallback): FdWatch;
}

export const FdWatch: FdWatchClass = native().FdWatch;
