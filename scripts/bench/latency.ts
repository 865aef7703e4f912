/**
 * o3mount at a distance (issue 21, "Latency hidden" and its targets at RTT 50 ms). Real O3 is tens
 * of milliseconds away; here every mount and client reaches the bench's S3 server through a
 * delaying TCP proxy in a process of its own (delay-proxy.ts, each direction held RTT / 2; its
 * 1 MiB queue per connection and direction bounds one connection at RTT 50 ms as a 2 MiB TCP window
 * would). RTT 0 goes through the same proxy without delay. Each run has a fresh mount and the page
 * cache dropped; ROUNDS rounds, each visiting every RTT and starting with another mount than the
 * last, give median (min-max):
 *
 * 1. cold sequential read of a 256 MiB object written by rclone (5 MiB parts): o3mount (defaults)
 *    against s3fs and rclone at the mount bench's best settings, the mount's CPU per GiB, and the ranged-GET
 *    ceiling (16 x 16 MiB in its own process) through the same proxy. Targets at RTT 50 ms: at
 *    least 0.9x o3mount's own RTT 0 figure, and 1.5x s3fs.
 * 2. 300 files of 64 KiB written by rclone in one directory, read whole by 8 readers, each taking
 *    the next name of the sorted listing: o3mount (it notices listing order itself) against s3fs and rclone,
 *    beside the ceiling: a fresh O3 client downloading the same files 32 at a time. Target at
 *    RTT 50 ms: at most 1.5x the ceiling.
 * 3. the same files in a seeded shuffled order, 8 readers: o3mount told the order first on its
 *    control socket (by o3train's own announcer, the timing including it), and o3mount not told.
 *    Target at RTT 50 ms: announced, at most 1.5x the ceiling.
 *
 * Full size at RTT 0, 20, 50 and 100 ms with three mounts: 5.5 minutes measured for two mounts
 * and three RTTs (2026-12-05); rclone and RTT 100 make it about 12.
 *
 * O3_BENCH_LATENCY_SMOKE=1 shrinks it to prove that it runs end to end (a 16 MiB object, 40 files,
 * RTT 0 and 50 ms, one round, no warm-up); its numbers mean nothing.
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { readFileSync, rmSync, writeFileSync } from 'node:fs'
import fs from 'node:fs/promises'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import type { StatsSnapshot } from '../../fs-driver/stats.js'
import { createLogger } from '../../lib/log.js'
import { createBucket, serverClient } from '../../test/support/s3-server.js'
import { shuffled } from '../../test/support/shuffle.js'
import { OrderAnnouncer } from '../../trainer/announce.js'
import {
  RCLONE,
  S3FS,
  ceilingRun,
  dropCaches,
  mountPeer,
  o3mount,
  rcloneCopyTo,
  rcloneWriteFiles,
  sequentialRun,
  spreadOf,
  threadsOf,
  timeIt,
  verdict,
  type Peer,
  type Samples,
  type StoredObject,
  type Transport,
} from './mount.js'
import { formatSpread, median } from './stats.js'
import type { BenchContext, BenchModule, BenchRow } from './types.js'
import { MiB, mapLimit } from './util.js'

const AREA = 'o3mount at a distance'
const BUCKET = 'bench-latency'
const SMOKE = process.env.O3_BENCH_LATENCY_SMOKE === '1'
const ROUNDS = SMOKE ? 1 : 3
const RTTS_MS = SMOKE ? [0, 50] : [0, 20, 50, 100]
/** The targets are set at this distance; the other RTTs show the trend. */
const TARGET_RTT_MS = 50
const SEQ: StoredObject = { bucket: BUCKET, key: 'seq/big.bin', size: (SMOKE ? 16 : 256) * MiB }
const FILES = SMOKE ? 40 : 300
const FILE_SIZE = 64 * 1024
const SMALL_DIR = 'small'
const READERS = 8
const CEILING_PARALLEL = 32
const SHUFFLE_SEED = 21
const DELAY_PROXY = fileURLToPath(new URL('./delay-proxy.js', import.meta.url))

interface DelayProxy {
  endpoint: string
  stop(): Promise<void>
}

