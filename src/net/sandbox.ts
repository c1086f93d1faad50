// `--net sandbox`: a network made for one run. A namespace of its own holds
// the TAP (created inside it, never in the host's namespace) with 10.0.2.2/24
// on the host side; the guest gets 10.0.2.15. Nothing outlives the run and no
// traffic can reach any other network.
//
// As root the namespace is a named one (`ip netns add`), deleted at the end,
// which deletes the TAP and everything in it. Without root the CLI has re-run
// tsvisor in a user + network namespace of its own (user-namespace.ts): the
// sandbox is then this process's network namespace, set up with plain `ip`,
// and it ends with the process.
import { NetNamespace } from './netns.js';
import { OwnNetNamespace, insideOwnUserNamespace } from './user-namespace.js';
import { Tap } from './tap.js';
import { TsvisorError } from '../errors.js';
import { SANDBOX_GUEST_IP, SANDBOX_HOST_IP, SANDBOX_PREFIX } from './net-option.js';

export class Sandbox {
  private constructor(
    /** The named namespace (as root), or this process's own (in tsvisor's user namespace); `ns.name` fits after "namespace ". */
    readonly ns: NetNamespace | OwnNetNamespace,
    readonly tap: Tap,
  ) {}

  /** `queues`: the TAP's queues, one per virtio-net queue pair. */
  static create(queues = 1): Sandbox {
    if (insideOwnUserNamespace()) return Sandbox.setUp(new OwnNetNamespace(), () => Tap.open('tap0', { queues }));
    if (process.getuid?.() !== 0) {
      throw new TsvisorError('--net sandbox needs root: it creates a network namespace and a TAP inside it', 1, 'run as root, or create a TAP you own (ip tuntap add dev tap0 mode tap user $USER vnet_hdr) and pass --net tap:tap0');
    }
    const ns = NetNamespace.create('tsvisor');
    return Sandbox.setUp(ns, () => ns.enter(() => Tap.open('tap0', { queues })));
  }

  private static setUp(ns: NetNamespace | OwnNetNamespace, openTap: () => Tap): Sandbox {
    let tap: Tap | undefined;
    try {
      // NetNamespace.create put lo up already; here it is this process's fresh namespace.
      if (ns instanceof OwnNetNamespace) ns.must(['ip', 'link', 'set', 'lo', 'up']);
      tap = openTap();
      ns.must(['ip', 'addr', 'add', `${SANDBOX_HOST_IP}/${SANDBOX_PREFIX}`, 'dev', tap.name]);
      ns.must(['ip', 'link', 'set', tap.name, 'up']);
      return new Sandbox(ns, tap);
    } catch (e) {
      tap?.close();
      ns.delete();
      throw e;
    }
  }

  /** Whether the sandbox lives in tsvisor's own user namespace (made without root) rather than a named one. */
  get inUserNamespace(): boolean {
    return this.ns instanceof OwnNetNamespace;
  }

  /** The CLI's line about it: where it is, the addresses, and how to reach the guest from outside. */
  describe(): string {
    const enter = this.ns instanceof OwnNetNamespace ? this.ns.enterCommand : `ip netns exec ${this.ns.name}`;
    const own = this.ns instanceof OwnNetNamespace ? ' (in a user namespace of its own)' : '';
    return `network sandbox: namespace ${this.ns.name}${own}, ${this.tap.name} ${SANDBOX_HOST_IP}/${SANDBOX_PREFIX}, guest ${SANDBOX_GUEST_IP}; try: ${enter} ping ${SANDBOX_GUEST_IP}`;
  }

  /** Pings the guest from the host side of the sandbox; returns ping's summary lines. */
  async pingGuest(count = 3): Promise<{ ok: boolean; summary: string }> {
    const r = await this.ns.run(['ping', '-c', String(count), '-i', '0.2', '-W', '5', SANDBOX_GUEST_IP], { timeoutMs: 60_000 });
    const summary = r.out.trim().split('\n').slice(-2).join('; ');
    return { ok: r.status === 0, summary };
  }

  close(): void {
    this.tap.close();
    this.ns.delete();
  }
}
