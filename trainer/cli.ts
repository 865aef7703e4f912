#!/usr/bin/env node
/**
 * o3train: trains on files (an o3mount mountpoint, any directory, or an O3 location it mounts for
 * the run) and checkpoints to O3. The first SIGINT/SIGTERM stops at a step boundary and writes a
 * final checkpoint; a second exits at once, aborting any upload in flight.
 */
import { readFileSync } from 'node:fs'
import { readdir } from 'node:fs/promises'
import { join } from 'node:path'
import { CliError, ExitCode } from '../lib/cli/exit-codes.js'
import { onInternalError, runCli } from '../lib/cli/run-cli.js'
import { createLogger, type Logger } from '../lib/log.js'
import type { StatsSnapshot } from '../fs-driver/stats.js'
import { installShutdown } from '../lib/shutdown.js'
import { withDeadline } from '../lib/fs-deadline.js'
import { O3Error } from '../lib/o3/index.js'
import { loadSigner } from '../lib/content/signer.js'
import { distributedFromEnv, runUnderTorchrun } from './distributed.js'
import { NodeShare } from './node-share.js'
import { parseTrainArgs } from './options.js'
import { mountForRun, type RunMount } from './run-mount.js'
import { makeRunDir, removeTempDir, sweepDeadRuns } from './temp-dirs.js'
import { OrderAnnouncer } from './announce.js'
import { train, type TrainSummary } from './run.js'
import type { ThreadSetup } from './thread-setup.js'
import type { MallocInfo } from '../addon/index.js'

/** Aborted by a second signal; the forced-exit handler then owns the process's exit. */
const kill = new AbortController()

function threadLine(t: ThreadSetup): string {
  return `${t.threads} intra-op on ${t.cores} cores, ${Object.entries(t.env)
    .map(([k, v]) => `${k}=${v}`)
    .join(' ')}`
}

function mallocLine(m: MallocInfo): string {
  const mib = (n: number | undefined) => (n ? `${n / 2 ** 20} MiB` : "glibc's default")
  return m.setBy === 'o3' ? `mmap threshold ${mib(m.mmapThreshold)}, trim threshold ${mib(m.trimThreshold)}` : `set by ${m.setBy}`
}

function printSummary(s: TrainSummary): void {
  const lines = [
    `device: ${s.device.type} (${s.device.name}); threads: ${threadLine(s.threads)}; malloc: ${mallocLine(s.malloc)}`,
    s.resumedFrom ? `resumed from: ${s.resumedFrom.name} (step ${s.resumedFrom.step}, ${s.resumedFrom.cid})` : undefined,
    `trained: ${s.steps} steps, ${s.samples} samples in ${s.seconds.toFixed(1)} s (${s.samplesPerSecond.toFixed(0)} samples/s); run at step ${s.step}, ${s.epochsCompleted} epochs complete${s.stopped ? ' (stopped early)' : ''}`,
    s.test ? `test: accuracy ${(s.test.accuracy * 100).toFixed(2)}%, loss ${s.test.loss.toFixed(4)}` : undefined,
    ...s.checkpoints.map((c) => `checkpoint: ${c.name} ${c.cid}`),
  ]
  if (process.stdout.isTTY) console.log(lines.filter(Boolean).join('\n'))
  else console.log(JSON.stringify({ event: 'summary', ...s }))
}

