// Linux on several vCPUs (`--cpus N`), through the CLI as a user runs it: the
// default guest's SMP kernel brings its APs up through INIT/SIPI, sees every
// CPU (ACPI's MADT in one boot, the MP table alone in the other), takes
// interrupts on each, reaches the host over the NIC, and ends with the
// command's status or, halted on every CPU with interrupts off, with a
// power-off. A firmware program has every vCPU hammer the same device
// registers at once. kvm-unit-tests' SMP tests (smptest with 2, 3 and 4 vCPUs, the
// IPI exits) run in test/kvm-unit-tests.test.ts; the mailbox that carries the
// APs' device exits is tested alone in test/exit-forwarding.test.ts.
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defaultGuestPaths, DEFAULT_GUEST_MISSING } from '../src/guest/default-guest.js';
import type { ExitStats } from '../src/vcpu/protocol.js';
import { firmwareImage, firmwareMissing, kvmTestSerial } from './helpers/kvm.js';
import { tsvisorRun } from './helpers/cli.js';

const tsvisor = tsvisorRun;

const smpGuestMissing = () => (defaultGuestPaths(process.env, 2) ? null : `${DEFAULT_GUEST_MISSING} (its SMP kernel)`);

kvmTestSerial('--cpus 2: Linux sees both CPUs (MADT), takes timer interrupts on each, pings the host, and the command\'s status is the run\'s', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvisor-smp-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const statsJson = join(dir, 'stats.json');
  const script = [
    'echo "nproc=$(nproc) cpuinfo=$(grep -c ^processor /proc/cpuinfo) online=$(cat /sys/devices/system/cpu/online)"',
    // Local timer interrupts per CPU: every CPU runs its own tick.
    'awk \'/^ *LOC:/ { printf "loc=%s,%s\\n", $2, $3 }\' /proc/interrupts',
    'ping -c 3 -W 5 10.0.2.2 | grep received',
    'exit 5',
  ].join('\n');
  const r = await tsvisor(['run', '--cpus', '2', '--net', 'sandbox', '--timeout', '600', '--stats-json', statsJson, '--', script]);
  t.log(r.stdout.trim());
  t.is(r.status, 5, `the command's status: ${r.stderr.slice(-2000)}`);
  t.regex(r.stdout, /nproc=2 cpuinfo=2 online=0-1/);
  const loc = /loc=(\d+),(\d+)/.exec(r.stdout);
  t.truthy(loc, 'a LOC line for two CPUs');
  t.true(Number(loc?.[1]) > 0 && Number(loc?.[2]) > 0, `timer interrupts on both CPUs: ${loc?.[0]}`);
  t.regex(r.stdout, /3 packets transmitted, 3 packets received/);
  const stats = (JSON.parse(readFileSync(statsJson, 'utf8')) as { stats: ExitStats }).stats;
  t.is(stats.vcpus?.length, 2, 'statistics per vCPU');
  t.true(stats.vcpus!.every((v) => v.totalExits > 0), `both vCPUs exited to tsvisor: ${stats.vcpus!.map((v) => v.totalExits).join(', ')}`);
  t.is(stats.totalExits, stats.vcpus!.reduce((n, v) => n + v.totalExits, 0), 'the total is the sum');
}, () => (process.getuid?.() === 0 ? smpGuestMissing() : 'needs root for --net sandbox'));

kvmTestSerial('--cpus 4 with acpi=off: the MP table alone lists the CPUs, and a power-off that halts every CPU with interrupts off ends the run with status 0', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvisor-smp-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // As its own init: print what the kernel found, then power off. Without ACPI
  // Linux stops the other CPUs (each halts with interrupts off), then halts itself.
  const init = join(dir, 'off.sh');
  writeFileSync(init, '#!/bin/sh\nmount -t proc proc /proc\necho "cpus=$(grep -c ^processor /proc/cpuinfo) acpi=$([ -d /sys/firmware/acpi ] && echo on || echo off)"\nexec poweroff -f\n');
  chmodSync(init, 0o755);
  const statsJson = join(dir, 'stats.json');
  const r = await tsvisor(['run', '--cpus', '4', '--append', 'console=ttyS0 panic=-1 quiet acpi=off rdinit=/root/off.sh', '--add', init, '--timeout', '900', '--stats-json', statsJson]);
  t.regex(r.stdout, /cpus=4 acpi=off/, r.stdout.slice(-2000));
  t.is(r.status, 0, r.stderr.slice(-2000));
  const end = JSON.parse(readFileSync(statsJson, 'utf8')) as { kind: string; reason: string; stats: ExitStats };
  t.deepEqual([end.kind, end.reason], ['poweroff', 'the guest halted with interrupts disabled (a power-off or halt)']);
  t.is(end.stats.vcpus?.length, 4);
}, smpGuestMissing);

for (const cpus of [2, 4]) {
  kvmTestSerial(`smp-stress on ${cpus} vCPUs: every CPU hammers pc-testdev's scratch register, the NIC's config space and the console at once; no torn value, no lost line, and the NIC answers afterwards`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'tsvisor-smp-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const statsJson = join(dir, 'stats.json');
    const rounds = 2000;
    const r = await tsvisor(['run', '--kernel', firmwareImage('smp-stress'), '--cpus', String(cpus), '--device', 'pc-testdev', '--net', 'sandbox', '--append', `rounds=${rounds}`, '--timeout', '300', '--stats-json', statsJson]);
    const summary = /^smp-stress: cpus=.*$/m.exec(r.stdout)?.[0] ?? '';
    t.log(summary);
    t.is(r.status, 1, `debug-exit 0: ${r.stdout.slice(-1500)} ${r.stderr.slice(-1500)}`);
    t.is(summary, `smp-stress: cpus=${cpus} started=${cpus} finished=${cpus} rounds=${rounds} torn=0 mac_mismatch=0 arp=ok`);
    // Four progress lines per CPU (rounds 0, 500, 1000, 1500), each whole on a line of its own.
    for (let cpu = 0; cpu < cpus; cpu++) {
      const lines = r.stdout.split('\n').filter((l) => new RegExp(`^smp-stress: cpu ${cpu} round \\d+\r?$`).test(l));
      t.is(lines.length, 4, `cpu ${cpu}'s lines`);
    }
    const stats = (JSON.parse(readFileSync(statsJson, 'utf8')) as { stats: ExitStats }).stats;
    t.is(stats.vcpus?.length, cpus);
    t.true(stats.vcpus!.every((v) => v.totalExits >= 2 * rounds), `every vCPU exited for its accesses: ${stats.vcpus!.map((v) => v.totalExits).join(', ')}`);
  }, () => (process.getuid?.() === 0 ? firmwareMissing('smp-stress')() : 'needs root for --net sandbox'));
}
