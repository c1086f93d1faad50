// The exit-latency distribution per exit kind as an SVG: one panel per kind,
// the share of exits per latency bucket (log scale) for tsvisor and for the
// C floor. Latencies are the guest's rdtsc around each exit, less the cost
// of an empty rdtsc pair, converted with the TSC frequency.
import type { Histogram } from './exits.js';

export interface HistSeries { kind: string; tsvisor: Histogram | null; floor: Histogram | null }

const W = 720;
const PANEL_H = 130;
const PAD = { left: 60, right: 20, top: 28, bottom: 30 };

function points(h: Histogram, tscKhz: number): Array<[number, number]> {
  const total = h.buckets.reduce((a, [, c]) => a + c, 0) || 1;
  return h.buckets.map(([lo, c]) => [(Math.max(lo - h.overhead, 1) / tscKhz) * 1e6, c / total]);
}

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;');
}

export function exitHistogramSvg(series: HistSeries[], tscKhz: number, title: string): string {
  const all = series.flatMap((s) => [s.tsvisor, s.floor].filter((h): h is Histogram => h !== null).flatMap((h) => points(h, tscKhz)));
  const xs = all.map(([x]) => x).filter((x) => x > 0);
  const xMin = Math.pow(10, Math.floor(Math.log10(Math.min(...xs, 1000))));
  const xMax = Math.pow(10, Math.ceil(Math.log10(Math.max(...xs, 10_000))));
  const plotW = W - PAD.left - PAD.right;
  const x = (ns: number) => PAD.left + ((Math.log10(ns) - Math.log10(xMin)) / (Math.log10(xMax) - Math.log10(xMin))) * plotW;
  const H = PAD.top + series.length * PANEL_H + 20;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="11">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="16" text-anchor="middle" font-size="13">${esc(title)}</text>`,
  ];
  series.forEach((s, i) => {
    const top = PAD.top + i * PANEL_H;
    const bottom = top + PANEL_H - PAD.bottom;
    const hs = [s.tsvisor, s.floor].filter((h): h is Histogram => h !== null);
    const yMax = Math.max(0.01, ...hs.flatMap((h) => points(h, tscKhz).map(([, f]) => f)));
    const y = (f: number) => bottom - (f / yMax) * (PANEL_H - PAD.bottom - 12);
    out.push(`<text x="${PAD.left}" y="${top + 8}" font-weight="bold">${esc(s.kind)}</text>`);
    out.push(`<line x1="${PAD.left}" y1="${bottom}" x2="${W - PAD.right}" y2="${bottom}" stroke="#888"/>`);
    for (let d = xMin; d <= xMax; d *= 10) {
      out.push(`<line x1="${x(d).toFixed(1)}" y1="${bottom}" x2="${x(d).toFixed(1)}" y2="${bottom + 4}" stroke="#888"/>`);
      out.push(`<text x="${x(d).toFixed(1)}" y="${bottom + 15}" text-anchor="middle">${d >= 1e6 ? `${d / 1e6} ms` : d >= 1000 ? `${d / 1000} µs` : `${d} ns`}</text>`);
    }
    out.push(`<text x="${PAD.left - 6}" y="${y(yMax) + 4}" text-anchor="end">${(yMax * 100).toFixed(0)} %</text>`);
    for (const [h, color, name] of [[s.floor, '#999', 'C floor'], [s.tsvisor, '#1f6fd0', 'tsvisor']] as const) {
      if (!h) continue;
      const p = points(h, tscKhz);
      const path = p.map(([px, f], k) => `${k ? 'L' : 'M'}${x(px).toFixed(1)},${y(f).toFixed(1)}`).join(' ');
      out.push(`<path d="${path}" fill="none" stroke="${color}" stroke-width="1.8"/>`);
      const p50 = (Math.max(h.p50 - h.overhead, 1) / tscKhz) * 1e6;
      out.push(`<text x="${W - PAD.right}" y="${top + (name === 'tsvisor' ? 8 : 22)}" text-anchor="end" fill="${color}">${name}: median ${(p50 / 1000).toFixed(2)} µs</text>`);
    }
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}
