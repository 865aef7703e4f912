import { execFile, spawn, type ChildProcess } from 'node:child_process'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { findMount, fusermountUnmount } from '../../fs-driver/mount-table.js'
import { createBucket } from '../../test/support/s3-server.js'
import type { BenchContext, BenchModule, BenchRow } from './types.js'
import { ContentHasher } from '../../lib/content/cid.js'
import { DATASET_MANIFEST_NAME, buildDatasetManifest, formatDatasetManifest, type ManifestFile } from '../../lib/content/dataset-manifest.js'
import type { O3Client } from '../../lib/o3/index.js'
import { GiB, benchClient, benchEnv, mapLimit, mbps, percentile, uploadRandomObject } from './util.js'

const AREA = 'o3mount'
const BUCKET = 'bench-mount'
const SMALL_FILES = 2_000
const SMALL_SIZE = 64 * 1024
const LISTING = 10_000
const TTFB_SAMPLES = 100
const CLI = fileURLToPath(new URL('../../fs-driver/cli.js', import.meta.url))
/** `O3_BENCH_MOUNT=verify` measures only --verify against --verify off (no peers, no listing). */
const VERIFY_ONLY = process.env.O3_BENCH_MOUNT === 'verify'
const exec = promisify(execFile)

/** A FUSE mount under test: ours or a peer from Debian, each run in the foreground so that we own its PID. */
interface Peer {
  name: string
  start(mp: string, ctx: BenchContext): ChildProcess
}

const o3mountPeer = (name: string, args: string[]): Peer => ({
  name,
  start: (mp, ctx) => spawn(process.execPath, [CLI, mp, BUCKET, '--stats-interval', '1h', ...args], { env: benchEnv(ctx), stdio: 'ignore' }),
})

const PEERS: Peer[] = [
  o3mountPeer('o3mount', []),
  {
    name: 's3fs',
    start: (mp, ctx) =>
      spawn('s3fs', [BUCKET, mp, '-f', '-o', `url=${ctx.server.endpoint}`, '-o', 'use_path_request_style', '-o', `endpoint=${ctx.server.region}`, '-o', 'sigv4', '-o', 'ro'], {
        // A key with ':' cannot go in a passwd file; s3fs takes it from the environment.
        env: { ...process.env, AWSACCESSKEYID: ctx.server.accessKeyId, AWSSECRETACCESSKEY: ctx.server.secretAccessKey },
        stdio: 'ignore',
      }),
  },
  {
    name: 'rclone',
    start: (mp, ctx) => {
      const env: NodeJS.ProcessEnv = {
        ...process.env,
        RCLONE_CONFIG_O3_TYPE: 's3', RCLONE_CONFIG_O3_PROVIDER: 'Other', RCLONE_CONFIG_O3_ENDPOINT: ctx.server.endpoint,
        RCLONE_CONFIG_O3_REGION: ctx.server.region, RCLONE_CONFIG_O3_FORCE_PATH_STYLE: 'true',
        RCLONE_CONFIG_O3_ACCESS_KEY_ID: ctx.server.accessKeyId, RCLONE_CONFIG_O3_SECRET_ACCESS_KEY: ctx.server.secretAccessKey,
      }
      delete env.AWS_CA_BUNDLE
      return spawn('rclone', ['mount', `o3:${BUCKET}`, mp, '--read-only'], { env, stdio: 'ignore' })
    },
  },
]

interface Running {
  mp: string
  child: ChildProcess
  stop(): Promise<number>
}

function peakRss(pid: number): number {
  try {
    return Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) * 1024
  } catch {
    return 0
  }
}

/** Mounts and waits until the mount answers; `stop` unmounts, ends the process and returns its peak RSS. */
async function mountPeer(peer: Peer, ctx: BenchContext): Promise<Running> {
  const mp = path.join(ctx.workDir, `mnt-${peer.name}`)
  mkdirSync(mp, { recursive: true })
  const child = peer.start(mp, ctx)
  const stop = async (): Promise<number> => {
    const rss = peakRss(child.pid!)
    await fusermountUnmount(mp).catch(() => {})
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r))
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 5_000)
      await exited
      clearTimeout(timer)
    }
    return rss
  }
  for (const end = Date.now() + 60_000; ; await sleep(100)) {
    if (findMount(mp) && (await fs.readdir(mp).then(() => true, () => false))) break
    if (child.exitCode !== null || Date.now() > end) {
      await stop()
      throw new Error(`${peer.name} did not mount ${BUCKET} at ${mp}`)
    }
  }
  return { mp, child, stop }
}

function dropCaches(): void {
  try {
    writeFileSync('/proc/sys/vm/drop_caches', '3')
  } catch {
    // not root: the kernel page cache is fresh anyway on a new mount
  }
}

async function timeIt(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now()
  await fn()
  return (performance.now() - t0) / 1000
}

