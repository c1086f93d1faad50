// The hardware-KVM lane's own faults (docs/testing.md, "What behaves
// differently there"): under QEMU's emulated SVM a Linux guest is sometimes
// shut down (a triple fault after which KVM on SVM has reset the vCPU, so no
// register says where), one or several vCPUs alike, at any point of a run.
// In the lane, and for that end only, a Linux boot runs once more and the
// first end is logged. Anywhere else a triple fault is the test's verdict.
import type { ExecutionContext } from 'ava';
import type { Vm, VmExit } from '../../src/vm.js';

export const inLane = process.env.TSVISOR_IN_LANE === '1';

/** The shutdown KVM on SVM reports: a triple fault with the vCPU already reset. */
const SVM_SHUTDOWN = /KVM reset its registers/;

/** Runs `attempt`; in the lane, once more when `shutdown` says it ended in an SVM shutdown, logging `tail` of the first. */
async function onceMoreInLane<T>(t: ExecutionContext, attempt: () => Promise<T>, shutdown: (r: T) => boolean, tail: (r: T) => string): Promise<T> {
  const first = await attempt();
  if (!inLane || !shutdown(first)) return first;
  t.log(`the lane's emulated SVM shut the guest down; running it once more. Its last lines:\n${tail(first)}`);
  return attempt();
}

const lastLines = (text: string) => text.split('\n').slice(-15).join('\n');

/** Boots (with `boot`) and waits for the end; in the lane, a second boot after an SVM shutdown. */
export function bootToEnd(t: ExecutionContext, boot: () => Promise<Vm>): Promise<{ vm: Vm; exit: VmExit }> {
  return onceMoreInLane(t, async () => {
    const vm = await boot();
    t.teardown(() => vm.stop());
    return { vm, exit: await vm.exited };
  }, (r) => r.exit.kind === 'triple-fault' && SVM_SHUTDOWN.test(r.exit.reason), (r) => `${lastLines(r.vm.console.output)}\n${r.exit.reason}`);
}

type CliResult = { status: number | null; stdout: string; stderr: string };

/** The same for a run of the CLI (`run` gives its result; status 3 is a triple fault). */
export function runToEnd(t: ExecutionContext, run: () => Promise<CliResult>): Promise<CliResult> {
  return onceMoreInLane(t, run, (r) => r.status === 3 && SVM_SHUTDOWN.test(r.stderr), (r) => `${lastLines(r.stdout)}\n${r.stderr.trim()}`);
}
