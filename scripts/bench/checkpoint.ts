import { randomFillSync } from 'node:crypto'
import { readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { digestContent } from '../../lib/content/cid.js'
import { uploadBufferBytes } from '../../lib/content/hashed-upload.js'
import type { O3Client } from '../../lib/o3/client.js'
import { createBucket } from '../../test/support/s3-server.js'
import { CheckpointStore, CheckpointWriter, encodeHeader, type StateTensor } from '../../checkpoint/index.js'
import { encodeMeta } from '../../checkpoint/meta.js'
import type { BenchModule, BenchRow } from './types.js'
import { alternate, formatSpread, median } from './stats.js'
import { GiB, MiB, benchClient, mapLimit, mbps } from './util.js'

const AREA = 'checkpoints'
const PART = 16 * MiB
const PARALLEL = 4
const ROUNDS = 3

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

interface Run {
  seconds: number
  /** CPU of this process (all its threads: event loop, hashing worker, thread pool) per GiB moved. */
  cpuPerGiB: number
  /** Share of the run the event loop was busy. */
  loopBusy: number
}

async function measure(bytes: number, fn: () => Promise<unknown>): Promise<Run> {
  const cpu0 = process.cpuUsage()
  const elu0 = performance.eventLoopUtilization()
  const t0 = performance.now()
  await fn()
  const seconds = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  return { seconds, cpuPerGiB: (cpu.user + cpu.system) / 1e6 / (bytes / GiB), loopBusy: performance.eventLoopUtilization(elu0).utilization }
}

const summary = (runs: Run[], size: number) =>
  `${formatSpread(runs.map((r) => mbps(size, r.seconds)))} MB/s, CPU ${formatSpread(
    runs.map((r) => r.cpuPerGiB),
    2,
  )} s/GiB, event loop busy ${formatSpread(runs.map((r) => r.loopBusy * 100))}%`

/**
 * Saving a 1 GiB state (8 tensors of 128 MiB) against a raw multipart upload of the same bytes
 * with the same part size and parallelism, alternating after a warm-up pair so both see the same
 * (shared, noisy) machine; then the verified restore against a plain download, alternating too.
 */
export const run: BenchModule = async (ctx) => {
  await createBucket(ctx.server, 'bench-ckpt')
  const client = benchClient(ctx, 'bench-ckpt/run')
  const rows: BenchRow[] = []
  try {
    ctx.log('checkpoint: generating a 1 GiB state')
    const state: StateTensor[] = Array.from({ length: 8 }, (_, i) => ({
      name: `layer${i}.weight`,
      dtype: 'F32',
      shape: [GiB / 8 / 4],
      data: randomFillSync(Buffer.allocUnsafeSlow(GiB / 8)),
    }))
    const header = encodeHeader(state, encodeMeta({ step: 0, epoch: 0, model: 'bench' }))
    const file = Buffer.concat([header, ...state.map((t) => t.data)])
    const size = file.length
    const writer = await CheckpointWriter.open(client, {
      partSize: PART,
      parallel: PARALLEL,
      localDir: join(ctx.workDir, 'ckpt-sidecars'),
      signer: null,
      keepLast: 1,
    })

    let step = 0
    let peakExtra = 0
    const rawRun = async () => {
      const r = await measure(size, () => rawUpload(client, 'raw.bin', file))
      await client.delete('raw.bin')
      return r
    }
    const saveRun = async () => {
      writeFileSync('/proc/self/clear_refs', '5')
      const base = vm('VmRSS')
      const r = await measure(size, () => writer.save(state, { step: ++step, epoch: 0, model: 'bench' }))
      peakExtra = Math.max(peakExtra, vm('VmHWM') - base)
      return r
    }
    ctx.log('checkpoint: warm-up (one raw upload, one save)')
    await rawRun()
    await saveRun()
    const runs = await alternate(ROUNDS, {
      raw: (round) => (ctx.log(`checkpoint: round ${round}: raw multipart upload`), rawRun()),
      save: (round) => (ctx.log(`checkpoint: round ${round}: checkpoint save`), saveRun()),
    })
    const rawMedian = median(runs.raw.map((r) => r.seconds))
    const saveMedian = median(runs.save.map((r) => r.seconds))
    const ratio = rawMedian / saveMedian
    ctx.metrics['ckpt.save.MBps'] = mbps(size, saveMedian)
    ctx.metrics['ckpt.save.vsRaw'] = ratio
    rows.push({
      area: AREA,
      case: `save 1 GiB (8 x 128 MiB tensors), ${PART / MiB} MiB parts x ${PARALLEL}, commit included`,
      value: summary(runs.save, size),
      target: `>= 0.9x raw multipart: ${ratio >= 0.9 ? 'met' : 'not met'} (${ratio.toFixed(2)}x, medians)`,
      note: `raw multipart of the same bytes ${summary(runs.raw, size)}; median (range) of ${ROUNDS} runs each, alternating after a warm-up; sha256 + CID on a worker thread`,
    })

    ctx.log('checkpoint: CID + sha256 alone')
    const hashS = (await measure(size, () => digestContent(file))).seconds
    const hashShare = hashS / saveMedian
    rows.push({
      area: AREA,
      case: 'CID + sha256 of 1 GiB, CPU alone (in memory)',
      value: `${hashS.toFixed(2)} s (${mbps(size, hashS).toFixed(0)} MB/s)`,
      target: `<= 10% of the save: ${hashShare <= 0.1 ? 'met' : 'not met'} (${(hashShare * 100).toFixed(1)}%)`,
      note: `save wall time over raw: ${(((saveMedian - rawMedian) / rawMedian) * 100).toFixed(1)}% (medians)`,
    })
    rows.push({
      area: AREA,
      case: 'peak extra RSS during a 1 GiB save',
      value: `${peakExtra.toFixed(0)} MiB`,
      target: `<= part x (parallel + 1) + hashing = ${uploadBufferBytes(PART, PARALLEL) / MiB} MiB: ${peakExtra <= uploadBufferBytes(PART, PARALLEL) / MiB ? 'met' : 'not met'}`,
      note: 'parts inside one tensor are sent from its memory; only parts that straddle tensors are copied',
    })

    const store = new CheckpointStore(client)
    const key = `checkpoints/${(await store.resolve('latest')).name}.safetensors`
    const restore = await alternate(ROUNDS, {
      plain: (round) => (ctx.log(`checkpoint: round ${round}: plain download`), measure(size, () => rawDownload(client, key, size))),
      verified: (round) => (ctx.log(`checkpoint: round ${round}: verified restore`), measure(size, () => store.load('latest'))),
    })
    const plainS = median(restore.plain.map((r) => r.seconds))
    const verifiedS = median(restore.verified.map((r) => r.seconds))
    ctx.metrics['ckpt.restore.MBps'] = mbps(size, verifiedS)
    rows.push({
      area: AREA,
      case: 'restore 1 GiB: download, sha256 + CID verified, parsed',
      value: summary(restore.verified, size),
      note: `plain download into memory ${summary(restore.plain, size)}; verification costs ${(((verifiedS - plainS) / plainS) * 100).toFixed(1)}% (medians of ${ROUNDS}, alternating)`,
    })
  } finally {
    client.close()
  }
  return rows
}
