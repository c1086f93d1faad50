// `--net sandbox`: a network made for one run. A namespace of its own holds
// the TAP (created inside it, never in the host's namespace) with 10.0.2.2/24
// on the host side; the guest gets 10.0.2.15. Deleting the namespace at the
// end deletes the TAP and everything in it, so nothing outlives the run and
// no traffic can reach any other network.
import { NetNamespace } from './netns.js';
import { Tap } from './tap.js';
import { TsvisorError } from '../errors.js';
import { SANDBOX_GUEST_IP, SANDBOX_HOST_IP, SANDBOX_PREFIX } from './net-option.js';

export class Sandbox {
  private constructor(readonly ns: NetNamespace, readonly tap: Tap) {}

  static create(): Sandbox {
    if (process.getuid?.() !== 0) {
      throw new TsvisorError('--net sandbox needs root: it creates a network namespace and a TAP inside it', 1, 'run as root, or create a TAP you own (ip tuntap add dev tap0 mode tap user $USER vnet_hdr) and pass --net tap:tap0');
    }
    const ns = NetNamespace.create('tsvisor');
    try {
      const tap = ns.enter(() => Tap.open('tap0'));
      ns.must(['ip', 'addr', 'add', `${SANDBOX_HOST_IP}/${SANDBOX_PREFIX}`, 'dev', 'tap0']);
      ns.must(['ip', 'link', 'set', 'tap0', 'up']);
      return new Sandbox(ns, tap);
    } catch (e) {
      ns.delete();
      throw e;
    }
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
