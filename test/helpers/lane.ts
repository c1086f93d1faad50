// The hardware-KVM lane's own faults (docs/testing.md, "What behaves
// differently there"): under QEMU's emulated SVM a Linux guest is sometimes
// shut down (a triple fault after which KVM on SVM has reset the vCPU, so no
// register says where), one or several vCPUs alike, at any point of a run.
// In the lane, and for that end only, a Linux boot runs once more and the
// first end is logged. Anywhere else a triple fault is the test's verdict.
import type { ExecutionContext } from 'ava';
import type { Vm, VmExit } from '../../src/vm.js';

export const inLane = process.env.TSVISOR_IN_LANE === '1';

/** Boots (with `boot`) and waits for the end; in the lane, a second boot after an SVM shutdown. */
export async function bootToEnd(t: ExecutionContext, boot: () => Promise<Vm>): Promise<{ vm: Vm; exit: VmExit }> {
  for (let attempt = 1; ; attempt++) {
    const vm = await boot();
    t.teardown(() => vm.stop());
    const exit = await vm.exited;
    const laneShutdown = inLane && exit.kind === 'triple-fault' && /KVM reset its registers/.test(exit.reason);
    if (!laneShutdown || attempt === 2) return { vm, exit };
    t.log(`the lane's emulated SVM shut the guest down (${exit.reason}); booting it once more. Its last lines:\n${vm.console.output.split('\n').slice(-15).join('\n')}`);
  }
}

type CliResult = { status: number | null; stdout: string; stderr: string };

/** The same for a run of the CLI (`run` gives its result): once more in the lane after an SVM shutdown (status 3). */
export async function runToEnd(t: ExecutionContext, run: () => Promise<CliResult>): Promise<CliResult> {
  for (let attempt = 1; ; attempt++) {
    const r = await run();
    const laneShutdown = inLane && r.status === 3 && /KVM reset its registers/.test(r.stderr);
    if (!laneShutdown || attempt === 2) return r;
    t.log(`the lane's emulated SVM shut the guest down; running it once more. Its last lines:\n${r.stdout.split('\n').slice(-15).join('\n')}\n${r.stderr.trim()}`);
  }
}
