import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { findMount, fusermountUnmount } from '../../fs-driver/mount-table.js'
import { createBucket } from '../../test/support/s3-server.js'
import { parallelRangedGet } from './ranged-get.js'
import { formatSpread, spread } from './stats.js'
import type { BenchContext, BenchModule, BenchRow } from './types.js'
import { MiB, benchClient, benchEnv, mapLimit, mbps, percentile } from './util.js'

const AREA = 'o3mount'
const BUCKET = 'bench-mount'
const SIZE = 512 * MiB
/** Counted rounds of the sequential cases, after one warm-up round. */
const ROUNDS = 3
const SMALL_FILES = 2_000
const SMALL_SIZE = 64 * 1024
const LISTING = 10_000
const TTFB_SAMPLES = 100
/** o3mount's default --kernel-readahead, set on the peers' mounts too. */
const READ_AHEAD_KB = 32 * 1024
const CLK_TCK = 100
const CLI = fileURLToPath(new URL('../../fs-driver/cli.js', import.meta.url))
const UPLOAD_CLI = fileURLToPath(new URL('../../upload/cli.js', import.meta.url))
const RANGED_GET = fileURLToPath(new URL('./ranged-get.js', import.meta.url))
const exec = promisify(execFile)

/** The same bytes, written by two S3 clients with different multipart layouts. */
const OBJECTS = [
  { key: 'seq/ours/big.bin', writer: 'our uploader (o3upload, 16 MiB parts)' },
  { key: 'seq/other/big.bin', writer: 'rclone copyto (5 MiB parts)' },
]

/** A FUSE mount under test, each with its documented best settings, run in the foreground so that we own its PID. */
interface Peer {
  name: string
  /** The settings, as written into the table. */
  flags: string
  start(mp: string, ctx: BenchContext): ChildProcess
}

function rcloneEnv(ctx: BenchContext): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    RCLONE_CONFIG_O3_TYPE: 's3',
    RCLONE_CONFIG_O3_PROVIDER: 'Other',
    RCLONE_CONFIG_O3_ENDPOINT: ctx.server.endpoint,
    RCLONE_CONFIG_O3_REGION: ctx.server.region,
    RCLONE_CONFIG_O3_FORCE_PATH_STYLE: 'true',
    RCLONE_CONFIG_O3_ACCESS_KEY_ID: ctx.server.accessKeyId,
    RCLONE_CONFIG_O3_SECRET_ACCESS_KEY: ctx.server.secretAccessKey,
  }
  delete env.AWS_CA_BUNDLE
  return env
}

const S3FS_FLAGS = ['parallel_count=16', 'multipart_size=16', 'max_stat_cache_size=100000', 'kernel_cache', 'ro']
const RCLONE_FLAGS = [
  '--read-only',
  '--vfs-cache-mode',
  'full',
  '--vfs-read-chunk-size',
  '16M',
  '--vfs-read-chunk-size-limit',
  'off',
  '--buffer-size',
  '32M',
  '--dir-cache-time',
  '1h',
]

/** The same mount with verification off: o3upload's manifest makes the default mount verify its object. */
const UNVERIFIED: Peer = {
  name: 'o3mount --verify off',
  flags: 'defaults and --verify off',
  start: (mp, ctx) => spawn(process.execPath, [CLI, mp, BUCKET, '--stats-interval', '1h', '--verify', 'off'], { env: benchEnv(ctx), stdio: 'ignore' }),
}