async function main(): Promise<number> {
  const argv = process.argv.slice(2)
  const o = parseTrainArgs(argv)
  const log = createLogger('o3train')
  if (o.nprocPerNode !== undefined && process.env.WORLD_SIZE === undefined) return runUnderTorchrun(o.nprocPerNode, withoutNproc(argv), log)
  const signer = loadSigner()
  if (signer) log.info({ signer: signer.address }, 'checkpoint records will be signed')
  // What dead runs of this user left under the temp directory (kill -9, a crash) goes first.
  await sweepDeadRuns(log)
  let mount: RunMount | undefined
  let training: Promise<unknown> | undefined
  let nodeShare: NodeShare | undefined
  // This run's private directory under the temp dir (0700, named for this process): the data mount and its log.
  let runDir: string | undefined
  let succeeded = false
  let failed = false
  /** Removes what this run keeps under the temp directory (once its mount is gone); on a failure, first logs the data mount's last lines. */
  const removeTemp = () => {
    nodeShare?.close()
    nodeShare = undefined
    if (!runDir) return
    if (failed) log.warn({ mountLog: lastLines(join(runDir, 'mount.log'), 20) }, "the data mount's last log lines")
    failed = false
    if (removeTempDir(runDir, log)) runDir = undefined
  }
  const shutdown = installShutdown({
    onRequest: (sig) => {
      log.warn({ signal: sig }, 'stopping at the next step boundary and writing a final checkpoint; send it again to exit at once')
    },
    onForce: async (sig) => {
      log.warn({ signal: sig }, 'exiting now; aborting the upload in flight')
      kill.abort()
      // The writer aborts its multipart upload when the signal fires; wait for that, but not forever.
      let timer: NodeJS.Timeout | undefined
      await Promise.race([training?.catch(() => undefined), new Promise((r) => (timer = setTimeout(r, 10_000)))])
      clearTimeout(timer)
      await mount?.close().catch((err: Error) => log.warn({ err: err.message, mountpoint: mount?.dir }, 'could not clean up the mount for this run'))
      removeTemp()
    },
  })
  let dataDir = o.data
  // Ranks sharing a node share one o3mount (one cache) and one checkpoint download.
  nodeShare = NodeShare.open(distributedFromEnv(process.env, o.distTimeout), process.env, o.distTimeout, log)
  const mountsData = o.data.startsWith('o3://') && (!nodeShare || nodeShare.leader)
  if (mountsData) runDir = makeRunDir()
  let announcer: OrderAnnouncer | undefined
  try {
    if (o.data.startsWith('o3://') && !mountsData) {
      const shared = await nodeShare!.take<{ dir: string; control?: string }>('mount', 'the o3mount of this node')
      dataDir = shared.dir
      if (shared.control) announcer = new OrderAnnouncer(shared.control, '', log)
      log.info({ location: o.data, mountpoint: dataDir }, "reading the data through local rank 0's o3mount")
    } else if (runDir) {
      mount = await mountForRun(o.data, o, join(runDir, 'mount.log'), join(runDir, 'data'))
      const runMount = mount
      onInternalError(() => runMount.close())
      log.info({ location: o.data, mountpoint: mount.dir, pid: mount.pid }, 'mounted the data for this run')
      dataDir = mount.dir
      if (mount.controlSocket) announcer = new OrderAnnouncer(mount.controlSocket, '', log)
      nodeShare?.publish('mount', { dir: mount.dir, control: mount.controlSocket })
    } else if (o.mountControl) {
      announcer = OrderAnnouncer.forDataDir(o.mountControl, o.data, log)
    }
    const run = train(o, dataDir, {
      logger: log,
      progress: true,
      stop: shutdown.signal,
      kill: kill.signal,
      // o3mount verifies by default wherever a dataset manifest names the files.
      readsVerified: mount !== undefined,
      nodeShare,
      announcer,
      onStart: (s) =>
        log.info(
          {
            device: s.device,
            threads: threadLine(s.threads),
            malloc: mallocLine(s.malloc),
            dataDir: s.dataDir,
            step: s.step,
            epoch: s.epoch,
            resumedFrom: s.resumedFrom,
          },
          'training',
        ),
    })
    training = run
    printSummary(await run)
    succeeded = true
    if (mount && announcer) {
      await mount.close()
      reportAnnounced(mount.statsFile, log)
    }
    return 0
  } catch (err) {
    failed = true
    const broken = err instanceof O3Error ? undefined : await unreadable(dataDir)
    if (broken) {
      const where = mount ? `the o3mount this run started at ${mount.dir}` : `the mount under ${dataDir}, if it is one`
      throw new CliError(
        `reading the data failed (${(err as Error).message.split('\n')[0]}; ${dataDir}: ${broken}): check ${where}, then rerun; --resume auto continues from the last checkpoint`,
        ExitCode.training,
      )
    }
    // Whatever else stops training (a native error, a failed step) is a training failure, not a bug.
    if (!(err instanceof O3Error || err instanceof CliError)) throw new CliError((err as Error).message ?? String(err), ExitCode.training)
    throw err
  } finally {
    shutdown.dispose()
    announcer?.close()
    // The error that stopped training is the one to see; a failed clean-up is only reported beside it.
    try {
      await mount?.close().catch((err: unknown) => {
        if (succeeded) return Promise.reject(err)
        log.warn({ err: (err as Error).message, mountpoint: mount?.dir }, 'could not clean up the mount for this run')
      })
    } finally {
      removeTemp()
    }
  }
}

/** The last `n` lines of a log file, or none if it cannot be read. */
function lastLines(file: string, n: number): string[] {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-n)
  } catch {
    return []
  }
}

/** What the run's mount made of the orders announced to it, from the stats file it wrote last, as it stopped. */
function reportAnnounced(statsFile: string, log: Logger): void {
  let a: StatsSnapshot['announced'] | undefined
  try {
    a = (JSON.parse(readFileSync(statsFile, 'utf8')) as StatsSnapshot).announced
  } catch {
    return
  }
  if (a && a.files > 0) log.info({ ...a }, `the data mount had fetched ${a.used} of the ${a.files} files announced before the loader read them`)
}

/** argv less --nproc-per-node, for the ranks torchrun starts. */
function withoutNproc(argv: string[]): string[] {
  const out: string[] = []
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--nproc-per-node') i++
    else if (!argv[i].startsWith('--nproc-per-node=')) out.push(argv[i])
  }
  return out
}

/** Why the data directory cannot be read any more (a mount that died answers ENOTCONN or EIO, a stalled one nothing), if it cannot. */
async function unreadable(dir: string): Promise<string | undefined> {
  try {
    await withDeadline(readdir(dir), dir)
    return undefined
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    return code === 'ENOTCONN' || code === 'EIO' || code === 'ETIMEDOUT' ? code : undefined
  }
}

runCli('o3train', main, { exitOwnedElsewhere: () => kill.signal.aborted })