/** Starts delay-proxy.ts in front of the server and waits for the endpoint it prints. */
async function startDelayProxy(ctx: BenchContext, delayMs: number): Promise<DelayProxy> {
  const child = spawn(process.execPath, [DELAY_PROXY, new URL(ctx.server.endpoint).port, String(delayMs)], { stdio: ['pipe', 'pipe', 'inherit'] })
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    child.kill('SIGTERM')
    await exited
  }
  try {
    const line = await new Promise<string>((resolve, reject) => {
      const lines = createInterface({ input: child.stdout! })
      lines.once('line', (l) => {
        lines.close()
        resolve(l)
      })
      child.once('exit', (code) => reject(new Error(`the delay proxy (${delayMs} ms per direction) exited with ${code} before it listened`)))
    })
    return { endpoint: (JSON.parse(line) as { endpoint: string }).endpoint, stop }
  } catch (err) {
    await stop()
    throw err
  }
}

/** A mount under test and, for o3mount, where it leaves its stats (written once more as it stops). */
interface Contender {
  peer: Peer
  statsFile?: string
  /** --control-socket: the order is announced there before the readers start. */
  controlSocket?: string
}

type Announced = StatsSnapshot['announced']

interface SmallRun {
  seconds: number
  /** What o3mount queued ahead, by listing order or announced, and what readers took of it. */
  announced?: Announced
}

/**
 * A fresh mount, page cache dropped: READERS readers read `order` whole, each taking the next path;
 * with a control socket the order is announced first, as o3train does (inside the timing).
 */
async function smallRun(c: Contender, ctx: BenchContext, tr: Transport, order: string[]): Promise<SmallRun> {
  if (c.statsFile) rmSync(c.statsFile, { force: true })
  const m = await mountPeer(c.peer, ctx, tr, BUCKET)
  let seconds: number
  try {
    dropCaches()
    seconds = await timeIt(async () => {
      const announcer = c.controlSocket ? new OrderAnnouncer(c.controlSocket, '', createLogger('bench-latency')) : undefined
      announcer?.announce(order)
      try {
        await mapLimit(order, READERS, async (p) => {
          const got = await fs.readFile(path.join(m.mp, p))
          if (got.length !== FILE_SIZE) throw new Error(`${c.peer.name} read ${got.length} bytes of ${p}, not ${FILE_SIZE}`)
        })
      } finally {
        announcer?.close()
      }
    })
  } finally {
    await m.stop()
  }
  if (!c.statsFile) return { seconds }
  const { announced } = JSON.parse(readFileSync(c.statsFile, 'utf8')) as StatsSnapshot
  if (c.controlSocket && (announced.refused > 0 || announced.files - announced.listingFiles !== order.length))
    throw new Error(`${c.peer.name} did not take the announced order: ${JSON.stringify(announced)}`)
  return { seconds, announced }
}

/** The ceiling of the small files: a fresh O3 client (cold connections, as a fresh mount has) fetching them CEILING_PARALLEL at a time. */
async function downloadRun(ctx: BenchContext, tr: Transport, keys: string[]): Promise<number> {
  dropCaches()
  const client = serverClient(ctx.server, BUCKET, { endpoint: tr.endpoint, maxSockets: CEILING_PARALLEL })
  try {
    return await timeIt(() => mapLimit(keys, CEILING_PARALLEL, (k) => client.getBytes(k, 0, FILE_SIZE - 1)))
  } finally {
    client.close()
  }
}

/** One RTT's results: sequential samples, and seconds (with o3mount's announce figures) per contender and case. */
interface AtRtt {
  seq: Samples
  listing: Record<string, SmallRun[]>
  shuffled: Record<string, SmallRun[]>
  download: number[]
}

/** Runs `f` and keeps its result; a failed run is logged and leaves its sample out, as the mount bench does. */
async function keep(ctx: BenchContext, into: SmallRun[], what: string, f: () => Promise<SmallRun>): Promise<void> {
  try {
    into.push(await f())
  } catch (err) {
    ctx.log(`latency: ${what} failed: ${(err as Error).message}`)
  }
}

/** `list` turned by `round` places, so that each round starts with another contender. */
const turn = <T>(list: T[], round: number): T[] => list.map((_, i) => list[(i + round) % list.length]!)

