// The TAP backend (QEMU net/tap-linux.c + net/tap.c, Firecracker net/tap.rs):
// a Linux TAP interface opened through /dev/net/tun with IFF_VNET_HDR, so every
// frame crossing the fd carries a virtio-net header of the size the guest uses
// and packets move straight between guest memory and the fd with readv/writev.
//
// Creating a TAP needs CAP_NET_ADMIN; attaching to an existing persistent TAP
// the user owns does not. Errors a user can cause become one-line TsvisorErrors.
//
// The data path (readv/writev) allocates nothing and returns -errno instead of
// throwing, so EAGAIN costs a compare, not an exception.
import { TsvisorError } from '../errors.js';
import {
  NativeBuffer,
  close as libcClose,
  errno,
  ioctl,
  open as libcOpen,
  readv as libcReadv,
  strerror,
  writev as libcWritev,
  EACCES,
  EBADFD,
  EBUSY,
  EINVAL,
  ENODEV,
  ENOENT,
  ENXIO,
  EPERM,
  O_CLOEXEC,
  O_NONBLOCK,
  O_RDWR,
  socket,
  AF_INET,
  SOCK_DGRAM,
  SOCK_CLOEXEC,
} from '../sys/libc.js';

// ---- <linux/if_tun.h> ----
const IOC_WRITE = 1, IOC_READ = 2;
function tunIoc(dir: number, nr: number, size: number): number {
  return ((dir << 30) | (size << 16) | (0x54 /* 'T' */ << 8) | nr) >>> 0;
}
export const TUNSETIFF = tunIoc(IOC_WRITE, 202, 4);
export const TUNSETPERSIST = tunIoc(IOC_WRITE, 203, 4);
export const TUNGETFEATURES = tunIoc(IOC_READ, 207, 4);
export const TUNSETOFFLOAD = tunIoc(IOC_WRITE, 208, 4);
export const TUNGETIFF = tunIoc(IOC_READ, 210, 4);
export const TUNSETSNDBUF = tunIoc(IOC_WRITE, 212, 4);
export const TUNGETVNETHDRSZ = tunIoc(IOC_READ, 215, 4);
export const TUNSETVNETHDRSZ = tunIoc(IOC_WRITE, 216, 4);
export const TUNSETQUEUE = tunIoc(IOC_WRITE, 217, 4);
/** <linux/sockios.h>: interface flags by name, on any socket of the interface's namespace. */
const SIOCGIFFLAGS = 0x8913;

export const IFF_TUN = 0x0001;
export const IFF_TAP = 0x0002;
export const IFF_NO_PI = 0x1000;
export const IFF_ONE_QUEUE = 0x2000;
export const IFF_VNET_HDR = 0x4000;
export const IFF_MULTI_QUEUE = 0x0100;
export const IFF_ATTACH_QUEUE = 0x0200;
export const IFF_DETACH_QUEUE = 0x0400;

// TUNSETOFFLOAD flags: what the kernel may hand us (and so the guest) on RX.
export const TUN_F_CSUM = 0x01;
export const TUN_F_TSO4 = 0x02;
export const TUN_F_TSO6 = 0x04;
export const TUN_F_TSO_ECN = 0x08;
export const TUN_F_UFO = 0x10;

/** <linux/if.h> IFNAMSIZ: names are at most 15 bytes plus the NUL. */
export const IFNAMSIZ = 16;
/** sizeof(struct ifreq) on x86-64. */
const IFREQ_SIZE = 40;
const IFREQ_FLAGS = 16;
/** IFF_UP in the interface flags (sysfs `flags`). */
const IFF_UP = 0x1;
/** INT_MAX: TUNSETSNDBUF with it means "no limit" (tun's default is INT_MAX too, a persistent TAP may carry less). */
const SNDBUF_UNLIMITED = 0x7fffffff;

/**
 * What the virtio-net device needs from a packet backend: frames with a
 * virtio-net header of `vnetHdrLen` bytes, moved by readv/writev over iovec
 * arrays in native memory. Tap implements it; tests use socketpairs.
 */
