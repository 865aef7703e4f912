import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdirSync, rmSync, writeFileSync } from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import { setTimeout as sleep } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'
import { findMount, fusermountUnmount } from '../../fs-driver/mount-table.js'
import { MOUNT_NODE_FLAGS } from '../../fs-driver/node-flags.js'
import { createBucket, serverClient } from '../../test/support/s3-server.js'
import { startTlsProxy, type TlsProxy } from '../../test/support/tls-proxy.js'
import { peakRss, threadSplitPerGiB, threadTicks, treeCpuSeconds } from './proc.js'
import { formatSpread, median } from './stats.js'
import type { BenchContext, BenchModule, BenchRow } from './types.js'
import { MiB, benchEnv, mapLimit, mbps, percentile } from './util.js'

const AREA = 'o3mount'
const BUCKET = 'bench-mount'
const SIZE = 512 * MiB
/** Counted rounds of every case, after one warm-up round of the sequential reads. */
const ROUNDS = 3
const SMALL_FILES = 2_000
const SMALL_SIZE = 64 * 1024
const SMALL_READERS = 8
/** The ceiling of the small-file case: a download of the same files with this many in flight. */
const SMALL_CEILING_PARALLEL = 32
const LISTING = 10_000
const TTFB_SAMPLES = 100
/** o3mount's default --kernel-readahead, set on the peers' mounts too. */
const READ_AHEAD_KB = 32 * 1024
/** o3mount's default --cache-mem: the issue bounds the mount's RSS by it plus 64 MiB. */
const CACHE_MEM = 512 * MiB
const RSS_SLACK = 64 * MiB
const CLI = fileURLToPath(new URL('../../fs-driver/cli.js', import.meta.url))
const UPLOAD_CLI = fileURLToPath(new URL('../../upload/cli.js', import.meta.url))
const RANGED_GET = fileURLToPath(new URL('./ranged-get.js', import.meta.url))
const exec = promisify(execFile)

/** How the mounts reach the server: directly, or through a TLS terminator with a private CA (as every real O3 user connects). */
export interface Transport {
  name: 'HTTP' | 'HTTPS'
  endpoint: string
  /** PEM of the private CA, for HTTPS. */
  caFile?: string
}

/** The same bytes, written by another S3 client (rclone, 5 MiB parts) and by ours; rclone's is read over both transports. */
const OBJECTS = [
  { key: 'seq/other/big.bin', writer: 'rclone copyto (5 MiB parts)', transports: ['HTTP', 'HTTPS'] },
  { key: 'seq/ours/big.bin', writer: 'o3upload (16 MiB parts, with a dataset manifest)', transports: ['HTTP'] },
] as const

/** A FUSE mount under test, each with its documented best settings, run in the foreground so that we own its PID. */
export interface Peer {
  name: string
  /** The settings, as written into the table. */
  flags: string
  start(mp: string, ctx: BenchContext, tr: Transport, bucket: string): ChildProcess
}

/** An object a bench reads whole. */
export interface StoredObject {
  bucket: string
  key: string
  size: number
}

/** The environment every child gets: the machine sets CA variables of its own, which must not leak into either transport. */
function cleanEnv(ctx: BenchContext, tr: Transport): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...benchEnv(ctx), O3_ENDPOINT: tr.endpoint }
  for (const k of ['AWS_CA_BUNDLE', 'CURL_CA_BUNDLE', 'NODE_EXTRA_CA_CERTS', 'SSL_CERT_FILE', 'O3_CA_BUNDLE']) delete env[k]
  return env
}

export function rcloneEnv(ctx: BenchContext, tr: Transport): NodeJS.ProcessEnv {
  return {
    ...cleanEnv(ctx, tr),
    RCLONE_CONFIG_O3_TYPE: 's3',
    RCLONE_CONFIG_O3_PROVIDER: 'Other',
    RCLONE_CONFIG_O3_ENDPOINT: tr.endpoint,
    RCLONE_CONFIG_O3_REGION: ctx.server.region,
    RCLONE_CONFIG_O3_FORCE_PATH_STYLE: 'true',
    RCLONE_CONFIG_O3_ACCESS_KEY_ID: ctx.server.accessKeyId,
    RCLONE_CONFIG_O3_SECRET_ACCESS_KEY: ctx.server.secretAccessKey,
  }
}

