// Rendering a run's exit statistics (--stats) and RIP samples (--profile).
import { readFileSync } from 'node:fs';
import type { ExitStats, SyscallStats } from './vcpu/protocol.js';

function table(title: string, rows: Record<string, number>): string {
  const entries = Object.entries(rows).sort((a, b) => b[1] - a[1]);
  if (entries.length === 0) return '';
  return `${title}\n` + entries.map(([k, v]) => `  ${String(v).padStart(10)}  ${k}`).join('\n') + '\n';
}

export function formatStats(s: ExitStats): string {
  return [
    `\n--- tsvisor exit statistics: ${s.totalExits} exits in ${(s.runMs / 1000).toFixed(2)} s ---\n`,
    table('exits by reason:', s.exitsByReason),
    table('I/O exits by port:', s.pioByPort),
    table('MMIO exits by region:', s.mmioByRegion),
    table('instructions completed by tsvisor:', s.fixups),
    `unclaimed accesses: ${s.unclaimedPio} port, ${s.unclaimedMmio} MMIO\n`,
    s.syscalls ? syscallLine(s.syscalls) : '',
    s.cpu ? `CPU: tsvisor ${s.cpu.vmmMs.toFixed(0)} ms; vCPU thread${s.vcpus ? 's' : ''} ${s.cpu.vcpu.userMs} ms user (${s.cpu.vcpu.guestMs} ms of it guest), ${s.cpu.vcpu.sysMs} ms system (KVM)\n` : '',
    s.vcpus ? `per vCPU:\n${s.vcpus.map(vcpuLine).join('')}` : '',
  ].join('');
}

/** One vCPU's exits (its three commonest reasons) and its thread's CPU time. */
function vcpuLine(v: NonNullable<ExitStats['vcpus']>[number]): string {
  const top = Object.entries(v.exitsByReason).sort((a, b) => b[1] - a[1]).slice(0, 3).map(([r, n]) => `${r} ${n}`).join(', ');
  const cpu = v.cpu ? `; ${v.cpu.userMs} ms user (${v.cpu.guestMs} guest), ${v.cpu.sysMs} ms system` : '';
  return `  vcpu${v.id}: ${v.totalExits} exits${top ? ` (${top})` : ''}${cpu}\n`;
}

/** SYSCALL completion (kvm_pvm) in one line: counts, and tsvisor's mean time for each. */
function syscallLine(c: SyscallStats): string {
  const each = (ns: number | undefined) => (ns === undefined ? '' : ` (${(ns / 1000).toFixed(1)} µs each)`);
  return `syscalls completed by tsvisor: ${c.completed}${each(c.vmmNsPerCompletion)}; #PF stepped: ${c.faultsStepped}${each(c.vmmNsPerStep)}; ` +
    `guest #DB re-injected: ${c.debugReinjected}; #PF handler changes: ${c.handlerChanges}${c.handler ? `; breakpoint last on ${c.handler}` : ''}\n`;
}

/** The NIC's counters (VirtioNet.snapshot()), one per line, drops broken out. */
export function formatNetStats(net: Record<string, unknown>): string {
  const lines: string[] = [];
  for (const [k, v] of Object.entries(net)) {
    if (k === 'drops' && v && typeof v === 'object') {
      const drops = Object.entries(v as Record<string, number>).filter(([, n]) => n > 0).map(([d, n]) => `${d} ${n}`);
      lines.push(`  drops: ${drops.length ? drops.join(', ') : 'none'}`);
    } else if (k === 'pairPackets' && Array.isArray(v)) {
      lines.push(`  ${k}: ${(v as Array<{ tx: number; rx: number }>).map((p, i) => `pair ${i} tx ${p.tx} rx ${p.rx}`).join('; ')}`);
    } else if (Array.isArray(v)) {
      if (v.length) lines.push(`  ${k}: ${v.join('; ')}`);
    } else {
      lines.push(`  ${k}: ${String(v)}`);
    }
  }
  return `virtio-net:\n${lines.join('\n')}\n`;
}

/** Resolves RIP samples with a System.map and lists the hottest symbols. */
export function topSymbols(samples: Record<string, number>, systemMap?: string, count = 25): string {
  let syms: Array<[bigint, string]> = [];
  if (systemMap) {
    try {
      for (const line of readFileSync(systemMap, 'utf8').split('\n')) {
        const [addr, type, name] = line.split(' ');
        if (name && /^[tTwW]$/.test(type)) syms.push([BigInt('0x' + addr), name]);
      }
    } catch {
      syms = [];
    }
    syms.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  }
  const byName = new Map<string, number>();
  let total = 0;
  for (const [hex, n] of Object.entries(samples)) {
    const rip = BigInt(hex);
    let lo = 0, hi = syms.length - 1, found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (syms[mid][0] <= rip) { found = mid; lo = mid + 1; } else hi = mid - 1;
    }
    const name = found >= 0 && rip - syms[found][0] < 0x100000n ? syms[found][1] : hex;
    byName.set(name, (byName.get(name) ?? 0) + n);
    total += n;
  }
  const rows = [...byName.entries()].sort((a, b) => b[1] - a[1]).slice(0, count);
  return `\n--- guest RIP profile: ${total} samples ---\n` + rows.map(([n, c]) => `  ${((100 * c) / total).toFixed(1).padStart(5)}%  ${n}`).join('\n') + '\n';
}