export interface NetBackend {
  readonly name: string;
  /** The fd the main loop watches (readable: frames waiting; writable: room again after EAGAIN). */
  readonly fd: number;
  /** TUN_F_* bits the backend accepts in setOffload. */
  readonly supportedOffloads: number;
  /** Reads one frame (header included). Bytes read, 0 at EOF, or -errno (-EAGAIN when nothing waits). */
  readv(iov: bigint, iovcnt: number): number;
  /** Writes one frame (header included). Bytes written, or -errno (-EAGAIN: try again when writable). */
  writev(iov: bigint, iovcnt: number): number;
  /** Sets the virtio-net header size both directions use (10 or 12). */
  setVnetHdrLen(len: number): void;
  /** Sets which offloads may arrive on RX (TUN_F_*). */
  setOffload(flags: number): void;
  /** Whether the host side of the link is up; null when unknown. */
  hostUp?(): boolean | null;
  /** False once the interface is gone for good (a TAP deleted under its open fd). */
  attached?(): boolean;
  /**
   * A multi-queue backend's other queues, one per further virtio-net queue
   * pair (the TAP's IFF_MULTI_QUEUE fds 1…); closed with this one. Header
   * size and offloads are the interface's, set through this first queue.
   */
  readonly moreQueues?: readonly NetBackend[];
  /** Lets this queue carry frames or not (a queue pair the guest has not enabled carries none). */
  setQueueEnabled?(on: boolean): void;
  close(): void;
}

export interface TapOptions {
  /** Initial header size, default 10 (the device sets 12 once VERSION_1 or MRG_RXBUF is negotiated). */
  vnetHdrLen?: number;
  /** Queues (fds) to open: more than 1 opens the TAP with IFF_MULTI_QUEUE, one fd per virtio-net queue pair. Default 1. */
  queues?: number;
  /** Leave the send buffer as it is instead of making it unlimited. */
  keepSndbuf?: boolean;
}

// fcntl(F_SETFL) is not needed: open() takes O_NONBLOCK directly.

function tapError(name: string, what: string, e: number, queues = 1): TsvisorError {
  const multi = queues > 1;
  const pre = `ip tuntap add dev ${name} mode tap user $USER vnet_hdr${multi ? ' multi_queue' : ''}`;
  switch (e) {
    case EPERM:
      return new TsvisorError(
        `cannot use TAP ${name}: creating a TAP needs CAP_NET_ADMIN, which this process lacks, and attaching to an existing one needs you to own it`,
        1,
        `run as root or grant CAP_NET_ADMIN, or pre-create a TAP you own: ${pre}`,
      );
    case EBUSY:
      return new TsvisorError(`TAP ${name} is busy: another process has it open`, 1, 'stop the other VMM or pick another --net tap name');
    case EINVAL:
      return new TsvisorError(
        multi
          ? `cannot open TAP ${name} with ${queues} queues: it exists but is not a multi-queue TAP interface`
          : `cannot use ${name} as a TAP: it exists but is not a single-queue TAP interface`,
        1,
        `${multi ? 'give the NIC one queue pair (queues=1), or pick another name, or recreate it' : 'pick another name or recreate it'}: ip link del ${name}; ${pre}`,
      );
    case ENOENT:
    case ENODEV:
    case ENXIO:
      return new TsvisorError('/dev/net/tun is missing: the kernel has no TUN/TAP support loaded', 1, 'modprobe tun');
    case EACCES:
      return new TsvisorError('/dev/net/tun is not accessible', 1, `run as root, or make /dev/net/tun accessible and pre-create the TAP: ${pre}`);
    default:
      return new TsvisorError(`cannot open TAP ${name}: ${what}: ${strerror(e)}`, 1);
  }
}

export class Tap implements NetBackend {
  /** TUNGETFEATURES: the IFF_* flags this kernel's tun driver supports. */
  readonly tunFeatures: number;
  /** TUN_F_* offloads this TAP accepts (UFO is probed: kernels 4.14–6.1 refuse it). */
  readonly supportedOffloads: number;
  private hdrLen: number;
  private offload = -1;
  private closed = false;
  private readonly buf = new NativeBuffer(IFREQ_SIZE);

  private ctlSocket = -1;
  private readonly ifreq = new NativeBuffer(IFREQ_SIZE);
  /** Queues 1… of a multi-queue TAP (this object is queue 0). */
  private readonly extraQueues: Tap[] = [];
  /** Attached to the interface (TUNSETQUEUE); every queue is, once opened. */
  private queueAttached = true;