/** s3fs's documented settings for large sequential reads (parallel multipart GETs, big parts, stat cache, kernel cache). */
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

/** o3mount with `extra` flags; `flags` describes them in the table. */
export const o3mount = (name: string, flags: string, extra: string[]): Peer => ({
  name,
  flags,
  start: (mp, ctx, tr, bucket) =>
    spawn(process.execPath, [...MOUNT_NODE_FLAGS, CLI, mp, bucket, '--stats-interval', '1h', ...(tr.caFile ? ['--ca-bundle', tr.caFile] : []), ...extra], {
      env: cleanEnv(ctx, tr),
      stdio: 'ignore',
    }),
})

/** The same mount with verification off: o3upload's manifest makes the default mount verify its object. */
const UNVERIFIED = o3mount('o3mount --verify off', 'defaults and --verify off', ['--verify', 'off'])

export const S3FS: Peer = {
  name: 's3fs',
  flags: `-o ${S3FS_FLAGS.join(',')}, read_ahead_kb ${READ_AHEAD_KB}; CURL_CA_BUNDLE over HTTPS`,
  start: (mp, ctx, tr, bucket) =>
    spawn(
      's3fs',
      [
        bucket,
        mp,
        '-f',
        '-o',
        `url=${tr.endpoint}`,
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
        env: {
          ...cleanEnv(ctx, tr),
          AWSACCESSKEYID: ctx.server.accessKeyId,
          AWSSECRETACCESSKEY: ctx.server.secretAccessKey,
          ...(tr.caFile ? { CURL_CA_BUNDLE: tr.caFile } : {}),
        },
        stdio: 'ignore',
      },
    ),
}

/** rclone mount with its VFS cache: the third peer the issues name. */
export const RCLONE: Peer = {
  name: 'rclone',
  flags: `${RCLONE_FLAGS.filter((f) => f !== '--read-only').join(' ')} (a fresh cache per mount), read_ahead_kb ${READ_AHEAD_KB}; --ca-cert over HTTPS`,
  start: (mp, ctx, tr, bucket) => {
    const cache = path.join(ctx.workDir, 'rclone-cache')
    rmSync(cache, { recursive: true, force: true })
    const ca = tr.caFile ? ['--ca-cert', tr.caFile] : []
    return spawn('rclone', ['mount', `o3:${bucket}`, mp, ...RCLONE_FLAGS, '--cache-dir', cache, ...ca], { env: rcloneEnv(ctx, tr), stdio: 'ignore' })
  },
}

const PEERS: Peer[] = [o3mount('o3mount', 'defaults (--cache-mem 512M, --kernel-readahead 32M; --ca-bundle over HTTPS)', []), S3FS, RCLONE]

export interface Running {
  mp: string
  child: ChildProcess
  /** Unmounts, ends the process and returns its peak RSS. */
  stop(): Promise<number>
}

/** Mounts `bucket` and waits until the mount answers. */
export async function mountPeer(peer: Peer, ctx: BenchContext, tr: Transport, bucket = BUCKET): Promise<Running> {
  const mp = path.join(ctx.workDir, `mnt-${peer.name.replace(/\W+/g, '-')}`)
  mkdirSync(mp, { recursive: true })
  const child = peer.start(mp, ctx, tr, bucket)
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
      throw new Error(`${peer.name} did not mount ${bucket} at ${mp} over ${tr.name}`)
    }
  }
  // The kernel readahead o3mount sets for itself, for every mount alike.
  if (!peer.name.startsWith('o3mount')) writeFileSync(`/sys/class/bdi/${findMount(mp)!.device}/read_ahead_kb`, `${READ_AHEAD_KB}\n`)
  return { mp, child, stop }
}

