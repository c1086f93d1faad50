// Case counts for the property tests. The defaults keep all fuzz files within
// CI time; TSVISOR_FUZZ_RUNS multiplies them for a longer local run
// (TSVISOR_FUZZ_RUNS=10 npx ava dist/test/*fuzz*.test.js).

/** `base` cases scaled by TSVISOR_FUZZ_RUNS (a positive factor, default 1). */
export function fuzzRuns(base: number): number {
  const k = Number(process.env.TSVISOR_FUZZ_RUNS ?? '1');
  return Number.isFinite(k) && k > 0 ? Math.max(1, Math.round(base * k)) : base;
}

/** fc.assert, with the failing case's own error in the message (fast-check 4 keeps it as `cause`, which ava does not print). */
export function assertProperty(run: () => void): void {
  try {
    run();
  } catch (e) {
    const cause = (e as Error).cause;
    if (cause === undefined) throw e;
    throw new Error(`${(e as Error).message}\nCaused by: ${cause instanceof Error ? cause.message : String(cause)}`);
  }
}
