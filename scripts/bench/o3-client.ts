import { performance } from 'node:perf_hooks'
import { createBucket } from '../../test/support/s3-server.js'
import type { BenchModule, BenchRow } from './types.js'
import { GiB, MiB, benchClient, mapLimit, mbps, percentile, uploadRandomObject } from './util.js'

const AREA = 'O3 client'
const SIZE = GiB
const PART = 8 * MiB

/** The ceiling the mount is measured against: raw ranged GETs of a 1 GiB object. */
export const run: BenchModule = async (ctx) => {
  await createBucket(ctx.server, 'bench-o3')
  const client = benchClient(ctx, 'bench-o3')
  const rows: BenchRow[] = []
  try {
    ctx.log('uploading a 1 GiB object')
    await uploadRandomObject(client, 'big.bin', SIZE)

    let t0 = performance.now()
    let bytes = 0
    for await (const c of client.getRange('big.bin')) bytes += (c as Buffer).length
    const single = mbps(bytes, (performance.now() - t0) / 1000)
    ctx.metrics['o3.rangedGet.singleMBps'] = single
    rows.push({ area: AREA, case: 'GET 1 GiB, one stream', value: `${single.toFixed(0)} MB/s` })

    let best = 0
    const ranges = Array.from({ length: SIZE / PART }, (_, i) => i * PART)
    for (const n of [1, 4, 8, 16]) {
      t0 = performance.now()
      const got = await mapLimit(ranges, n, async (off) => (await client.getBytes('big.bin', off, off + PART - 1)).length)
      const rate = mbps(
        got.reduce((a, b) => a + b, 0),
        (performance.now() - t0) / 1000,
      )
      best = Math.max(best, rate)
      rows.push({ area: AREA, case: `ranged GET 1 GiB in 8 MiB parts, ${n} in parallel`, value: `${rate.toFixed(0)} MB/s` })
    }
    ctx.metrics['o3.rangedGet.parallelMBps'] = best

    const ttfb: number[] = []
    for (let i = 0; i < 200; i++) {
      const off = Math.floor(Math.random() * (SIZE - 4096))
      t0 = performance.now()
      const stream = client.getRange('big.bin', { start: off, end: off + 4095 })
      for await (const _ of stream) {
        ttfb.push(performance.now() - t0)
        stream.destroy()
        break
      }
    }
    ttfb.sort((a, b) => a - b)
    ctx.metrics['o3.ttfb.p50ms'] = percentile(ttfb, 50)
    rows.push({
      area: AREA,
      case: '4 KiB ranged GET, time to first byte (200 random offsets)',
      value: `p50 ${percentile(ttfb, 50).toFixed(1)} ms, p99 ${percentile(ttfb, 99).toFixed(1)} ms`,
    })
    await client.delete('big.bin')
  } finally {
    client.close()
  }
  return rows
}
