/**
 * A seeded shuffle, so that an order can be replayed: a test's failure, or a bench's runs that must
 * all see the same order. Fisher-Yates driven by the C library's LCG (mod 2^31, in exact 32-bit
 * arithmetic), taking each pick from the generator's high bits.
 */
export function shuffled<T>(items: readonly T[], seed: number): T[] {
  const out = [...items]
  let x = seed >>> 0
  for (let i = out.length - 1; i > 0; i--) {
    x = (Math.imul(x, 1103515245) + 12345) & 0x7fffffff
    const j = Math.floor((x / 2 ** 31) * (i + 1))
    ;[out[i], out[j]] = [out[j]!, out[i]!]
  }
  return out
}
