// Booting real Linux. A boot costs ~30 s on kvm_pvm, so every check that
// needs the booted default guest shares one boot: the kernel's own console
// lines, eth0 configured by the kernel (ip=) on tsvisor's virtio-net through
// the real virtio_net driver, the host pinging the guest kernel, netconsole
// lines arriving as UDP in the namespace, and the end of the run. What needs
// guest user space (a command's output, guest → host ping, /proc/interrupts)
// runs where user space runs (hardware KVM) and is skipped on kvm_pvm with
// the reason. Network traffic stays inside a namespace this test creates.
import test from 'ava';
import { Vm } from '../src/vm.js';
import { defaultGuestPaths, debianGuestPaths, guestCommandArg, idleInitArgs, GUEST_READY_MARKER, GUEST_EXIT_RE, DEFAULT_GUEST_MISSING, DEBIAN_GUEST_MISSING } from '../src/guest/default-guest.js';
import { sandboxIpParam, SANDBOX_GUEST_IP, SANDBOX_HOST_IP } from '../src/net/net-option.js';
import { kvmTestSerial, hostKind } from './helpers/kvm.js';
import { testNet, netMissing } from './helpers/netns.js';

const userSpaceRuns = hostKind !== 'kvm_pvm';
const USER_SPACE_SKIP = 'guest user space cannot make system calls on kvm_pvm (see MEASURED.md); runs on hardware KVM';
const NETCONSOLE_PORT = 6666;