  private constructor(readonly fd: number, readonly name: string, tunFeatures: number, hdrLen: number) {
    this.tunFeatures = tunFeatures;
    this.hdrLen = hdrLen;
    this.supportedOffloads = this.probeOffloads();
  }

  /**
   * Opens (or creates) TAP `name` with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR,
   * non-blocking, close-on-exec; with `queues` > 1 also IFF_MULTI_QUEUE, and
   * one more fd per further queue (`moreQueues`). Throws TsvisorError on
   * anything a user can fix.
   */
  static open(name: string, opts: TapOptions = {}): Tap {
    const nameBytes = Buffer.from(name, 'utf8');
    if (nameBytes.length === 0 || nameBytes.length >= IFNAMSIZ || /[\s/:]/.test(name)) {
      throw new TsvisorError(`--net tap name "${name}" is not a valid interface name`, 2, 'use 1 to 15 characters without spaces, "/" or ":"');
    }
    const queues = opts.queues ?? 1;
    const hdrLen = opts.vnetHdrLen ?? 10;
    const first = Tap.openQueue(name, queues, hdrLen);
    try {
      // For link-state queries; made now, so in the namespace the TAP was created in.
      first.ctlSocket = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
      first.setVnetHdrLen(hdrLen);
      // Nothing offloaded until the guest negotiates what it takes.
      first.setOffload(0);
      if (!opts.keepSndbuf) first.setSndbuf(SNDBUF_UNLIMITED);
      // The further queues attach to the interface by the name the kernel completed ("tap%d").
      for (let q = 1; q < queues; q++) {
        const more = Tap.openQueue(first.name, queues, hdrLen);
        first.extraQueues.push(more);
        if (!opts.keepSndbuf) more.setSndbuf(SNDBUF_UNLIMITED);
      }
      return first;
    } catch (e) {
      first.close();
      throw e;
    }
  }

  /** One fd of TAP `name`, attached (TUNSETIFF). */
  private static openQueue(name: string, queues: number, hdrLen: number): Tap {
    const fd = libcOpen('/dev/net/tun', O_RDWR | O_NONBLOCK | O_CLOEXEC, 0);
    if (fd < 0) throw tapError(name, 'open /dev/net/tun', errno());
    const buf = new NativeBuffer(IFREQ_SIZE);
    try {
      if (ioctl(fd, TUNGETFEATURES, buf.address) < 0) throw tapError(name, 'TUNGETFEATURES', errno());
      const features = buf.dv.getUint32(0, true);
      if (!(features & IFF_VNET_HDR)) {
        throw new TsvisorError('the kernel tun driver lacks IFF_VNET_HDR', 1, 'tsvisor needs a Linux kernel >= 2.6.27 with TUN/TAP');
      }
      if (queues > 1 && !(features & IFF_MULTI_QUEUE)) {
        throw new TsvisorError(`the kernel tun driver lacks IFF_MULTI_QUEUE, which queues=${queues} needs`, 1, 'give the NIC one queue pair (queues=1), or run on Linux >= 3.8');
      }
      buf.clear();
      buf.bytes.set(Buffer.from(name, 'utf8'), 0);
      buf.dv.setUint16(IFREQ_FLAGS, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (queues > 1 ? IFF_MULTI_QUEUE : 0), true);
      if (ioctl(fd, TUNSETIFF, buf.address) < 0) throw tapError(name, 'TUNSETIFF', errno(), queues);
      // The kernel may have completed a name pattern such as "tap%d".
      const end = buf.bytes.indexOf(0);
      const actual = Buffer.from(buf.bytes.subarray(0, end < 0 ? IFNAMSIZ : end)).toString('utf8');
      return new Tap(fd, actual, features, hdrLen);
    } catch (e) {
      libcClose(fd);
      throw e;
    }
  }

  get moreQueues(): readonly Tap[] {
    return this.extraQueues;
  }

  /** TUNSETQUEUE: attach this queue's fd to the interface (tun steers frames to it) or detach it (none arrive; its backlog is dropped). */
  setQueueEnabled(on: boolean): void {
    if (on === this.queueAttached) return;
    this.buf.clear();
    this.buf.dv.setUint16(IFREQ_FLAGS, on ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE, true);
    if (ioctl(this.fd, TUNSETQUEUE, this.buf.address) < 0) {
      throw new TsvisorError(`TAP ${this.name}: TUNSETQUEUE ${on ? 'attach' : 'detach'}: ${strerror(errno())}`);
    }
    this.queueAttached = on;
  }

