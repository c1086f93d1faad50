// A stock Debian cloud kernel (bzImage, LZ4 payload decompressed on the host)
// with its own initramfs, booted as a user would boot a distribution kernel:
// it reaches user space, loads virtio_net as a module, pings the host inside
// a namespace this test creates, and powers off by ACPI. A file of its own so
// that npm test runs it beside linux-boot's default-guest boots (each takes a
// core; on kvm_pvm this one takes 14 to 23 minutes) instead of after them.
import { Vm } from '../src/vm.js';
import { debianGuestPaths, DEBIAN_GUEST_MISSING } from '../src/guest/default-guest.js';
import { sandboxIpParam, SANDBOX_HOST_IP } from '../src/net/net-option.js';
import { kvmTestSerial, hostKind } from './helpers/kvm.js';
import { testNet, netMissing } from './helpers/netns.js';

kvmTestSerial('a stock Debian cloud kernel (bzImage, host-decompressed) reaches user space, loads virtio_net, pings the host and powers off by ACPI with status 0', async (t) => {
  const guest = debianGuestPaths()!;
  const net = testNet(t);
  const command = `lsmod | grep -q '^virtio_net' && echo virtio_net-loaded; ping -c 3 -W 5 ${SANDBOX_HOST_IP}`;
  const vm = await Vm.boot({ kernel: guest.bzImage, initrd: guest.initrd, cmdline: `console=ttyS0 panic=-1 ${sandboxIpParam()}`, memMiB: 512, net: { tap: net.tap }, timeoutMs: 40 * 60_000, command });
  t.teardown(() => vm.stop());
  t.is(vm.info.format, 'bzImage');
  t.truthy(vm.info.compression, 'its payload was decompressed on the host');
  await vm.console.waitFor(new RegExp(`Linux version ${guest.release.replace(/[.+]/g, '\\$&')}`), { fromStart: true, timeoutMs: 10 * 60_000 });
  const exit = await vm.exited;
  t.log(`${hostKind}: stock kernel to the command's end in ${(exit.stats.runMs / 1000).toFixed(1)} s`);
  t.regex(vm.console.output, /virtio_net-loaded/);
  t.regex(vm.console.output, /3 packets transmitted, 3 packets received/);
  t.is(exit.kind, 'command', `${exit.reason}; the console's last lines:\n${vm.console.output.split('\n').slice(-40).join('\n')}`);
  t.is(exit.status, 0);
  t.regex(vm.console.output, /ACPI: PCI Root Bridge \[PCI0\]/, 'PCI found through the DSDT');
  // The cloud kernel has no /dev/port: init says the status on the console and powers off, which Linux does by ACPI S5.
  t.regex(exit.reason, /then the guest powered off \(ACPI S5\)/);
}, () => netMissing() ?? (debianGuestPaths() ? null : DEBIAN_GUEST_MISSING));