/** A cold run that cannot drop the page cache would measure nothing: it fails instead. */
export function dropCaches(): void {
  try {
    execFileSync('sync')
    writeFileSync('/proc/sys/vm/drop_caches', '3')
  } catch (err) {
    throw new Error(`cannot drop the page cache (${(err as NodeJS.ErrnoException).code}); the mount bench must run as root`)
  }
}

export async function timeIt(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now()
  await fn()
  return (performance.now() - t0) / 1000
}

const readAll = (file: string) => exec('dd', [`if=${file}`, 'of=/dev/null', 'bs=1M'])

/** A read of a whole object: MB/s, the mount's (or reader's) CPU seconds per GiB, and per thread where measured. */
export interface Sample {
  mbps: number
  cpuPerGiB: number
  threads?: Record<string, number>
}
const sample = (size: number, seconds: number, cpu: number, threads?: Record<string, number>): Sample => ({
  mbps: mbps(size, seconds),
  cpuPerGiB: (cpu * (1 << 30)) / size,
  threads,
})

/** Per transport and object: peer name (or ceiling) -> case -> samples. */
export type Samples = Record<string, Record<string, Sample[]>>

function add(into: Samples, who: string, what: string, s: Sample): void {
  ;((into[who] ??= {})[what] ??= []).push(s)
}

/** Peak RSS per peer and case, over all its runs. */
type Rss = Record<string, Record<string, number>>
function addRss(rss: Rss, who: string, what: string, bytes: number): void {
  const r = (rss[who] ??= {})
  r[what] = Math.max(r[what] ?? 0, bytes)
}

/**
 * Fresh mount, page cache dropped: a cold read (with the mount's CPU, whole process tree and per
 * thread), then a re-read from the mount's own cache with the page cache dropped again, then a
 * warm re-read from the page cache.
 */
export async function sequentialRun(peer: Peer, ctx: BenchContext, tr: Transport, obj: StoredObject, into: Samples | undefined): Promise<number> {
  const m = await mountPeer(peer, ctx, tr, obj.bucket)
  let peak = 0
  try {
    const pid = m.child.pid!
    const file = path.join(m.mp, obj.key)
    dropCaches()
    const [cpu0, threads0] = [treeCpuSeconds(pid), threadTicks(pid)]
    const cold = await timeIt(() => readAll(file))
    const [cpu1, threads1] = [treeCpuSeconds(pid), threadTicks(pid)]
    dropCaches()
    const cached = await timeIt(() => readAll(file))
    const cpu2 = treeCpuSeconds(pid)
    const warm = await timeIt(() => readAll(file))
    if (into) {
      add(into, peer.name, 'cold', sample(obj.size, cold, cpu1 - cpu0, threadSplitPerGiB(threads0, threads1, obj.size)))
      add(into, peer.name, 'own cache', sample(obj.size, cached, cpu2 - cpu1))
      add(into, peer.name, 'warm', sample(obj.size, warm, 0))
    }
  } finally {
    peak = await m.stop()
  }
  return peak
}

/** The ceiling: the same object after a cache drop, by 16 parallel 16 MiB ranged GETs, in a process of its own. */
export async function ceilingRun(ctx: BenchContext, tr: Transport, obj: StoredObject, into: Samples | undefined): Promise<void> {
  dropCaches()
  const env = { ...cleanEnv(ctx, tr), ...(tr.caFile ? { O3_CA_BUNDLE: tr.caFile } : {}) }
  const { stdout } = await exec(process.execPath, [RANGED_GET, obj.bucket, obj.key, '16', String(16 * MiB)], { env })
  const child = JSON.parse(stdout) as { seconds: number; cpuSeconds: number }
  if (into) add(into, 'ceiling', 'cold', sample(obj.size, child.seconds, child.cpuSeconds))
}