  get vnetHdrLen(): number {
    return this.hdrLen;
  }

  readv(iov: bigint, iovcnt: number): number {
    const n = libcReadv(this.fd, iov, iovcnt);
    return n >= 0 ? n : -errno();
  }

  writev(iov: bigint, iovcnt: number): number {
    const n = libcWritev(this.fd, iov, iovcnt);
    return n >= 0 ? n : -errno();
  }

  setVnetHdrLen(len: number): void {
    if (len !== 10 && len !== 12) throw new RangeError(`virtio-net header length ${len} is neither 10 nor 12`);
    this.buf.dv.setInt32(0, len, true);
    if (ioctl(this.fd, TUNSETVNETHDRSZ, this.buf.address) < 0) {
      throw new TsvisorError(`TAP ${this.name}: TUNSETVNETHDRSZ ${len}: ${strerror(errno())}`);
    }
    this.hdrLen = len;
  }

  /** TUNSETOFFLOAD with `flags` restricted to what the TAP accepts; skipped when unchanged. */
  setOffload(flags: number): void {
    const f = flags & this.supportedOffloads;
    if (f === this.offload) return;
    if (ioctl(this.fd, TUNSETOFFLOAD, BigInt(f)) < 0) {
      throw new TsvisorError(`TAP ${this.name}: TUNSETOFFLOAD 0x${f.toString(16)}: ${strerror(errno())}`);
    }
    this.offload = f;
  }

  get offloads(): number {
    return this.offload;
  }

  setSndbuf(bytes: number): void {
    this.buf.dv.setInt32(0, bytes, true);
    if (ioctl(this.fd, TUNSETSNDBUF, this.buf.address) < 0) {
      throw new TsvisorError(`TAP ${this.name}: TUNSETSNDBUF: ${strerror(errno())}`);
    }
  }

  /** TUNGETVNETHDRSZ: the header size the kernel uses now. */
  kernelVnetHdrLen(): number {
    if (ioctl(this.fd, TUNGETVNETHDRSZ, this.buf.address) < 0) return -1;
    return this.buf.dv.getInt32(0, true);
  }

  /**
   * Whether the host side has the TAP up (IFF_UP), or null if that cannot be
   * read. Asked through a socket made in the TAP's own network namespace (at
   * open), so a TAP inside a namespace answers too.
   */
  hostUp(): boolean | null {
    if (this.ctlSocket < 0) return null;
    const b = this.ifreq;
    b.clear();
    b.bytes.set(Buffer.from(this.name, 'utf8'), 0);
    if (ioctl(this.ctlSocket, SIOCGIFFLAGS, b.address) < 0) return null;
    return (b.dv.getUint16(IFREQ_FLAGS, true) & IFF_UP) !== 0;
  }

  /**
   * Whether the fd is still attached to its interface. Deleting the TAP
   * (`ip link del`) detaches the fd: from then on tun answers reads, writes
   * and ioctls with EBADFD, and poll with POLLERR.
   */
  attached(): boolean {
    if (this.closed) return false;
    return ioctl(this.fd, TUNGETIFF, this.buf.address) >= 0 || errno() !== EBADFD;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const q of this.extraQueues) q.close();
    if (this.ctlSocket >= 0) libcClose(this.ctlSocket);
    libcClose(this.fd);
  }

  /**
   * QEMU tap_probe_has_ufo: TUNSETOFFLOAD with UFO fails on kernels that do not
   * take it. CSUM, TSO4/6 and TSO_ECN have been there since 2.6.27.
   */
  private probeOffloads(): number {
    const base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
    let ok = 0;
    if (ioctl(this.fd, TUNSETOFFLOAD, BigInt(base)) === 0) ok = base;
    else if (ioctl(this.fd, TUNSETOFFLOAD, BigInt(TUN_F_CSUM)) === 0) ok = TUN_F_CSUM;
    if (ok & TUN_F_CSUM && ioctl(this.fd, TUNSETOFFLOAD, BigInt(ok | TUN_F_UFO)) === 0) ok |= TUN_F_UFO;
    ioctl(this.fd, TUNSETOFFLOAD, 0n);
    this.offload = 0;
    return ok;
  }
}
