/**
 * The ceiling of a cold sequential read: one object by parallel ranged GETs into memory. Used
 * in-process by the mount bench, and as a separate process (run as a script with the O3_* settings:
 * `node ranged-get.js <bucket> <key> <parallel> <partBytes>` prints `{"seconds", "cpuSeconds"}`).
 */
import { fileURLToPath } from 'node:url'
import { performance } from 'node:perf_hooks'
import { O3Client } from '../../lib/o3/index.js'
import { mapLimit } from './util.js'

export interface RangedGetResult {
  seconds: number
  /** CPU (user + system) of this process during the read. */
  cpuSeconds: number
}

export async function parallelRangedGet(client: O3Client, key: string, parallel: number, part: number): Promise<RangedGetResult> {
  const { size } = await client.head(key)
  const offsets = Array.from({ length: Math.ceil(size / part) }, (_, i) => i * part)
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  await mapLimit(offsets, parallel, (off) => client.getBytes(key, off, Math.min(size, off + part) - 1))
  const cpu = process.cpuUsage(cpu0)
  return { seconds: (performance.now() - t0) / 1000, cpuSeconds: (cpu.user + cpu.system) / 1e6 }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [bucket, key, parallel, part] = process.argv.slice(2)
  const client = O3Client.open(bucket!)
  parallelRangedGet(client, key!, Number(parallel), Number(part))
    .then((r) => console.log(JSON.stringify(r)))
    .finally(() => client.close())
}