const readAll = (file: string) => exec('dd', [`if=${file}`, 'of=/dev/null', 'bs=1M'])

/** The manifest record of an object, hashed as it is read back. */
async function manifestRecord(client: O3Client, key: string): Promise<ManifestFile> {
  const h = new ContentHasher()
  for await (const c of client.iterateRange(key)) await h.update(c)
  const d = await h.digest()
  return { ...d, leaves: [...h.leafDigests] }
}

/** Cold sequential read and the small files with every block verified against a manifest, and without, alternating; best of two each. */
async function measureVerify(ctx: BenchContext, smallNames: string[]): Promise<BenchRow[]> {
  const client = benchClient(ctx, BUCKET)
  try {
    ctx.log('mount: writing a dataset manifest for big.bin and small/')
    const files: Record<string, ManifestFile> = { 'big.bin': await manifestRecord(client, 'big.bin') }
    const small = await manifestRecord(client, `small/${smallNames[0]}`)
    for (const n of smallNames) files[`small/${n}`] = small
    await client.put(DATASET_MANIFEST_NAME, formatDatasetManifest(buildDatasetManifest(files, undefined)))
  } finally {
    client.close()
  }
  const best = { off: { cold: 0, small: Infinity }, on: { cold: 0, small: Infinity } }
  for (let round = 0; round < 2; round++) {
    for (const mode of ['off', 'on'] as const) {
      const peer = o3mountPeer(`o3mount --verify ${mode}`, ['--verify', mode === 'on' ? 'required' : 'off'])
      let m = await mountPeer(peer, ctx)
      try {
        dropCaches()
        best[mode].cold = Math.max(best[mode].cold, mbps(GiB, await timeIt(() => readAll(path.join(m.mp, 'big.bin')))))
        await m.stop()
        m = await mountPeer(peer, ctx)
        dropCaches()
        best[mode].small = Math.min(best[mode].small, await timeIt(() => mapLimit(smallNames, 8, (n) => fs.readFile(path.join(m.mp, 'small', n)))))
      } finally {
        await m.stop()
      }
    }
  }
  const slower = (on: number, off: number) => {
    const pct = (on / off - 1) * 100
    return `<= 10% slower: ${pct <= 10 ? 'met' : 'not met'} (${pct >= 0 ? `${pct.toFixed(1)}% slower` : `${(-pct).toFixed(1)}% faster`})`
  }
  return [
    { area: AREA, case: 'cold sequential read, 1 GiB file, --verify required against --verify off', value: `${best.on.cold.toFixed(0)} MB/s`, target: slower(best.off.cold, best.on.cold), note: `--verify off ${best.off.cold.toFixed(0)} MB/s (best of 2 each, alternating)` },
    { area: AREA, case: `${SMALL_FILES} files of 64 KiB, 8 parallel readers, --verify required against --verify off`, value: `${best.on.small.toFixed(2)} s`, target: slower(best.on.small, best.off.small), note: `--verify off ${best.off.small.toFixed(2)} s (best of 2 each, alternating)` },
  ]
}

interface PeerResult {
  cold: number
  warm: number
  small: number
  ls: number
  ttfb: number[]
  rss: Record<string, number>
}

async function measure(peer: Peer, ctx: BenchContext, smallNames: string[]): Promise<PeerResult> {
  const rss: Record<string, number> = {}
  const res = { rss } as PeerResult
  let m = await mountPeer(peer, ctx)
  try {
    dropCaches()
    res.cold = mbps(GiB, await timeIt(() => readAll(path.join(m.mp, 'big.bin'))))
    res.warm = mbps(GiB, await timeIt(() => readAll(path.join(m.mp, 'big.bin'))))
    rss.sequential = await m.stop()

    m = await mountPeer(peer, ctx)
    dropCaches()
    const secs = await timeIt(() => mapLimit(smallNames, 8, (n) => fs.readFile(path.join(m.mp, 'small', n))))
    res.small = secs
    rss.small = await m.stop()

    m = await mountPeer(peer, ctx)
    res.ls = await timeIt(() => exec('ls', ['-lR', path.join(m.mp, 'listing')], { maxBuffer: 1 << 26 }))
    rss.ls = await m.stop()

    m = await mountPeer(peer, ctx)
    dropCaches()
    const ttfb: number[] = []
    for (let i = 0; i < TTFB_SAMPLES; i++) {
      const pos = Math.floor(Math.random() * (GiB - 4096))
      const t0 = performance.now()
      const fh = await fs.open(path.join(m.mp, 'big.bin'))
      await fh.read(Buffer.alloc(4096), 0, 4096, pos)
      ttfb.push(performance.now() - t0)
      await fh.close()
    }
    res.ttfb = ttfb.sort((a, b) => a - b)
    rss.ttfb = await m.stop()
  } finally {
    await m.stop()
  }
  return res
}

