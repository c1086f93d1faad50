// The benchmark must not rot: `npm run bench -- --quick` (tiny counts, one
// run, no QEMU, no Linux) runs end to end against real KVM and a TAP in a
// namespace the bench makes and deletes, and every figure it reports for the
// exit and packet paths is there and positive, in both guest modes (ring 3,
// the headline on kvm_pvm, and ring 0 beside it). No timing is judged here.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { kvmTestSerial, repoRoot, firmwareMissing } from './helpers/kvm.js';
import { netMissing } from './helpers/netns.js';

const positive = (x: unknown) => typeof x === 'number' && Number.isFinite(x) && x > 0;

kvmTestSerial('npm run bench -- --quick: every exit, TX and RX figure is produced and positive', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tsvisor-bench-smoke-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const jsonFile = join(dir, 'bench.json');
  const svgFile = join(dir, 'exits.svg');
  const child = spawn(process.execPath, [join(repoRoot, 'dist/scripts/bench.js'), '--quick', '--json', jsonFile, '--svg', svgFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const status = await new Promise<number | null>((resolve) => child.on('close', resolve));
  t.is(status, 0, err.trim().split('\n').slice(-3).join(' | '));
  t.regex(out, /\| exit pio_out \(CPL3\), ns per exit \|/);
  t.regex(out, /\| exit pio_out \(CPL0\), ns per exit \|/);
  t.regex(err, /bench \[\d+:\d\d\]: building the firmware/, 'it builds what it needs and shows progress');
  const r = JSON.parse(readFileSync(jsonFile, 'utf8')) as Record<string, any>;
  t.true(['kvm_pvm', 'hardware'].includes(r.host));
  t.is(r.mode, r.host === 'kvm_pvm' ? 'cpl3' : 'cpl0', 'the headline figures are the ring-3 loops on kvm_pvm');
  const other = r.mode === 'cpl3' ? 'cpl0' : 'cpl3';
  // The headline mode's figures under the keys the bench always wrote; the other mode's beside them.
  const both = (o: any) => [[r.mode, o], [other, o?.[other]]] as const;
  for (const kind of ['pio_out', 'pio_in', 'mmio_write', 'mmio_read', 'notify']) {
    for (const [mode, e] of both(r.exit[kind])) {
      for (const key of ['tsvisor_ns', 'c_ns', 'ratio', 'guest_cycles']) t.true(positive(e?.[key]), `exit.${kind} (${mode}).${key} = ${e?.[key]}`);
    }
  }
  t.true(positive(r.exit.notify.ioeventfd_ns), `exit.notify.ioeventfd_ns = ${r.exit.notify.ioeventfd_ns}`);
  // Two vCPUs: the BSP with an idle AP, and both exiting at once (the AP's exits forwarded).
  for (const kind of ['pio_out', 'mmio_read', 'notify']) {
    for (const key of ['one_vcpu_cycles', 'bsp_idle_ap_cycles', 'bsp_cycles', 'ap_cycles']) t.true(positive(r.exit_smp?.[kind]?.[key]), `exit_smp.${kind}.${key} = ${r.exit_smp?.[kind]?.[key]}`);
  }
  for (const dir of ['tx', 'rx']) {
    for (const size of ['64', '1500', '65536']) {
      for (const [mode, e] of both(r[dir][size])) {
        for (const key of ['tsvisor_pps', 'floor_pps', 'ratio']) t.true(positive(e?.[key]), `${dir}.${size} (${mode}).${key} = ${e?.[key]} ${r.reasons?.[`${dir}.${size}`] ?? r.reasons?.[`${dir}.${size}.${mode}`] ?? ''}`);
      }
    }
  }
  t.true(positive(r.rss_mib.under_load), `rss_mib.under_load = ${r.rss_mib.under_load}`);
  const svg = readFileSync(svgFile, 'utf8');
  t.regex(svg, /^<svg /);
  t.is((svg.match(/<path /g) ?? []).length, 10, 'a tsvisor and a floor curve for each of the 5 exit kinds');
}, () => netMissing() ?? firmwareMissing('exits')() ?? firmwareMissing('tx-burst')() ?? firmwareMissing('rx-sink')());