export const run: BenchModule = async (ctx) => {
  const began = performance.now()
  await createBucket(ctx.server, BUCKET)
  const direct: Transport = { name: 'HTTP', endpoint: ctx.server.endpoint }
  const names = Array.from({ length: FILES }, (_, i) => `f${String(i).padStart(4, '0')}.bin`)
  const listed = names.map((n) => `${SMALL_DIR}/${n}`).sort()
  const order = shuffled(listed, SHUFFLE_SEED)

  ctx.log(`latency: writing ${SEQ.size / MiB} MiB and ${FILES} x 64 KiB with rclone`)
  const big = path.join(ctx.workDir, 'latency-big.bin')
  writeFileSync(big, randomBytes(SEQ.size))
  await rcloneCopyTo(ctx, direct, big, BUCKET, SEQ.key)
  rmSync(big)
  await rcloneWriteFiles(ctx, direct, names, FILE_SIZE, BUCKET, SMALL_DIR)

  const statsFile = path.join(ctx.workDir, 'latency-o3mount-stats.json')
  const ours: Contender = { peer: o3mount('o3mount', 'defaults', ['--stats-file', statsFile]), statsFile }
  const controlSocket = path.join(ctx.workDir, 'latency-control.sock')
  const told: Contender = {
    peer: o3mount('o3mount, order announced', 'defaults and --control-socket', ['--stats-file', statsFile, '--control-socket', controlSocket]),
    statsFile,
    controlSocket,
  }
  const s3fs: Contender = { peer: S3FS }
  const rclone: Contender = { peer: RCLONE }
  const peers = [ours, s3fs, rclone]

  const results = new Map<number, AtRtt>(RTTS_MS.map((rtt) => [rtt, { seq: {}, listing: {}, shuffled: {}, download: [] }]))
  const proxies: DelayProxy[] = []
  try {
    for (const rtt of RTTS_MS) proxies.push(await startDelayProxy(ctx, rtt / 2))
    const over = (i: number): Transport => ({ name: 'HTTP', endpoint: proxies[i]!.endpoint })
    if (!SMOKE) {
      ctx.log('latency: warm-up (a sequential read by each mount at RTT 0, not counted)')
      for (const c of peers) await sequentialRun(c.peer, ctx, over(0), SEQ, undefined)
    }
    for (let round = 1; round <= ROUNDS; round++) {
      for (const [i, rtt] of RTTS_MS.entries()) {
        ctx.log(`latency: round ${round} of ${ROUNDS} at RTT ${rtt} ms`)
        const tr = over(i)
        const r = results.get(rtt)!
        for (const c of turn(peers, round)) await sequentialRun(c.peer, ctx, tr, SEQ, r.seq)
        await ceilingRun(ctx, tr, SEQ, r.seq)
        for (const c of turn(peers, round))
          await keep(ctx, (r.listing[c.peer.name] ??= []), `${c.peer.name} in listing order`, () => smallRun(c, ctx, tr, listed))
        r.download.push(await downloadRun(ctx, tr, listed))
        for (const c of turn([told, ours], round))
          await keep(ctx, (r.shuffled[c.peer.name] ??= []), `${c.peer.name} shuffled`, () => smallRun(c, ctx, tr, order))
      }
    }
  } finally {
    for (const p of proxies) await p.stop()
  }
  const minutes = (performance.now() - began) / 60_000
  ctx.log(`latency: done in ${minutes.toFixed(1)} min`)
  return rows(results, minutes, { ours, s3fs, rclone, told })
}

const fmtSecs = (xs: number[]) => (xs.length ? formatSpread(xs, 2) : 'n/a')
const secs = (xs: SmallRun[] | undefined) => fmtSecs((xs ?? []).map((x) => x.seconds))
const medianSecs = (xs: SmallRun[] | undefined) => median((xs ?? []).map((x) => x.seconds))
/** The median over runs of one of o3mount's announce figures. */
const fig = (xs: SmallRun[] | undefined, f: (a: Announced) => number) => median((xs ?? []).flatMap((x) => (x.announced ? [f(x.announced)] : []))).toFixed(0)
/** A ratio against a target: met or not at the target RTT; elsewhere the ratio alone. */
const against = (rtt: number, ok: boolean, ratio: number) => (rtt === TARGET_RTT_MS ? verdict(ok, ratio) : `${ratio.toFixed(2)}x`)

