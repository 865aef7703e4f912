import t from 'tap'
import { areaBlock, mergeBlocks, parseBlocks } from '../scripts/bench/table.js'

const row = (area: string, value: string) => ({ area, case: 'a case | with a bar', value })
const machine = '2 x CPU'

t.test('a partial run replaces its areas and keeps the others, in the areas order', async (t) => {
  const order = ['o3', 'mount', 'latency', 'trainer']
  const before = [
    areaBlock('o3', [row('O3 client', '1 MB/s')], '2026-01-01', machine),
    areaBlock('mount', [row('o3mount', '2 MB/s')], '2026-01-01', machine),
    areaBlock('trainer', [row('trainer', '3 samples/s')], '2026-01-01', machine),
  ].join('\n\n')
  const fresh = new Map([
    ['mount', areaBlock('mount', [row('o3mount', '20 MB/s')], '2026-02-02', machine)],
    ['latency', areaBlock('latency', [row('o3mount at a distance', '9 MB/s')], '2026-02-02', machine)],
  ])
  const after = mergeBlocks(before, fresh, order)
  const blocks = parseBlocks(after)
  t.same([...blocks.keys()], ['o3', 'mount', 'latency', 'trainer'], 'every area once, in order')
  t.match(blocks.get('o3'), /1 MB\/s/, 'an area not run keeps its table')
  t.match(blocks.get('o3'), /measured 2026-01-01/, '... and its date')
  t.match(blocks.get('mount'), /20 MB\/s/, 'a run area gets its new table')
  t.notMatch(blocks.get('mount'), /\| 2 MB\/s/, '... and not the old one')
  t.match(blocks.get('latency'), /measured 2026-02-02/, 'a new area appears')
  t.match(blocks.get('mount'), /a case \\\| with a bar/, 'bars inside cells are escaped')
  t.equal(mergeBlocks(after, new Map(), order), after, 'merging nothing changes nothing')
})
