// Figures of a benchmark: every measured quantity is kept as all its runs,
// reported as the median with min–max. A figure that could not be measured
// is null, and the reason goes beside it.

export interface Summary { median: number; min: number; max: number; runs: number[] }

export function summarize(xs: number[]): Summary | null {
  const finite = xs.filter((x) => Number.isFinite(x));
  if (finite.length === 0) return null;
  const s = [...finite].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return { median: s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2, min: s[0], max: s[s.length - 1], runs: finite };
}

/** "12.3 (11.9–13.0)", or "—" for a figure that was not measured. */
export function fmt(s: Summary | null, digits = 1): string {
  if (!s) return '—';
  const f = (x: number) => x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
  return s.min === s.max ? f(s.median) : `${f(s.median)} (${f(s.min)}–${f(s.max)})`;
}

/** Ratio of two medians, or null when either is missing. */
export function ratio(a: Summary | null, b: Summary | null): number | null {
  if (!a || !b || b.median === 0) return null;
  return a.median / b.median;
}

export function fmtRatio(r: number | null): string {
  return r === null ? '—' : `${r.toFixed(2)}×`;
}

/** Collects the reasons figures are null, keyed by their JSON path. */
export class Reasons {
  readonly map: Record<string, string> = {};
  add(path: string, reason: string): null {
    this.map[path] = reason;
    return null;
  }
}