interface OtherResult {
  small: number
  ls: number
  ttfb: number[]
}

/** One round on fresh mounts: small files with 8 readers, a listing, time to first byte; peak RSS of each. */
async function measureOther(peer: Peer, ctx: BenchContext, tr: Transport, smallNames: string[], rss: Rss): Promise<OtherResult> {
  const res = {} as OtherResult
  let m = await mountPeer(peer, ctx, tr)
  try {
    dropCaches()
    res.small = await timeIt(() => mapLimit(smallNames, SMALL_READERS, (n) => fs.readFile(path.join(m.mp, 'small', n))))
    addRss(rss, peer.name, 'small', await m.stop())
    m = await mountPeer(peer, ctx, tr)
    res.ls = await timeIt(() => exec('ls', ['-lR', path.join(m.mp, 'listing')], { maxBuffer: 1 << 26 }))
    addRss(rss, peer.name, 'ls', await m.stop())
    m = await mountPeer(peer, ctx, tr)
    dropCaches()
    const ttfb: number[] = []
    for (let i = 0; i < TTFB_SAMPLES; i++) {
      const pos = Math.floor(Math.random() * (SIZE - 4096))
      const t0 = performance.now()
      const fh = await fs.open(path.join(m.mp, OBJECTS[0].key))
      await fh.read(Buffer.alloc(4096), 0, 4096, pos)
      ttfb.push(performance.now() - t0)
      await fh.close()
    }
    res.ttfb = ttfb.sort((a, b) => a - b)
  } finally {
    addRss(rss, peer.name, 'ttfb', await m.stop())
  }
  return res
}

/** Uploads a local file as `bucket/key` with rclone, in 5 MiB parts: an object as another S3 client writes it. */
export async function rcloneCopyTo(ctx: BenchContext, tr: Transport, file: string, bucket: string, key: string): Promise<void> {
  await exec('rclone', ['copyto', file, `o3:${bucket}/${key}`, '--s3-chunk-size', '5M', '--s3-upload-cutoff', '5M'], { env: rcloneEnv(ctx, tr) })
}

/** Writes `names` (each `size` bytes, the same random ones) below `bucket/prefix` with rclone, 32 at a time. */
export async function rcloneWriteFiles(ctx: BenchContext, tr: Transport, names: string[], size: number, bucket: string, prefix: string): Promise<void> {
  const dir = path.join(ctx.workDir, 'small-src')
  mkdirSync(dir, { recursive: true })
  const body = randomBytes(size)
  for (const n of names) writeFileSync(path.join(dir, n), body)
  await exec('rclone', ['copy', dir, `o3:${bucket}/${prefix}`, '--transfers', '32'], { env: rcloneEnv(ctx, tr) })
  rmSync(dir, { recursive: true, force: true })
}

/** Writes the same random bytes with rclone (5 MiB parts) and with our uploader. */
async function writeObjects(ctx: BenchContext, tr: Transport): Promise<void> {
  const dir = path.join(ctx.workDir, 'seq-src')
  mkdirSync(dir, { recursive: true })
  const file = path.join(dir, 'big.bin')
  writeFileSync(file, randomBytes(SIZE))
  await rcloneCopyTo(ctx, tr, file, BUCKET, OBJECTS[0].key)
  await exec(process.execPath, [UPLOAD_CLI, dir, `o3://${BUCKET}/seq/ours`], { env: cleanEnv(ctx, tr) })
  rmSync(dir, { recursive: true, force: true })
}

/** `median (min-max)` of one measure over a peer's samples. */
export function spreadOf(xs: Sample[] | undefined, f: (s: Sample) => number, digits = 0): string {
  return xs?.length ? formatSpread(xs.map(f), digits) : 'n/a'
}
export const verdict = (ok: boolean, ratio: number) => `${ok ? 'met' : 'not met'} (${ratio.toFixed(2)}x)`
const fmtMiB = (r: Record<string, number>) =>
  Object.entries(r)
    .map(([k, v]) => `${k} ${Math.round(v / MiB)}`)
    .join(', ')

