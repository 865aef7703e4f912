/** Median and range of repeated runs: benches report the middle run and how far the others fell. */
export interface Spread {
  median: number
  min: number
  max: number
}

export function spread(xs: readonly number[]): Spread {
  const s = [...xs].sort((a, b) => a - b)
  const mid = s.length >> 1
  return { median: s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2, min: s[0]!, max: s[s.length - 1]! }
}

export const median = (xs: readonly number[]): number => spread(xs).median

/** `412 (398-430)`: the median, then the range, with `digits` decimals. */
export function formatSpread(xs: readonly number[], digits = 0): string {
  const { median, min, max } = spread(xs)
  return `${median.toFixed(digits)} (${min.toFixed(digits)}-${max.toFixed(digits)})`
}

/** Runs `cases` in turn, `rounds` times, so that each sees the same machine; returns each case's results in order. */
export async function alternate<K extends string, R>(rounds: number, cases: Record<K, (round: number) => Promise<R>>): Promise<Record<K, R[]>> {
  const out = Object.fromEntries(Object.keys(cases).map((k) => [k, [] as R[]])) as Record<K, R[]>
  for (let round = 1; round <= rounds; round++) {
    for (const k of Object.keys(cases) as K[]) out[k].push(await cases[k](round))
  }
  return out
}
