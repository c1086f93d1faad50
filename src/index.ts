// tsvisor's public API: boot a VM, talk to its console, wait for its end.
export { Vm, type BootOptions, type BootInfo, type VmExit } from './vm.js';
export { GuestConsole } from './console.js';
export { TsvisorError } from './errors.js';
export type { ExitKind, ExitStats } from './vcpu/protocol.js';
export type { NetBootOptions } from './devices/net/net-setup.js';
export { defaultGuestPaths, debianGuestPaths, GUEST_READY_MARKER } from './guest/default-guest.js';
export { COMMAND_EXIT } from './vcpu/protocol.js';
export { type HostFile } from './guest/host-files.js';
export { detectHostKind, type HostKind } from './kvm/system.js';
export { NetNamespace } from './net/netns.js';
export { Tap } from './net/tap.js';
