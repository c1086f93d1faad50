// Test doubles for the virtio-net data path: guest RAM backed by a real
// mapping (so iovecs carry real host addresses), a packet backend made of an
// AF_UNIX SOCK_SEQPACKET socketpair (one message = one frame, like a TAP fd,
// and a real fd the main loop can watch for readable/writable), and an
// interrupt sink that counts.
import koffi from 'koffi';
import { GuestMemory } from '../../src/memory/guest-memory.js';
import * as libc from '../../src/sys/libc.js';
import type { NetBackend } from '../../src/net/tap.js';
import type { NetInterrupts } from '../../src/devices/net/virtio-net.js';
import type { MainLoop } from '../../src/loop/main-loop.js';

const lib = koffi.load('libc.so.6');
const socketpairRaw = lib.func('int socketpair(int domain, int type, int protocol, _Out_ int *sv)') as (d: number, t: number, p: number, sv: number[]) => number;
const setsockoptRaw = lib.func('int setsockopt(int fd, int level, int name, uintptr_t val, unsigned int len)') as (fd: number, level: number, name: number, val: bigint, len: number) => number;

const AF_UNIX = 1;
const SOCK_SEQPACKET = 5;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_SNDBUF = 7;

/** Guest RAM of `size` bytes at GPA 0 in an anonymous mapping. */
export function nativeGuestMemory(size: number): { mem: GuestMemory; free: () => void } {
  const addr = libc.mmap(size, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS);
  const mem = new GuestMemory([{ gpa: 0, bytes: new Uint8Array(libc.view(addr, size)), hostAddress: addr }]);
  return { mem, free: () => libc.munmap(addr, size) };
}

/** A NetBackend over one end of a SEQPACKET socketpair; the test plays the host network at the other end. */
export class SocketBackend implements NetBackend {
  readonly name = 'socketpair';
  readonly fd: number;
  readonly peer: number;
  supportedOffloads = 0x1f;
  hdrLen = 10;
  offload = 0;
  hdrLenCalls: number[] = [];
  /** When set, writev calls this first; a number it returns replaces the call's result. */
  writeHook: ((iov: bigint, n: number) => number | undefined) | null = null;
  private readonly buf = new libc.NativeBuffer(70000);
  private readonly iov = new libc.NativeBuffer(16);
  private closed = false;
  /** A multi-queue backend's queues 1… (SocketBackend.multiQueue). */
  moreQueues?: SocketBackend[];
  /** What the device last asked of this queue (setQueueEnabled); a TAP steers no frame to a disabled queue. */
  enabled = true;

  /** A backend of `queues` queues, a socketpair each, as a multi-queue TAP has an fd per queue. */
  static multiQueue(queues: number, opts: { sndbuf?: number } = {}): SocketBackend {
    const b = new SocketBackend(opts);
    b.moreQueues = Array.from({ length: queues - 1 }, () => new SocketBackend(opts));
    return b;
  }

  /** Queue `q` (0: this one). */
  queue(q: number): SocketBackend {
    return q === 0 ? this : this.moreQueues![q - 1];
  }

  setQueueEnabled(on: boolean): void {
    this.enabled = on;
  }

  constructor(opts: { sndbuf?: number } = {}) {
    const sv = [-1, -1];
    if (socketpairRaw(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) throw new Error(`socketpair: errno ${libc.errno()}`);
    this.fd = sv[0];
    this.peer = sv[1];
    if (opts.sndbuf !== undefined) {
      const b = new libc.NativeBuffer(4);
      b.dv.setInt32(0, opts.sndbuf, true);
      if (setsockoptRaw(this.fd, SOL_SOCKET, SO_SNDBUF, b.address, 4) < 0) throw new Error(`setsockopt: errno ${libc.errno()}`);
    }
  }

  readv(iov: bigint, n: number): number {
    const r = libc.readv(this.fd, iov, n);
    return r >= 0 ? r : -libc.errno();
  }

  writev(iov: bigint, n: number): number {
    if (this.writeHook) {
      const r = this.writeHook(iov, n);
      if (r !== undefined) return r;
    }
    const r = libc.writev(this.fd, iov, n);
    return r >= 0 ? r : -libc.errno();
  }

  setVnetHdrLen(len: number): void {
    this.hdrLen = len;
    this.hdrLenCalls.push(len);
  }

  setOffload(flags: number): void {
    this.offload = flags;
  }

  /** One frame the device sent, or null when none waits. */
  receive(): Uint8Array | null {
    const n = libc.read(this.peer, this.buf.address, this.buf.size);
    if (n < 0) return null;
    return this.buf.bytes.slice(0, n);
  }

  /** Everything waiting at the peer. */
  receiveAll(): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (let f = this.receive(); f !== null; f = this.receive()) out.push(f);
    return out;
  }

  /** Sends one frame (vnet header included) towards the device. Returns bytes or -errno. */
  send(frame: Uint8Array): number {
    this.buf.bytes.set(frame, 0);
    this.iov.dv.setBigUint64(0, this.buf.address, true);
    this.iov.dv.setBigUint64(8, BigInt(frame.length), true);
    const r = libc.writev(this.peer, this.iov.address, 1);
    return r >= 0 ? r : -libc.errno();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const q of this.moreQueues ?? []) q.close();
    libc.close(this.fd);
    libc.close(this.peer);
  }
}

export class CountingIrq implements NetInterrupts {
  /** Interrupts per queue index. */
  queue: number[] = new Array<number>(33).fill(0);
  config = 0;
  resets = 0;
  sendQueueInterrupt(q: number): void {
    this.queue[q]++;
  }
  sendConfigInterrupt(): void {
    this.config++;
  }
  needsReset(): void {
    this.resets++;
  }
}

/** Resolves when `cond()` holds, polling every millisecond (the main loop runs in between). */
export async function until(cond: () => boolean, timeoutMs = 2000, what = 'condition'): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

/**
 * Resolves once the main loop has nothing left to do: no bottom half pending,
 * no watched fd ready (MainLoop.isIdle). Everything asked of the device before
 * the call has then been done; the loop runs between checks.
 */
export async function settled(loop: MainLoop, timeoutMs = 5000): Promise<void> {
  await until(() => loop.isIdle(), timeoutMs, 'the main loop to go idle');
}

/** An Ethernet frame: dst, src, ethertype, payload of `len` bytes with a counting pattern. */
export function ethFrame(dst: number[], src: number[], type: number, len: number, seed = 0): Uint8Array {
  const f = new Uint8Array(14 + len);
  f.set(dst, 0);
  f.set(src, 6);
  f[12] = type >> 8;
  f[13] = type & 0xff;
  for (let i = 0; i < len; i++) f[14 + i] = (i + seed) & 0xff;
  return f;
}

/** `frame` with a zeroed virtio-net header of `hdrLen` bytes in front. */
export function withHeader(frame: Uint8Array, hdrLen: number): Uint8Array {
  const out = new Uint8Array(hdrLen + frame.length);
  out.set(frame, hdrLen);
  return out;
}