kvmTestSerial('the default guest: boots, brings eth0 up on virtio-net, answers pings, logs over netconsole, ends with status 0', async (t) => {
  const guest = defaultGuestPaths()!;
  const net = testNet(t);
  // netconsole's UDP datagrams, received inside the namespace.
  const listener = net.ns.start([process.execPath, '-e', `
    const s = require('node:dgram').createSocket('udp4');
    s.on('message', (m) => process.stdout.write(m));
    s.bind(${NETCONSOLE_PORT}, '${SANDBOX_HOST_IP}', () => process.stdout.write('listening\\n'));`]);
  t.teardown(() => listener.kill());
  let netconsole = '';
  await new Promise<void>((resolve) => listener.stdout!.once('data', () => resolve()));
  listener.stdout!.on('data', (d: Buffer) => (netconsole += d.toString('latin1')));

  // Where guest user space runs: TCP both ways, 4 MiB each, hashed at both ends.
  let tcp = '';
  if (userSpaceRuns) {
    const server = net.ns.start([process.execPath, '-e', `
      const net = require('node:net'), crypto = require('node:crypto');
      net.createServer((s) => { const h = crypto.createHash('sha256'); let n = 0;
        s.on('data', (d) => { h.update(d); n += d.length; });
        s.on('end', () => { console.log('host-recv-sha', h.digest('hex'), n); s.end(); }); }).listen(7001, '${SANDBOX_HOST_IP}');
      const buf = crypto.randomBytes(4 << 20);
      console.log('host-sent-sha', crypto.createHash('sha256').update(buf).digest('hex'));
      net.createServer((s) => s.end(buf)).listen(7002, '${SANDBOX_HOST_IP}', () => console.log('listening'));`]);
    t.teardown(() => server.kill());
    server.stdout!.on('data', (d: Buffer) => (tcp += d.toString()));
    await new Promise<void>((resolve) => server.stdout!.once('data', () => resolve()));
  }
  const guestSide = 'uname -r; echo guest-says-$((6*7)); ' +
    `ping -c 5 -W 5 ${SANDBOX_HOST_IP} && echo guest-ping-ok; grep -c virtio /proc/interrupts | sed "s/^/virtio-irq-lines=/"; ` +
    'dd if=/dev/urandom of=/tmp/out bs=65536 count=64 2>/dev/null; echo "guest-sent-sha $(sha256sum /tmp/out)"; ' +
    `nc ${SANDBOX_HOST_IP} 7001 < /tmp/out; nc ${SANDBOX_HOST_IP} 7002 < /dev/null > /tmp/in; echo "guest-recv-sha $(sha256sum /tmp/in)"`;
  const cmdline = [
    'console=ttyS0 panic=-1',
    sandboxIpParam(),
    `netconsole=@${SANDBOX_GUEST_IP}/eth0,${NETCONSOLE_PORT}@${SANDBOX_HOST_IP}/`,
  ];
  // On kvm_pvm init cannot run: a syscall-free init keeps the kernel up for
  // the checks (25 s at 3 GHz, a little longer on slower TSCs), then dies,
  // and panic=-1 reboots.
  cmdline.push(userSpaceRuns ? guestCommandArg(guestSide) : idleInitArgs(3e9 * 25));
  const vm = await Vm.boot({ kernel: guest.kernel, initrd: guest.initrd, cmdline: cmdline.join(' '), memMiB: 256, net: { tap: net.tap }, timeoutMs: 8 * 60_000 });
  t.teardown(() => vm.stop());
  const waitLine = (re: RegExp) => vm.console.waitFor(re, { fromStart: true, timeoutMs: 8 * 60_000 });

  const version = await waitLine(/Linux version (\S+)/);
  await waitLine(/serial8250: ttyS0 at I\/O 0x3f8 \(irq = 4/);
  await waitLine(/virtio-pci 0000:00:04\.0/);
  // The kernel prints the configuration on a second, time-stamped line.
  await waitLine(/IP-Config: Complete:[^]{0,80}?device=eth0, hwaddr=52:54:00:12:34:56, ipaddr=10\.0\.2\.15/);
  await waitLine(/Run \S+ as init process/);

  // Host → guest: the guest kernel answers, so RX and TX both run through Linux's virtio_net.
  const ping = await net.ns.run(['ping', '-c', '20', '-i', '0.2', '-W', '5', SANDBOX_GUEST_IP], { timeoutMs: 60_000 });
  t.log(ping.out.trim().split('\n').slice(-2).join(' | '));
  t.regex(ping.out, /20 packets transmitted, 20 received/);
  // Guest → host without user space: the kernel's own netconsole.
  t.regex(netconsole, /Run \S+ as init process|IP-Config: Complete/, 'kernel log lines arrived as UDP in the namespace');
  const s = vm.net!.stats;
  t.log(`virtio-net: tx ${s.txPackets} rx ${s.rxPackets} packets, ${s.txInterrupts + s.rxInterrupts} interrupts, ${s.txKicks} TX kicks`);
  t.deepEqual(s.deviceErrors, []);

  if (userSpaceRuns) {
    await vm.console.waitFor(GUEST_EXIT_RE, { fromStart: true, timeoutMs: 120_000 });
    const out = vm.console.output;
    t.true(out.includes(GUEST_READY_MARKER));
    t.true(out.includes(version[1]), 'uname -r printed the running kernel');
    t.regex(out, /guest-says-42/);
    t.regex(out, /guest-ping-ok/, 'the guest pinged the host');
    t.regex(out, /virtio-irq-lines=[1-9]/, 'virtio interrupts (MSI-X vectors) in /proc/interrupts');
    const sha = (re: RegExp, text: string) => re.exec(text)?.[1];
    const guestSent = sha(/guest-sent-sha ([0-9a-f]{64})/, out);
    t.truthy(guestSent);
    t.is(sha(/host-recv-sha ([0-9a-f]{64}) 4194304/, tcp), guestSent, '4 MiB guest → host over TCP, same sha256');
    const hostSent = sha(/host-sent-sha ([0-9a-f]{64})/, tcp);
    t.truthy(hostSent);
    t.is(sha(/guest-recv-sha ([0-9a-f]{64})/, out), hostSent, '4 MiB host → guest over TCP, same sha256');
  } else {
    t.log(`guest user-space checks skipped: ${USER_SPACE_SKIP}`);
  }
  const exit = await vm.exited;
  t.log(`${hostKind}: ${exit.stats.totalExits} exits, ${(exit.stats.runMs / 1000).toFixed(1)} s`);
  if (userSpaceRuns) {
    t.is(exit.kind, 'poweroff', 'init powers off after the command');
  } else {
    // The idle init's time ran out: init died, the kernel panicked, panic=-1 rebooted.
    t.regex(vm.console.output, /Kernel panic - not syncing: Attempted to kill init/);
    t.is(exit.kind, 'reset');
  }
  t.is(exit.status, 0);
}, () => netMissing() ?? (defaultGuestPaths() ? null : DEFAULT_GUEST_MISSING));

kvmTestSerial('the default guest over the legacy virtio-pci interface (virtio_pci.force_legacy=1): eth0 up, 20/20 pings', async (t) => {
  const guest = defaultGuestPaths()!;
  const net = testNet(t);
  const cmdline = ['console=ttyS0 panic=-1 virtio_pci.force_legacy=1', sandboxIpParam(), userSpaceRuns ? guestCommandArg('sleep 10') : idleInitArgs(3e9 * 15)];
  const vm = await Vm.boot({ kernel: guest.kernel, initrd: guest.initrd, cmdline: cmdline.join(' '), memMiB: 256, net: { tap: net.tap }, timeoutMs: 8 * 60_000 });
  t.teardown(() => vm.stop());
  await vm.console.waitFor(/IP-Config: Complete:[^]{0,80}?device=eth0/, { fromStart: true, timeoutMs: 8 * 60_000 });
  await vm.console.waitFor(/Run \S+ as init process/, { fromStart: true, timeoutMs: 8 * 60_000 });
  const ping = await net.ns.run(['ping', '-c', '20', '-i', '0.2', '-W', '5', SANDBOX_GUEST_IP], { timeoutMs: 60_000 });
  t.regex(ping.out, /20 packets transmitted, 20 received/);
  const exit = await vm.exited;
  const legacyExits = Object.entries(exit.stats.pioByPort).filter(([port]) => /virtio/.test(port)).reduce((n, [, c]) => n + c, 0);
  t.true(legacyExits > 0, `the driver used the legacy I/O BAR (${legacyExits} exits)`);
  t.is(exit.stats.mmioByRegion['virtio-net modern'] ?? 0, 0, 'and never the modern BAR');
  t.is(exit.status, 0);
}, () => netMissing() ?? (defaultGuestPaths() ? null : DEFAULT_GUEST_MISSING));

kvmTestSerial('a stock Debian cloud kernel (bzImage, host-decompressed) starts and prints its first lines', async (t) => {
  const guest = debianGuestPaths()!;
  const vm = await Vm.boot({ kernel: guest.bzImage, initrd: guest.initrd, cmdline: 'console=ttyS0 panic=-1', memMiB: 512, timeoutMs: 10 * 60_000 });
  t.teardown(() => vm.stop());
  t.is(vm.info.format, 'bzImage');
  t.truthy(vm.info.compression, 'its payload was decompressed on the host');
  await vm.console.waitFor(new RegExp(`Linux version ${guest.release.replace(/[.+]/g, '\\$&')}`), { fromStart: true, timeoutMs: 5 * 60_000 });
  await vm.console.waitFor(/Command line: .*console=ttyS0/, { fromStart: true, timeoutMs: 5 * 60_000 });
  if (userSpaceRuns) {
    // On hardware KVM the whole boot is quick: see the modules load and the shell come up.
    await vm.console.waitFor(new RegExp(GUEST_READY_MARKER), { fromStart: true, timeoutMs: 5 * 60_000 });
  } else {
    t.log(`full boot not awaited: a stock kernel needs ~20 minutes on kvm_pvm; ${USER_SPACE_SKIP}`);
  }
  const exit = await vm.stop();
  t.true(['stopped', 'reset'].includes(exit.kind));
}, () => (debianGuestPaths() ? null : DEBIAN_GUEST_MISSING));