/** Median CPU seconds per GiB of each thread group over the cold samples, largest first. */
export function threadsOf(xs: Sample[] | undefined): string {
  const names = new Set((xs ?? []).flatMap((x) => Object.keys(x.threads ?? {})))
  return [...names]
    .map((n) => [n, median((xs ?? []).map((x) => x.threads?.[n] ?? 0))] as const)
    .filter(([, v]) => v >= 0.01)
    .sort((a, b) => b[1] - a[1])
    .map(([n, v]) => `${n} ${v.toFixed(2)}`)
    .join(', ')
}

/**
 * o3mount against s3fs and rclone mount, each with its documented best settings, on the same
 * server over plain HTTP and over HTTPS (stunnel with a private CA in front of it): cold
 * sequential reads of objects written by another client and by ours (a fresh mount and dropped
 * caches for each, runs alternating between mounts, one warm-up round then ROUNDS counted), the
 * mount's CPU per GiB for its whole process tree and per thread, a re-read from the mount's own
 * cache, the ranged-GET ceiling in the same rounds; then ROUNDS alternating rounds of small files,
 * listing and time to first byte over HTTP, each small-file round beside a 32-way download of the
 * same files; peak RSS of every case.
 */
export const run: BenchModule = async (ctx) => {
  const began = performance.now()
  dropCaches()
  await createBucket(ctx.server, BUCKET)
  let tls: TlsProxy | undefined
  const smallNames = Array.from({ length: SMALL_FILES }, (_, i) => `f${String(i).padStart(4, '0')}.bin`)
  const seq: Record<string, Samples> = {}
  const rss: Rss = {}
  const other: Record<string, OtherResult[]> = {}
  const download: number[] = []
  try {
    tls = await startTlsProxy({ targetPort: Number(new URL(ctx.server.endpoint).port) })
    const transports: Transport[] = [
      { name: 'HTTP', endpoint: ctx.server.endpoint },
      { name: 'HTTPS', endpoint: tls.endpoint, caFile: tls.caFile },
    ]
    const http = transports[0]!
    const client = serverClient(ctx.server, BUCKET, { maxSockets: SMALL_CEILING_PARALLEL })
    try {
      ctx.log('mount: writing a 512 MiB object twice (rclone 5 MiB parts, o3upload), 2,000 x 64 KiB (rclone) and 10,000 tiny objects')
      await writeObjects(ctx, http)
      await rcloneWriteFiles(ctx, http, smallNames, SMALL_SIZE, BUCKET, 'small')
      await mapLimit(
        Array.from({ length: LISTING }, (_, i) => i),
        16,
        (i) => client.put(`listing/d${i % 10}/o${i}.txt`, `${i}\n`),
      )

      for (let round = 0; round <= ROUNDS; round++) {
        ctx.log(`mount: sequential round ${round}${round === 0 ? ' (warm-up)' : ''} of ${ROUNDS}`)
        for (const { key, transports: over } of OBJECTS) {
          for (const tr of transports.filter((x) => (over as readonly string[]).includes(x.name))) {
            const into = round === 0 ? undefined : (seq[`${tr.name} ${key}`] ??= {})
            const obj = { bucket: BUCKET, key, size: SIZE }
            // Each round starts with another mount, so that no peer always reads right after the server warmed up.
            for (let i = 0; i < PEERS.length; i++) {
              const peer = PEERS[(i + round) % PEERS.length]!
              addRss(rss, peer.name, `sequential ${tr.name}`, await sequentialRun(peer, ctx, tr, obj, into))
            }
            if (key === OBJECTS[1].key) await sequentialRun(UNVERIFIED, ctx, tr, obj, into)
            await ceilingRun(ctx, tr, obj, into)
          }
        }
      }

      for (let round = 1; round <= ROUNDS; round++) {
        for (let i = 0; i < PEERS.length; i++) {
          const peer = PEERS[(i + round) % PEERS.length]!
          ctx.log(`mount: small files, listing and TTFB on ${peer.name}, round ${round} of ${ROUNDS}`)
          try {
            ;(other[peer.name] ??= []).push(await measureOther(peer, ctx, http, smallNames, rss))
          } catch (err) {
            ctx.log(`mount: ${peer.name} failed: ${(err as Error).message}`)
          }
        }
        dropCaches()
        download.push(await timeIt(() => mapLimit(smallNames, SMALL_CEILING_PARALLEL, (n) => client.getBytes(`small/${n}`, 0, SMALL_SIZE - 1))))
      }
    } finally {
      client.close()
    }
  } finally {
    await tls?.close()
  }
  const minutes = (performance.now() - began) / 60_000
  ctx.log(`mount: done in ${minutes.toFixed(1)} min`)

  const rows: BenchRow[] = []
  rows.push({
    area: AREA,
    case: 'settings of each mount (every sequential run: a fresh mount, page cache dropped)',
    value: PEERS[0]!.flags,
    note: PEERS.slice(1)
      .map((p) => `${p.name}: ${p.flags}`)
      .join('; '),
  })
  const peerNote = (s: Samples, what: string, f: (x: Sample) => number, unit: string, digits = 0) =>
    PEERS.slice(1)
      .map((p) => `${p.name} ${spreadOf(s[p.name]?.[what], f, digits)} ${unit}`)
      .join(', ')
  for (const { key, writer, transports: over } of OBJECTS) {
    for (const trName of over) {
      const s = seq[`${trName} ${key}`]!
      const ours = s.o3mount?.cold ?? []
      const s3fs = s.s3fs?.cold ?? []
      const [mOurs, mS3fs] = [median(ours.map((x) => x.mbps)), median(s3fs.map((x) => x.mbps))]
      const ceiling = `ceiling (16 x 16 MiB ranged GETs, own process) ${spreadOf(s.ceiling?.cold, (x) => x.mbps)} MB/s at ${spreadOf(s.ceiling?.cold, (x) => x.cpuPerGiB, 2)} CPU-s/GiB`
      rows.push({
        area: AREA,
        case: `cold sequential read over ${trName}, 512 MiB written by ${writer}, MB/s median (min-max) of ${ROUNDS}`,
        value: `${spreadOf(ours, (x) => x.mbps)} MB/s`,
        target: `>= 1.2x s3fs: ${verdict(mOurs >= 1.2 * mS3fs, mOurs / mS3fs)}`,
        note: `${peerNote(s, 'cold', (x) => x.mbps, 'MB/s')}; ${ceiling}`,
      })
      const [cOurs, cS3fs] = [median(ours.map((x) => x.cpuPerGiB)), median(s3fs.map((x) => x.cpuPerGiB))]
      rows.push({
        area: AREA,
        case: `CPU of the mount's process tree per GiB in the same cold reads (${trName}, ${writer}), user+sys s`,
        value: `${spreadOf(ours, (x) => x.cpuPerGiB, 2)} s`,
        target: `<= 0.75x s3fs: ${verdict(cOurs <= 0.75 * cS3fs, cOurs / cS3fs)}`,
        note: `${peerNote(s, 'cold', (x) => x.cpuPerGiB, 's', 2)}; o3mount per thread (median s/GiB): ${threadsOf(ours)}`,
      })
      const own = s.o3mount?.['own cache'] ?? []
      rows.push({
        area: AREA,
        case: `re-read from the mount's own cache, page cache dropped (${trName}, ${writer})`,
        value: `${spreadOf(own, (x) => x.mbps)} MB/s at ${spreadOf(own, (x) => x.cpuPerGiB, 2)} CPU-s/GiB`,
        target: `>= 2,000 MB/s: ${median(own.map((x) => x.mbps)) >= 2000 ? 'met' : 'not met'}`,
        note: `${peerNote(s, 'own cache', (x) => x.mbps, 'MB/s')}; warm page cache: o3mount ${spreadOf(s.o3mount?.warm, (x) => x.mbps)} MB/s, ${peerNote(s, 'warm', (x) => x.mbps, 'MB/s')}`,
      })
    }
  }
  const verified = seq[`HTTP ${OBJECTS[1].key}`]!
  const [on, off] = [median((verified.o3mount?.cold ?? []).map((x) => x.mbps)), median((verified[UNVERIFIED.name]?.cold ?? []).map((x) => x.mbps))]
  rows.push({
    area: AREA,
    case: `cold sequential read of the o3upload-written object (its manifest makes every block verified) against ${UNVERIFIED.name}`,
    value: `${spreadOf(verified.o3mount?.cold, (x) => x.mbps)} MB/s at ${spreadOf(verified.o3mount?.cold, (x) => x.cpuPerGiB, 2)} CPU-s/GiB`,
    target: `<= 10% slower: ${on >= 0.9 * off ? 'met' : 'not met'} (${(on / off).toFixed(2)}x)`,
    note: `${UNVERIFIED.name} ${spreadOf(verified[UNVERIFIED.name]?.cold, (x) => x.mbps)} MB/s, ${spreadOf(verified[UNVERIFIED.name]?.cold, (x) => x.cpuPerGiB, 2)} CPU-s/GiB; the small files carry no manifest`,
  })
  const fmt = (xs: number[], digits = 2) => (xs.length ? formatSpread(xs, digits) : 'n/a')
  const peers = (f: (r: OtherResult[]) => string) =>
    PEERS.slice(1)
      .map((p) => `${p.name} ${f(other[p.name] ?? [])}`)
      .join(', ')
  const ours = other.o3mount ?? []
  const vsDownload = median(ours.map((r) => r.small)) / median(download)
  rows.push({
    area: AREA,
    case: `${SMALL_FILES} files of 64 KiB written by rclone, ${SMALL_READERS} parallel readers, cold, s median (min-max) of ${ROUNDS}`,
    value: `${fmt(ours.map((r) => r.small))} s`,
    target: `<= 1.2x a ${SMALL_CEILING_PARALLEL}-way parallel download (${fmt(download)} s): ${verdict(vsDownload <= 1.2, vsDownload)}`,
    note: peers((r) => `${fmt(r.map((x) => x.small))} s`),
  })
  rows.push({
    area: AREA,
    case: `ls -lR over ${LISTING.toLocaleString('en')} objects (10 directories), s median (min-max) of ${ROUNDS}`,
    value: `${fmt(ours.map((r) => r.ls))} s`,
    note: peers((r) => `${fmt(r.map((x) => x.ls))} s`),
  })
  const p = (r: OtherResult[], q: number) =>
    fmt(
      r.map((x) => percentile(x.ttfb, q)),
      1,
    )
  rows.push({
    area: AREA,
    case: `time to first byte, 4 KiB at ${TTFB_SAMPLES} random offsets of a cold 512 MiB file (open+read), ms, median (min-max) of ${ROUNDS} runs`,
    value: `p50 ${p(ours, 50)}, p99 ${p(ours, 99)}`,
    note: peers((r) => `p50 ${p(r, 50)} / p99 ${p(r, 99)}`),
  })
  const oursPeak = Math.max(...Object.values(rss.o3mount ?? {}))
  rows.push({
    area: AREA,
    case: 'peak RSS of the mount process per case (MiB)',
    value: fmtMiB(rss.o3mount ?? {}),
    target: `<= --cache-mem + 64 MiB (${(CACHE_MEM + RSS_SLACK) / MiB}) in every case: ${oursPeak <= CACHE_MEM + RSS_SLACK ? 'met' : 'not met'}`,
    note: `${PEERS.slice(1)
      .map((x) => `${x.name} ${fmtMiB(rss[x.name] ?? {})}`)
      .join('; ')}; the mount bench took ${minutes.toFixed(1)} min`,
  })
  return rows
}
