/**
 * The README's performance tables: one block per bench area, each saying when and on what it was
 * measured, so that `npm run bench -- --only AREAS` can rewrite those areas and keep the others
 * (a complete run of every area takes about an hour; one area's change should not need it).
 */
import type { BenchRow } from './types.js'

const MARK = /^<!-- bench-area:([a-z0-9-]+) -->$/m

function table(rows: BenchRow[]): string {
  const esc = (s = '') => s.replace(/\|/g, '\\|')
  const head = '| area | case | result | target | same run |\n|---|---|---|---|---|'
  return [head, ...rows.map((r) => `| ${esc(r.area)} | ${esc(r.case)} | ${esc(r.value)} | ${esc(r.target)} | ${esc(r.note)} |`)].join('\n')
}

/** One area's block: its marker, when and where, and its table. */
export function areaBlock(area: string, rows: BenchRow[], date: string, machine: string): string {
  return `<!-- bench-area:${area} -->\nArea \`${area}\`, measured ${date} on ${machine} (rerun alone: \`npm run bench -- --only ${area}\`):\n\n${table(rows)}`
}

/** The blocks of a bench section by area, in the order they appear. */
export function parseBlocks(section: string): Map<string, string> {
  const blocks = new Map<string, string>()
  const parts = section.split(MARK)
  // split() with a capture group: [text before the first marker, area, block, area, block, ...]
  for (let i = 1; i + 1 < parts.length; i += 2) blocks.set(parts[i]!, `<!-- bench-area:${parts[i]} -->${parts[i + 1]!.trimEnd()}`)
  return blocks
}

/**
 * The section after a run: the areas just measured replace theirs, the others stay as they were,
 * in `order`; an area never measured has no block.
 */
export function mergeBlocks(section: string, fresh: Map<string, string>, order: string[]): string {
  const old = parseBlocks(section)
  return order
    .flatMap((area) => {
      const block = fresh.get(area) ?? old.get(area)
      return block ? [block] : []
    })
    .join('\n\n')
}
