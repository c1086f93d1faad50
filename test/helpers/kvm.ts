// Shared by the tests that need real KVM or a built guest. Where /dev/kvm is
// missing they skip with the reason, except when TSVISOR_REQUIRE_KVM=1 (CI):
// then the missing piece fails the test instead of hiding it.
import test, { type ExecutionContext } from 'ava';
import { accessSync, constants, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { detectHostKind } from '../../src/kvm/system.js';

export const repoRoot = fileURLToPath(new URL('../../..', import.meta.url));
export const required = process.env.TSVISOR_REQUIRE_KVM === '1';
export const hostKind = detectHostKind();

function kvmMissing(): string | null {
  try {
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return null;
  } catch {
    return '/dev/kvm is not available';
  }
}

/** A test that needs real KVM (and, optionally, other things; `needs` returns the reason they're missing). */
export function kvmTest(title: string, fn: (t: ExecutionContext) => Promise<void> | void, needs: () => string | null = () => null): void {
  const missing = kvmMissing() ?? needs();
  if (missing === null) {
    test(title, fn);
  } else if (required) {
    test(title, (t) => t.fail(`${missing} (TSVISOR_REQUIRE_KVM=1)`));
  } else {
    test.skip(`${title} — skipped: ${missing}`, () => {});
  }
}

/** Same, serially (for tests that boot Linux or create namespaces). */
export function kvmTestSerial(title: string, fn: (t: ExecutionContext) => Promise<void> | void, needs: () => string | null = () => null): void {
  const missing = kvmMissing() ?? needs();
  if (missing === null) test.serial(title, fn);
  else if (required) test.serial(title, (t) => t.fail(`${missing} (TSVISOR_REQUIRE_KVM=1)`));
  else test.skip(`${title} — skipped: ${missing}`, () => {});
}

/** A firmware/ image, built by firmware/build.sh. */
export function firmwareImage(name: string): string {
  return join(repoRoot, 'firmware/build', `${name}.elf`);
}

export function firmwareMissing(name: string): () => string | null {
  return () => (existsSync(firmwareImage(name)) ? null : `firmware/build/${name}.elf is not built (bash firmware/build.sh)`);
}
