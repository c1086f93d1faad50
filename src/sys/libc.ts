// The libc calls tsvisor makes, through koffi. Every call that takes memory
// takes it as an address (uintptr_t): structs live in native memory from
// `NativeBuffer`, so nothing is copied across the FFI boundary and one fixed
// ioctl prototype serves every request (the variadic form is slower and noisier).
import koffi from 'koffi';
import { isMainThread } from 'node:worker_threads';

// koffi gives each thread's instance a call stack and heap (1 + 2 MiB by
// default) that it never frees when a worker ends: every VM's vCPU thread
// would leave 3 MiB of address space behind. tsvisor's calls pass addresses
// and a few short strings, so small ones do.
if (!isMainThread) koffi.config({ sync_stack_size: 64 * 1024, sync_heap_size: 64 * 1024 });

const lib = koffi.load('libc.so.6');

export const open = lib.func('int open(const char *path, int flags, int mode)') as (path: string, flags: number, mode: number) => number;
export const close = lib.func('int close(int fd)') as (fd: number) => number;
export const ioctl = lib.func('int ioctl(int fd, unsigned long request, uintptr_t arg)') as (fd: number, request: number, arg: bigint | number) => number;
export const read = lib.func('intptr_t read(int fd, uintptr_t buf, size_t count)') as (fd: number, buf: bigint, count: number) => number;
export const write = lib.func('intptr_t write(int fd, uintptr_t buf, size_t count)') as (fd: number, buf: bigint, count: number) => number;
export const readv = lib.func('intptr_t readv(int fd, uintptr_t iov, int iovcnt)') as (fd: number, iov: bigint, iovcnt: number) => number;
export const writev = lib.func('intptr_t writev(int fd, uintptr_t iov, int iovcnt)') as (fd: number, iov: bigint, iovcnt: number) => number;
export const socket = lib.func('int socket(int domain, int type, int protocol)') as (domain: number, type: number, protocol: number) => number;
export const eventfd = lib.func('int eventfd(unsigned int initval, int flags)') as (initval: number, flags: number) => number;
export const fcntl = lib.func('int fcntl(int fd, int cmd, int arg)') as (fd: number, cmd: number, arg: number) => number;
export const poll = lib.func('int poll(uintptr_t fds, unsigned long nfds, int timeout)') as (fds: bigint, nfds: number, timeout: number) => number;
// koffi returns 64-bit integers as a Number when they fit in 53 bits, else a BigInt.
const mmapRaw = lib.func('uintptr_t mmap(uintptr_t addr, size_t length, int prot, int flags, int fd, intptr_t offset)') as (addr: bigint, len: number, prot: number, flags: number, fd: number, off: number) => bigint | number;
export const munmap = lib.func('int munmap(uintptr_t addr, size_t length)') as (addr: bigint, len: number) => number;
export const madvise = lib.func('int madvise(uintptr_t addr, size_t length, int advice)') as (addr: bigint, len: number, advice: number) => number;
const strerrorRaw = lib.func('const char *strerror(int errnum)') as (e: number) => string;

export const O_RDONLY = 0;
export const O_RDWR = 2;
export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;
export const POLLIN = 0x1;
export const POLLOUT = 0x4;
export const F_GETFL = 3;
export const F_SETFL = 4;
export const PROT_READ = 1;
export const PROT_WRITE = 2;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MADV_DONTNEED = 4;
export const MADV_MERGEABLE = 12;
export const AF_INET = 2;
export const SOCK_DGRAM = 2;
export const SOCK_CLOEXEC = 0o2000000;
export const EFD_NONBLOCK = 0o4000;
export const EFD_CLOEXEC = 0o2000000;

export const EINTR = 4;
export const EAGAIN = 11;
export const ENOENT = 2;
export const EACCES = 13;
export const EPERM = 1;
export const EBUSY = 16;
export const EINVAL = 22;
export const ENODEV = 19;
export const ENXIO = 6;
export const EFAULT = 14;
/** A tun fd whose interface was deleted: reads, writes and ioctls fail with it. */
export const EBADFD = 77;

const MAP_FAILED = (1n << 64n) - 1n;

export function errno(): number {
  return koffi.errno();
}

export function strerror(e: number): string {
  return strerrorRaw(e);
}

/** A failed system call: keeps errno so callers can tell EAGAIN from a real error. */
export class SyscallError extends Error {
  constructor(readonly call: string, readonly errno: number) {
    super(`${call}: ${strerror(errno)} (errno ${errno})`);
  }
}

export function mmap(len: number, prot: number, flags: number, fd = -1, offset = 0): bigint {
  const addr = BigInt(mmapRaw(0n, len, prot, flags, fd, offset));
  if (addr === MAP_FAILED) throw new SyscallError('mmap', errno());
  return addr;
}

/** A view of native memory at `address` (no copy). */
export function view(address: bigint, length: number): ArrayBuffer {
  return koffi.view(address, length);
}

/**
 * Native memory for ioctl arguments and iovecs: an anonymous mapping with a
 * DataView over it and its address for system calls. Allocated once, reused.
 */
// Native memory is not V8's: a NativeBuffer's pages are unmapped when its
// owner calls release(), else when the ArrayBuffer over them is collected
// (nothing can reach the pages then). A thread that ends (the vCPU worker)
// gets no finalizers, so it tracks its buffers and releases them all itself.
const unmapWhenCollected = new FinalizationRegistry<{ address: bigint; bytes: number }>((m) => munmap(m.address, m.bytes));
let threadBuffers: Set<NativeBuffer> | null = null;

/** From now on this thread's NativeBuffers are released by releaseThreadBuffers() (a thread about to end). */
export function trackThreadBuffers(): void {
  threadBuffers ??= new Set();
}

/** Unmaps every NativeBuffer this thread made since trackThreadBuffers(); none may be used afterwards. */
export function releaseThreadBuffers(): void {
  for (const b of [...(threadBuffers ?? [])]) b.release();
}

export class NativeBuffer {
  readonly address: bigint;
  readonly bytes: Uint8Array;
  readonly dv: DataView;

  constructor(readonly size: number) {
    const mapped = (size + 4095) & ~4095;
    this.mapped = mapped;
    this.address = mmap(mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS);
    const ab = view(this.address, mapped);
    this.bytes = new Uint8Array(ab, 0, size);
    this.dv = new DataView(ab, 0, size);
    if (threadBuffers) threadBuffers.add(this);
    else unmapWhenCollected.register(ab, { address: this.address, bytes: mapped }, this);
  }

  /** The address of byte `offset` inside this buffer. */
  at(offset: number): bigint {
    return this.address + BigInt(offset);
  }

  clear(): void {
    this.bytes.fill(0);
  }

  /**
   * Unmaps the buffer. Only its owner calls this, once nothing uses it: any
   * access through `bytes` or `dv` afterwards faults (it is not GC memory).
   */
  release(): void {
    if (this.released) return;
    this.released = true;
    unmapWhenCollected.unregister(this);
    threadBuffers?.delete(this);
    munmap(this.address, this.mapped);
  }

  private released = false;
  /** Bytes mapped: `size` rounded up to whole pages. */
  private readonly mapped: number;
}