function rows(results: Map<number, AtRtt>, minutes: number, { ours, s3fs, rclone, told }: Record<'ours' | 's3fs' | 'rclone' | 'told', Contender>): BenchRow[] {
  const [o, s, rc, t] = [ours.peer.name, s3fs.peer.name, rclone.peer.name, told.peer.name]
  const out: BenchRow[] = [
    {
      area: AREA,
      case: 'method: every mount and client reaches the server through a delaying TCP proxy in its own process (each direction held RTT / 2); a fresh mount and the page cache dropped for every run; rounds alternate the mounts',
      value: `${o}: defaults`,
      note: `${s}: ${s3fs.peer.flags}; ${rc}: ${rclone.peer.flags}; the latency bench took ${minutes.toFixed(1)} min${SMOKE ? ' (O3_BENCH_LATENCY_SMOKE: tiny sizes, numbers mean nothing)' : ''}`,
    },
  ]
  const mbps = (x: { mbps: number }) => x.mbps
  const base = median((results.get(0)?.seq[o]?.cold ?? []).map(mbps))
  for (const [rtt, r] of results) {
    const [ourCold, theirCold] = [r.seq[o]?.cold, r.seq[s]?.cold]
    const mOurs = median((ourCold ?? []).map(mbps))
    const vsS3fs = mOurs / median((theirCold ?? []).map(mbps))
    const vsOwn = mOurs / base
    out.push({
      area: AREA,
      case: `cold sequential read at RTT ${rtt} ms, ${SEQ.size / MiB} MiB written by rclone, MB/s median (min-max) of ${ROUNDS}`,
      value: `${spreadOf(ourCold, mbps)} MB/s`,
      target:
        rtt === 0
          ? `${vsS3fs.toFixed(2)}x s3fs (targets at RTT ${TARGET_RTT_MS} ms)`
          : `>= 0.9x own at RTT 0: ${against(rtt, vsOwn >= 0.9, vsOwn)}; >= 1.5x s3fs: ${against(rtt, vsS3fs >= 1.5, vsS3fs)}`,
      note: `${s} ${spreadOf(theirCold, mbps)} MB/s; ${rc} ${spreadOf(r.seq[rc]?.cold, mbps)} MB/s; ceiling (16 x 16 MiB ranged GETs, own process) ${spreadOf(r.seq.ceiling?.cold, mbps)} MB/s`,
    })
  }
  const cpu = (x: { cpuPerGiB: number }) => x.cpuPerGiB
  const cpuAt = (who: string) => [...results].map(([rtt, r]) => `RTT ${rtt}: ${spreadOf(r.seq[who]?.cold, cpu, 2)}`).join(', ')
  out.push({
    area: AREA,
    case: "CPU of the mount's process tree per GiB in the same cold sequential reads, user+sys s",
    value: cpuAt(o),
    note: `${s} ${cpuAt(s)}; ${rc} ${cpuAt(rc)}; ${o} per thread at RTT ${TARGET_RTT_MS} ms (median s/GiB): ${threadsOf(results.get(TARGET_RTT_MS)?.seq[o]?.cold)}`,
  })
  for (const [rtt, r] of results) {
    const ceiling = `a ${CEILING_PARALLEL}-way download (${fmtSecs(r.download)} s)`
    const x = medianSecs(r.listing[o]) / median(r.download)
    out.push({
      area: AREA,
      case: `${FILES} x 64 KiB written by rclone in one directory, ${READERS} readers in listing order, cold, RTT ${rtt} ms, s median (min-max) of ${ROUNDS}`,
      value: `${secs(r.listing[o])} s`,
      target: `<= 1.5x ${ceiling}: ${against(rtt, x <= 1.5, x)}`,
      note: `${s} ${secs(r.listing[s])} s; ${rc} ${secs(r.listing[rc])} s; ${o} queued ${fig(r.listing[o], (a) => a.listingFiles)} files itself by listing order, readers took ${fig(r.listing[o], (a) => a.used)} of them`,
    })
  }
  for (const [rtt, r] of results) {
    const x = medianSecs(r.shuffled[t]) / median(r.download)
    out.push({
      area: AREA,
      case: `the same files in a seeded shuffled order, ${READERS} readers, the order announced first on --control-socket (o3train's announcer, inside the timing), RTT ${rtt} ms, s median (min-max) of ${ROUNDS}`,
      value: `${secs(r.shuffled[t])} s`,
      target: `<= 1.5x the same download (${fmtSecs(r.download)} s): ${against(rtt, x <= 1.5, x)}`,
      note: `not announced: ${secs(r.shuffled[o])} s (${fig(r.shuffled[o], (a) => a.listingFiles)} files queued by listing order by chance); announced: readers took ${fig(r.shuffled[t], (a) => a.used)} of ${FILES} from what was fetched ahead`,
    })
  }
  return out
}
