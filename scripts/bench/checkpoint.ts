import { randomFillSync } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { digestContent } from '../../lib/content/cid.js'
import type { O3Client } from '../../lib/o3/client.js'
import { createBucket } from '../../test/support/s3-server.js'
import { CheckpointStore, CheckpointWriter, encodeHeader, type StateTensor } from '../../checkpoint/index.js'
import { encodeMeta } from '../../checkpoint/meta.js'
import type { BenchModule, BenchRow } from './types.js'
import { GiB, MiB, benchClient, mapLimit, mbps } from './util.js'

const AREA = 'checkpoints'
const PART = 16 * MiB
const PARALLEL = 4
const ROUNDS = 2

function vm(field: 'VmRSS' | 'VmHWM'): number {
  return Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync('/proc/self/status', 'utf8'))![1]) / 1024
}

/** The reference: the same bytes, already contiguous, as plain parts with no hashing or commit. */
async function rawUpload(client: O3Client, key: string, bytes: Buffer): Promise<void> {
  const uploadId = await client.createMultipartUpload(key)
  const parts = Array.from({ length: Math.ceil(bytes.length / PART) }, (_, i) => i + 1)
  const done = await mapLimit(parts, PARALLEL, (n) => client.uploadPart(key, uploadId, n, bytes.subarray((n - 1) * PART, n * PART)))
  await client.completeMultipartUpload(key, uploadId, done)
}

async function rawDownload(client: O3Client, key: string, size: number): Promise<void> {
  const buf = Buffer.allocUnsafeSlow(size)
  let pos = 0
  for await (const c of client.getRange(key)) pos += (c as Buffer).copy(buf, pos)
}

async function seconds(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now()
  await fn()
  return (performance.now() - t0) / 1000
}

/**
 * Saving a 1 GiB state (8 tensors of 128 MiB) against a raw multipart upload of the same bytes
 * with the same part size and parallelism, alternating so both see the same machine; then the
 * verified restore against a plain download.
 */
export const run: BenchModule = async (ctx) => {
  await createBucket(ctx.server, 'bench-ckpt')
  const client = benchClient(ctx, 'bench-ckpt/run')
  const rows: BenchRow[] = []
  try {
    ctx.log('checkpoint: generating a 1 GiB state')
    const state: StateTensor[] = Array.from({ length: 8 }, (_, i) => ({ name: `layer${i}.weight`, dtype: 'F32', shape: [GiB / 8 / 4], data: randomFillSync(Buffer.allocUnsafeSlow(GiB / 8)) }))
    const header = encodeHeader(state, encodeMeta({ step: 0, epoch: 0, model: 'bench' }))
    const file = Buffer.concat([header, ...state.map((t) => t.data)])
    const size = file.length
    const writer = await CheckpointWriter.open(client, { partSize: PART, parallel: PARALLEL, localDir: join(ctx.workDir, 'ckpt-sidecars'), signer: null, keepLast: 1 })

    const raw: number[] = []
    const save: number[] = []
    let peakExtra = 0
    for (let round = 1; round <= ROUNDS; round++) {
      ctx.log(`checkpoint: round ${round}: raw multipart upload`)
      raw.push(await seconds(() => rawUpload(client, 'raw.bin', file)))
      await client.delete('raw.bin')
      ctx.log(`checkpoint: round ${round}: checkpoint save`)
      writeFileSync('/proc/self/clear_refs', '5')
      const base = vm('VmRSS')
      save.push(await seconds(() => writer.save(state, { step: round, epoch: 0, model: 'bench' })))
      peakExtra = Math.max(peakExtra, vm('VmHWM') - base)
    }
    const rawBest = Math.min(...raw)
    const saveBest = Math.min(...save)
    const ratio = rawBest / saveBest
    ctx.metrics['ckpt.save.MBps'] = mbps(size, saveBest)
    ctx.metrics['ckpt.save.vsRaw'] = ratio
    rows.push({
      area: AREA, case: `save 1 GiB (8 x 128 MiB tensors), ${PART / MiB} MiB parts x ${PARALLEL}, commit included`,
      value: `${mbps(size, saveBest).toFixed(0)} MB/s`,
      target: `>= 0.9x raw multipart: ${ratio >= 0.9 ? 'met' : 'not met'} (${ratio.toFixed(2)}x)`,
      note: `raw multipart of the same bytes ${mbps(size, rawBest).toFixed(0)} MB/s; best of ${ROUNDS}, alternating`,
    })

    ctx.log('checkpoint: CID + sha256 alone')
    const hashS = await seconds(() => digestContent(file))
    const hashShare = hashS / saveBest
    rows.push({
      area: AREA, case: 'CID + sha256 of 1 GiB, CPU alone (in memory)', value: `${hashS.toFixed(2)} s (${mbps(size, hashS).toFixed(0)} MB/s)`,
      target: `<= 10% of the save: ${hashShare <= 0.1 ? 'met' : 'not met'} (${(hashShare * 100).toFixed(1)}%)`,
      note: `save wall time over raw: ${(((saveBest - rawBest) / rawBest) * 100).toFixed(1)}%`,
    })
    rows.push({
      area: AREA, case: 'peak extra RSS during a 1 GiB save', value: `${peakExtra.toFixed(0)} MiB`,
      target: `<= part x (parallel + 1) = ${(PART / MiB) * (PARALLEL + 1)} MiB: ${peakExtra <= (PART / MiB) * (PARALLEL + 1) ? 'met' : 'not met'}`,
      note: 'parts inside one tensor are sent from its memory; only parts that straddle tensors are copied',
    })

    const store = new CheckpointStore(client)
    const key = `checkpoints/${(await store.resolve('latest')).name}.safetensors`
    const plain: number[] = []
    const verified: number[] = []
    for (let round = 1; round <= ROUNDS; round++) {
      ctx.log(`checkpoint: round ${round}: plain download, verified restore`)
      plain.push(await seconds(() => rawDownload(client, key, size)))
      verified.push(await seconds(() => store.load('latest')))
    }
    const plainBest = Math.min(...plain)
    const verifiedBest = Math.min(...verified)
    ctx.metrics['ckpt.restore.MBps'] = mbps(size, verifiedBest)
    rows.push({
      area: AREA, case: 'restore 1 GiB: download, sha256 + CID verified, parsed', value: `${mbps(size, verifiedBest).toFixed(0)} MB/s`,
      note: `plain download into memory ${mbps(size, plainBest).toFixed(0)} MB/s; verification costs ${(((verifiedBest - plainBest) / plainBest) * 100).toFixed(1)}%`,
    })
  } finally {
    client.close()
  }
  return rows
}