const MiB = 1 << 20
const fmtRss = (r: Record<string, number>) => Object.entries(r).map(([k, v]) => `${k} ${Math.round(v / MiB)}`).join(', ')

/** o3mount against s3fs and rclone mount on the same server in the same run. */
export const run: BenchModule = async (ctx) => {
  await createBucket(ctx.server, BUCKET)
  const client = benchClient(ctx, BUCKET)
  const smallNames = Array.from({ length: SMALL_FILES }, (_, i) => `f${String(i).padStart(4, '0')}.bin`)
  try {
    ctx.log('mount: uploading a 1 GiB object, 2,000 x 64 KiB and 10,000 tiny objects')
    await uploadRandomObject(client, 'big.bin', GiB)
    const small = Buffer.alloc(SMALL_SIZE, 7)
    await mapLimit(smallNames, 16, (n) => client.put(`small/${n}`, small))
    if (VERIFY_ONLY) return await measureVerify(ctx, smallNames)
    await mapLimit(Array.from({ length: LISTING }, (_, i) => i), 16, (i) => client.put(`listing/d${i % 10}/o${i}.txt`, `${i}\n`))
  } finally {
    client.close()
  }

  const results: Record<string, PeerResult> = {}
  for (const peer of PEERS) {
    ctx.log(`mount: measuring ${peer.name}`)
    try {
      results[peer.name] = await measure(peer, ctx, smallNames)
    } catch (err) {
      ctx.log(`mount: ${peer.name} failed: ${(err as Error).message}`)
    }
  }
  const ours = results.o3mount
  if (!ours) throw new Error('o3mount could not be measured')
  const peers = (f: (r: PeerResult) => string) => ['s3fs', 'rclone'].filter((p) => results[p]).map((p) => `${p} ${f(results[p]!)}`).join(', ')
  const ceiling = ctx.metrics['o3.rangedGet.parallelMBps']
  const s3fs = results.s3fs
  const rows: BenchRow[] = []
  const vsS3fsCold = s3fs ? ours.cold / s3fs.cold : undefined
  const vsCeiling = ceiling ? ours.cold / ceiling : undefined
  rows.push({
    area: AREA,
    case: 'cold sequential read, 1 GiB file',
    value: `${ours.cold.toFixed(0)} MB/s`,
    target: `>= 1.2x s3fs: ${vsS3fsCold === undefined ? 'n/a' : `${vsS3fsCold >= 1.2 ? 'met' : 'not met'} (${vsS3fsCold.toFixed(2)}x)`}; >= 0.8x ranged-GET ceiling: ${vsCeiling === undefined ? 'n/a (run with o3)' : `${vsCeiling >= 0.8 ? 'met' : 'not met'} (${vsCeiling.toFixed(2)}x of ${ceiling!.toFixed(0)} MB/s)`}`,
    note: peers((r) => `${r.cold.toFixed(0)} MB/s`),
  })
  rows.push({
    area: AREA,
    case: 'warm re-read, 1 GiB file',
    value: `${ours.warm.toFixed(0)} MB/s`,
    target: `>= 1 GB/s: ${ours.warm >= 1000 ? 'met' : 'not met'}`,
    note: peers((r) => `${r.warm.toFixed(0)} MB/s`),
  })
  const vsS3fsSmall = s3fs ? s3fs.small / ours.small : undefined
  rows.push({
    area: AREA,
    case: `${SMALL_FILES} files of 64 KiB, 8 parallel readers`,
    value: `${ours.small.toFixed(2)} s`,
    target: `>= 2x faster than s3fs: ${vsS3fsSmall === undefined ? 'n/a' : `${vsS3fsSmall >= 2 ? 'met' : 'not met'} (${vsS3fsSmall.toFixed(1)}x)`}`,
    note: peers((r) => `${r.small.toFixed(2)} s`),
  })
  rows.push({ area: AREA, case: `ls -lR over ${LISTING.toLocaleString('en')} objects (10 directories)`, value: `${ours.ls.toFixed(2)} s`, note: peers((r) => `${r.ls.toFixed(2)} s`) })
  rows.push({
    area: AREA,
    case: `time to first byte, 4 KiB at ${TTFB_SAMPLES} random offsets of a cold 1 GiB file (open+read)`,
    value: `p50 ${percentile(ours.ttfb, 50).toFixed(1)} ms, p99 ${percentile(ours.ttfb, 99).toFixed(1)} ms`,
    note: peers((r) => `p50 ${percentile(r.ttfb, 50).toFixed(1)} / p99 ${percentile(r.ttfb, 99).toFixed(1)} ms`),
  })
  rows.push({ area: AREA, case: 'peak RSS of the mount per case (MiB)', value: fmtRss(ours.rss), note: peers((r) => fmtRss(r.rss)) })
  // After the peers: the manifest it writes makes every later o3mount verify by default.
  rows.push(...(await measureVerify(ctx, smallNames)))
  return rows
}