const PEERS: Peer[] = [
  {
    name: 'o3mount',
    flags: 'defaults (1 MiB blocks, 16 MiB parts, 32 connections, --kernel-readahead 32M)',
    start: (mp, ctx) => spawn(process.execPath, [CLI, mp, BUCKET, '--stats-interval', '1h'], { env: benchEnv(ctx), stdio: 'ignore' }),
  },
  {
    name: 's3fs',
    flags: `-o ${S3FS_FLAGS.join(',')}, read_ahead_kb ${READ_AHEAD_KB}`,
    start: (mp, ctx) =>
      spawn(
        's3fs',
        [
          BUCKET,
          mp,
          '-f',
          '-o',
          `url=${ctx.server.endpoint}`,
          '-o',
          'use_path_request_style',
          '-o',
          `endpoint=${ctx.server.region}`,
          '-o',
          'sigv4',
          ...S3FS_FLAGS.flatMap((f) => ['-o', f]),
        ],
        {
          // A key with ':' cannot go in a passwd file; s3fs takes it from the environment.
          env: { ...process.env, AWSACCESSKEYID: ctx.server.accessKeyId, AWSSECRETACCESSKEY: ctx.server.secretAccessKey },
          stdio: 'ignore',
        },
      ),
  },
  {
    name: 'rclone',
    flags: `${RCLONE_FLAGS.filter((f) => f !== '--read-only').join(' ')} (a fresh cache per mount), read_ahead_kb ${READ_AHEAD_KB}`,
    start: (mp, ctx) => {
      const cache = path.join(ctx.workDir, 'rclone-cache')
      rmSync(cache, { recursive: true, force: true })
      return spawn('rclone', ['mount', `o3:${BUCKET}`, mp, ...RCLONE_FLAGS, '--cache-dir', cache], { env: rcloneEnv(ctx), stdio: 'ignore' })
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

/** User + system CPU seconds of a process so far (/proc/PID/stat fields 14 and 15). */
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK
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
    if (
      findMount(mp) &&
      (await fs.readdir(mp).then(
        () => true,
        () => false,
      ))
    )
      break
    if (child.exitCode !== null || Date.now() > end) {
      await stop()
      throw new Error(`${peer.name} did not mount ${BUCKET} at ${mp}`)
    }
  }
  // The kernel readahead o3mount sets for itself, for every mount alike.
  if (peer.name !== 'o3mount') writeFileSync(`/sys/class/bdi/${findMount(mp)!.device}/read_ahead_kb`, `${READ_AHEAD_KB}\n`)
  return { mp, child, stop }
}

/** A cold run that cannot drop the page cache would measure nothing: it fails instead. */
function dropCaches(): void {
  try {
    execFileSync('sync')
    writeFileSync('/proc/sys/vm/drop_caches', '3')
  } catch (err) {
    throw new Error(`cannot drop the page cache (${(err as NodeJS.ErrnoException).code}); the mount bench must run as root`)
  }
}

async function timeIt(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now()
  await fn()
  return (performance.now() - t0) / 1000
}

const readAll = (file: string) => exec('dd', [`if=${file}`, 'of=/dev/null', 'bs=1M'])

/** A read of SIZE bytes: MB/s, and the reader's (or mount's) CPU seconds per GiB. */
interface Sample {
  mbps: number
  cpuPerGiB: number
}
const sample = (seconds: number, cpu: number): Sample => ({ mbps: mbps(SIZE, seconds), cpuPerGiB: (cpu * (1 << 30)) / SIZE })

/** Per object: peer name (or ceiling) -> case -> samples. */
type Samples = Record<string, Record<string, Sample[]>>

function add(into: Samples, who: string, what: string, s: Sample): void {
  ;((into[who] ??= {})[what] ??= []).push(s)
}

/** Fresh mount, caches dropped: a cold read (with the mount's CPU), then a warm re-read. */
async function sequentialRun(peer: Peer, ctx: BenchContext, key: string, into: Samples | undefined): Promise<number> {
  const m = await mountPeer(peer, ctx)
  let peak = 0
  try {
    dropCaches()
    const cpu0 = cpuSeconds(m.child.pid!)
    const cold = await timeIt(() => readAll(path.join(m.mp, key)))
    const cpu = cpuSeconds(m.child.pid!) - cpu0
    const warm = await timeIt(() => readAll(path.join(m.mp, key)))
    if (into) {
      add(into, peer.name, 'cold', sample(cold, cpu))
      add(into, peer.name, 'warm', sample(warm, 0))
    }
  } finally {
    peak = await m.stop()
  }
  return peak
}

/** The ceiling: the same object after a cache drop, by 16 parallel 16 MiB ranged GETs, in this process and in another. */
async function ceilingRun(ctx: BenchContext, key: string, into: Samples | undefined): Promise<void> {
  const client = benchClient(ctx, BUCKET, 32)
  try {
    dropCaches()
    const inProc = await parallelRangedGet(client, key, 16, 16 * MiB)
    dropCaches()
    const { stdout } = await exec(process.execPath, [RANGED_GET, BUCKET, key, '16', String(16 * MiB)], { env: benchEnv(ctx) })
    const child = JSON.parse(stdout) as { seconds: number; cpuSeconds: number }
    if (into) {
      add(into, 'ceiling', 'in-process', sample(inProc.seconds, inProc.cpuSeconds))
      add(into, 'ceiling', 'separate process', sample(child.seconds, child.cpuSeconds))
    }
  } finally {
    client.close()
  }
}

interface OtherResult {
  small: number
  ls: number
  ttfb: number[]
}

/** One run each, on a fresh mount: small files, listing, time to first byte. */
async function measureOther(peer: Peer, ctx: BenchContext, smallNames: string[]): Promise<OtherResult> {
  const res = {} as OtherResult
  let m = await mountPeer(peer, ctx)
  try {
    dropCaches()
    res.small = await timeIt(() => mapLimit(smallNames, 8, (n) => fs.readFile(path.join(m.mp, 'small', n))))
    await m.stop()
    m = await mountPeer(peer, ctx)
    res.ls = await timeIt(() => exec('ls', ['-lR', path.join(m.mp, 'listing')], { maxBuffer: 1 << 26 }))
    await m.stop()
    m = await mountPeer(peer, ctx)
    dropCaches()
    const ttfb: number[] = []
    for (let i = 0; i < TTFB_SAMPLES; i++) {
      const pos = Math.floor(Math.random() * (SIZE - 4096))
      const t0 = performance.now()
      const fh = await fs.open(path.join(m.mp, OBJECTS[0]!.key))
      await fh.read(Buffer.alloc(4096), 0, 4096, pos)
      ttfb.push(performance.now() - t0)
      await fh.close()
    }
    res.ttfb = ttfb.sort((a, b) => a - b)
  } finally {
    await m.stop()
  }
  return res
}

/** Writes the same random bytes with our uploader and, in 5 MiB parts, with rclone. */
async function writeObjects(ctx: BenchContext): Promise<void> {
  const dir = path.join(ctx.workDir, 'seq-src')
  mkdirSync(dir, { recursive: true })
  const file = path.join(dir, 'big.bin')
  writeFileSync(file, randomBytes(SIZE))
  await exec(process.execPath, [UPLOAD_CLI, dir, `o3://${BUCKET}/seq/ours`], { env: benchEnv(ctx) })
  await exec('rclone', ['copyto', file, `o3:${BUCKET}/${OBJECTS[1]!.key}`, '--s3-chunk-size', '5M', '--s3-upload-cutoff', '5M'], { env: rcloneEnv(ctx) })
  rmSync(dir, { recursive: true, force: true })
}

const median = (xs: number[]): number => spread(xs).median
/** `median (min-max)` of one measure over a peer's samples. */
function spreadOf(xs: Sample[] | undefined, f: (s: Sample) => number, digits = 0): string {
  return xs?.length ? formatSpread(xs.map(f), digits) : 'n/a'
}
const verdict = (ok: boolean, ratio: number) => `${ok ? 'met' : 'not met'} (${ratio.toFixed(2)}x)`
const fmtRss = (r: Record<string, number>) =>
  Object.entries(r)
    .map(([k, v]) => `${k} ${Math.round(v / MiB)}`)
    .join(', ')

/**
 * o3mount against s3fs and rclone mount, each with its best documented settings, on the same
 * server: sequential reads of objects written by two different clients (fresh mount and dropped
 * caches for each cold run; runs alternate between mounts, one warm-up round, then ROUNDS counted),
 * the ranged-GET ceiling in the same rounds, and one run each of small files, listing and TTFB.
 */
export const run: BenchModule = async (ctx) => {
  const began = performance.now()
  dropCaches()
  await createBucket(ctx.server, BUCKET)
  const client = benchClient(ctx, BUCKET, 32)
  const smallNames = Array.from({ length: SMALL_FILES }, (_, i) => `f${String(i).padStart(4, '0')}.bin`)
  try {
    ctx.log('mount: writing a 512 MiB object twice (o3upload, rclone 5 MiB parts), 2,000 x 64 KiB and 10,000 tiny objects')
    await writeObjects(ctx)
    const small = Buffer.alloc(SMALL_SIZE, 7)
    await mapLimit(smallNames, 16, (n) => client.put(`small/${n}`, small))
    await mapLimit(
      Array.from({ length: LISTING }, (_, i) => i),
      16,
      (i) => client.put(`listing/d${i % 10}/o${i}.txt`, `${i}\n`),
    )
  } catch (err) {
    client.close()
    throw err
  }

  const seq: Record<string, Samples> = {}
  const rss: Record<string, Record<string, number>> = {}
  for (let round = 0; round <= ROUNDS; round++) {
    ctx.log(`mount: sequential round ${round}${round === 0 ? ' (warm-up)' : ''} of ${ROUNDS}`)
    for (const { key } of OBJECTS) {
      const into = round === 0 ? undefined : (seq[key] ??= {})
      // Each round starts with another mount, so that no peer always reads right after the server warmed up.
      for (let i = 0; i < PEERS.length; i++) {
        const peer = PEERS[(i + round) % PEERS.length]!
        const peak = await sequentialRun(peer, ctx, key, into)
        ;(rss[peer.name] ??= {}).sequential = Math.max(rss[peer.name]!.sequential ?? 0, peak)
      }
      if (key === OBJECTS[0]!.key) await sequentialRun(UNVERIFIED, ctx, key, into)
      await ceilingRun(ctx, key, into)
    }
  }

  const other: Record<string, OtherResult> = {}
  for (const peer of PEERS) {
    ctx.log(`mount: small files, listing and TTFB on ${peer.name}`)
    try {
      other[peer.name] = await measureOther(peer, ctx, smallNames)
    } catch (err) {
      ctx.log(`mount: ${peer.name} failed: ${(err as Error).message}`)
    }
  }
  dropCaches()
  const download = await timeIt(() => mapLimit(smallNames, 32, (n) => client.getBytes(`small/${n}`, 0, SMALL_SIZE - 1)))
  client.close()
  const minutes = (performance.now() - began) / 60_000
  ctx.log(`mount: done in ${minutes.toFixed(1)} min`)

  const rows: BenchRow[] = []
  rows.push({
    area: AREA,
    case: 'settings of each mount (all sequential runs: fresh mount, page cache dropped)',
    value: PEERS[0]!.flags,
    note: PEERS.slice(1)
      .map((p) => `${p.name}: ${p.flags}`)
      .join('; '),
  })
  const peerNote = (s: Samples, f: (x: Sample) => number, unit: string, digits = 0) =>
    PEERS.slice(1)
      .map((p) => `${p.name} ${spreadOf(s[p.name]?.cold, f, digits)} ${unit}`)
      .join(', ')
  for (const { key, writer } of OBJECTS) {
    const s = seq[key]!
    const ours = s.o3mount?.cold ?? []
    const s3fs = s.s3fs?.cold ?? []
    const mOurs = median(ours.map((x) => x.mbps))
    const mS3fs = median(s3fs.map((x) => x.mbps))
    const ceil = `ceiling (16 x 16 MiB ranged GETs) in-process ${spreadOf(s.ceiling?.['in-process'], (x) => x.mbps)} MB/s at ${spreadOf(s.ceiling?.['in-process'], (x) => x.cpuPerGiB, 1)} CPU-s/GiB, separate process ${spreadOf(s.ceiling?.['separate process'], (x) => x.mbps)} MB/s`
    rows.push({
      area: AREA,
      case: `cold sequential read, 512 MiB written by ${writer}, MB/s median (min-max) of ${ROUNDS}`,
      value: `${spreadOf(ours, (x) => x.mbps)} MB/s`,
      target: `>= 1.1x s3fs: ${verdict(mOurs >= 1.1 * mS3fs, mOurs / mS3fs)}`,
      note: `${peerNote(s, (x) => x.mbps, 'MB/s')}; ${ceil}`,
    })
    const cOurs = median(ours.map((x) => x.cpuPerGiB))
    const cS3fs = median(s3fs.map((x) => x.cpuPerGiB))
    rows.push({
      area: AREA,
      case: `CPU of the mount process per GiB in the same cold reads (${writer}), user+sys s`,
      value: `${spreadOf(ours, (x) => x.cpuPerGiB, 1)} s`,
      target: `<= s3fs: ${verdict(cOurs <= cS3fs, cOurs / cS3fs)}`,
      note: peerNote(s, (x) => x.cpuPerGiB, 's', 1),
    })
    rows.push({
      area: AREA,
      case: `warm re-read in the same mount (${writer})`,
      value: `${spreadOf(s.o3mount?.warm, (x) => x.mbps)} MB/s`,
      target: `>= 1 GB/s: ${median((s.o3mount?.warm ?? []).map((x) => x.mbps)) >= 1000 ? 'met' : 'not met'}`,
      note: PEERS.slice(1)
        .map((p) => `${p.name} ${spreadOf(s[p.name]?.warm, (x) => x.mbps)} MB/s`)
        .join(', '),
    })
  }
  const verified = seq[OBJECTS[0]!.key]!
  const [on, off] = [median((verified.o3mount?.cold ?? []).map((x) => x.mbps)), median((verified[UNVERIFIED.name]?.cold ?? []).map((x) => x.mbps))]
  rows.push({
    area: AREA,
    case: `cold sequential read of the o3upload-written object (its manifest makes every block verified) against ${UNVERIFIED.name}`,
    value: `${spreadOf(verified.o3mount?.cold, (x) => x.mbps)} MB/s`,
    target: `<= 10% slower: ${on >= 0.9 * off ? 'met' : 'not met'} (${(on / off).toFixed(2)}x)`,
    note: `${UNVERIFIED.name} ${spreadOf(verified[UNVERIFIED.name]?.cold, (x) => x.mbps)} MB/s, ${spreadOf(verified[UNVERIFIED.name]?.cold, (x) => x.cpuPerGiB, 1)} CPU-s/GiB; small files carry no manifest here`,
  })
  const peers = (f: (r: OtherResult) => string) =>
    PEERS.slice(1)
      .filter((p) => other[p.name])
      .map((p) => `${p.name} ${f(other[p.name]!)}`)
      .join(', ')
  const ours = other.o3mount
  if (ours) {
    const vsDownload = ours.small / download
    rows.push({
      area: AREA,
      case: `${SMALL_FILES} files of 64 KiB, 8 parallel readers, cold (one run)`,
      value: `${ours.small.toFixed(2)} s`,
      target: `<= 1.2x a 32-way parallel download (${download.toFixed(2)} s): ${verdict(vsDownload <= 1.2, vsDownload)}`,
      note: peers((r) => `${r.small.toFixed(2)} s`),
    })
    rows.push({
      area: AREA,
      case: `ls -lR over ${LISTING.toLocaleString('en')} objects (10 directories, one run)`,
      value: `${ours.ls.toFixed(2)} s`,
      note: peers((r) => `${r.ls.toFixed(2)} s`),
    })
    rows.push({
      area: AREA,
      case: `time to first byte, 4 KiB at ${TTFB_SAMPLES} random offsets of a cold 512 MiB file (open+read)`,
      value: `p50 ${percentile(ours.ttfb, 50).toFixed(1)} ms, p99 ${percentile(ours.ttfb, 99).toFixed(1)} ms`,
      note: peers((r) => `p50 ${percentile(r.ttfb, 50).toFixed(1)} / p99 ${percentile(r.ttfb, 99).toFixed(1)} ms`),
    })
  }
  rows.push({
    area: AREA,
    case: 'peak RSS of the mount in the sequential runs (MiB)',
    value: fmtRss(rss.o3mount ?? {}),
    note: `${PEERS.slice(1)
      .map((p) => `${p.name} ${fmtRss(rss[p.name] ?? {})}`)
      .join(', ')}; the mount bench took ${minutes.toFixed(1)} min`,
  })
  return rows
}
