/**
 * Trainer benchmark: the CNN trained one epoch on Fashion-MNIST on the CPU four ways, alternating,
 * 3 runs each so that a shared machine's load drifting during the run favours none: `o3train`
 * as users run it (the CLI, its defaults, progress on), the addon API with hand-set threads, and
 * Debian's python3-torch (scripts/bench/torch_peer.py, same model and data) with torch's defaults, and
 * the same with glibc malloc set as o3train sets its own (GLIBC_TUNABLES with the thresholds o3train
 * reports): PyTorch's CPU tuning guide names the allocator as a setting to tune, and the peer gets
 * its best one. Reports the median and range of samples/s and the accuracy after the epoch.
 */
import { execFile } from 'node:child_process'
import path from 'node:path'
import { promisify } from 'node:util'
import { Trainer, type MallocInfo } from '../../addon/index.js'
import { projectRoot } from '../../lib/paths.js'
import { alternate, formatSpread, spread } from './stats.js'
import type { BenchModule, BenchRow } from './types.js'

const DATA = '/usr/share/datasets/fashion-mnist'
const BATCH = 64
const THREADS = 2
const ROUNDS = 3
const PEER = path.join(projectRoot(), 'scripts/bench/torch_peer.py')
const O3TRAIN = path.join(projectRoot(), 'dist/trainer/cli.js')

interface EpochResult {
  samplesPerSecond: number
  accuracy: number
  /** The set-up o3train printed. */
  threads?: string
  malloc?: MallocInfo
}

const run$ = promisify(execFile)

async function api(): Promise<EpochResult> {
  const trainer = await Trainer.create({
    model: 'cnn',
    seed: 0,
    threads: THREADS,
    optimizer: { type: 'adam', lr: 1e-3 },
    data: { kind: 'mnist', root: DATA, split: 'train' },
    batchSize: BATCH,
  })
  try {
    const r = await trainer.trainEpoch()
    const e = await trainer.evaluate({ kind: 'mnist', root: DATA, split: 'test' })
    return { samplesPerSecond: r.samples / r.seconds, accuracy: e.accuracy }
  } finally {
    trainer.close()
  }
}

/** o3train with nothing but the data: its defaults (SGD, one epoch, evaluation, threads from the machine). */
async function cli(): Promise<EpochResult> {
  const { stdout } = await run$(process.execPath, [O3TRAIN, '--data', DATA], { maxBuffer: 64 << 20 })
  const summary = JSON.parse(stdout.trim().split('\n').at(-1)!) as {
    samplesPerSecond: number
    test: { accuracy: number }
    threads: { threads: number; cores: number; env: Record<string, string> }
    malloc: MallocInfo
  }
  const t = summary.threads
  return {
    samplesPerSecond: summary.samplesPerSecond,
    accuracy: summary.test.accuracy,
    malloc: summary.malloc,
    threads: `${t.threads} threads on ${t.cores} cores, ${Object.entries(t.env)
      .map(([k, v]) => `${k}=${v}`)
      .join(' ')}`,
  }
}

/** glibc's settings for the thresholds o3train set in its own process. */
function tunablesLike(m: MallocInfo | undefined): string {
  if (m?.setBy !== 'o3' || !m.mmapThreshold || !m.trimThreshold)
    throw new Error(`o3train did not set malloc itself (${JSON.stringify(m)}): nothing to give the peer`)
  return `glibc.malloc.mmap_threshold=${m.mmapThreshold}:glibc.malloc.trim_threshold=${m.trimThreshold}`
}

/** torch's own thread defaults, and no thread or malloc variables of ours (but `tunables`, given). */
async function python(tunables?: string): Promise<EpochResult> {
  const env = { ...process.env }
  for (const k of ['OPENBLAS_NUM_THREADS', 'OMP_WAIT_POLICY', 'GLIBC_TUNABLES', 'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_']) delete env[k]
  if (tunables) env.GLIBC_TUNABLES = tunables
  const { stdout } = await run$('/usr/bin/python3', [PEER, '--root', DATA, '--batch', String(BATCH), '--threads', '0', '--evaluate'], { env })
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as EpochResult
}

export const run: BenchModule = async (ctx) => {
  const what = `CNN, Fashion-MNIST 60k, CPU, batch ${BATCH}, one epoch`
  const logged = (side: string, fn: () => Promise<EpochResult>) => async (round: number) => {
    ctx.log(`trainer: round ${round}: ${side}`)
    const r = await fn()
    ctx.log(`trainer: ${side} ${r.samplesPerSecond.toFixed(0)} samples/s, accuracy ${r.accuracy}`)
    return r
  }
  // The thresholds come from o3train itself, so one run of it goes first (not counted).
  ctx.log('trainer: warm-up: o3train CLI, for the malloc settings it reports')
  const tunables = tunablesLike((await cli()).malloc)
  const runs = await alternate(ROUNDS, {
    cli: logged('o3train CLI, defaults', cli),
    api: logged(`addon API, ${THREADS} threads`, api),
    python: logged('python3-torch, torch defaults', () => python()),
    pythonTuned: logged(`python3-torch, GLIBC_TUNABLES=${tunables}`, () => python(tunables)),
  })
  const sps = (rs: EpochResult[]) => rs.map((r) => r.samplesPerSecond)
  const acc = (rs: EpochResult[]) => `${(spread(rs.map((r) => r.accuracy)).median * 100).toFixed(1)}%`
  // The peer at its best: the faster of its two malloc settings.
  const pyDefault = spread(sps(runs.python)).median
  const py = Math.max(pyDefault, spread(sps(runs.pythonTuned)).median)
  const ours = spread(sps(runs.cli)).median
  const ratio = ours / py
  ctx.metrics['trainer.cpu.samplesPerSecond'] = ours
  ctx.metrics['trainer.cpu.api.samplesPerSecond'] = spread(sps(runs.api)).median
  ctx.metrics['trainer.cpu.python.samplesPerSecond'] = py
  ctx.metrics['trainer.cpu.python.defaultMalloc.samplesPerSecond'] = pyDefault
  const note = `median (range) of ${ROUNDS} runs each, alternating; accuracy after the epoch`
  const rows: BenchRow[] = [
    {
      area: 'trainer',
      case: `${what}: o3train as users run it (${runs.cli[0]!.threads})`,
      value: `${formatSpread(sps(runs.cli))} samples/s`,
      target: `>= 1.0x python3-torch at the better of its two malloc settings: ${ratio >= 1 ? 'met' : 'not met'} (${ratio.toFixed(2)}x, medians)`,
      note: `${note} ${acc(runs.cli)} (SGD, lr 0.01)`,
    },
    {
      area: 'trainer',
      case: `${what}: addon API, ${THREADS} threads set by hand`,
      value: `${formatSpread(sps(runs.api))} samples/s`,
      note: `${note} ${acc(runs.api)} (Adam, lr 1e-3)`,
    },
    {
      area: 'trainer',
      case: `${what}: python3-torch 1.13.1, torch's defaults`,
      value: `${formatSpread(sps(runs.python))} samples/s`,
      note: `${note} ${acc(runs.python)} (Adam, lr 1e-3)`,
    },
    {
      area: 'trainer',
      case: `${what}: python3-torch 1.13.1, torch's defaults, glibc malloc set as o3train sets it (GLIBC_TUNABLES=${tunables})`,
      value: `${formatSpread(sps(runs.pythonTuned))} samples/s`,
      note: `${note} ${acc(runs.pythonTuned)} (Adam, lr 1e-3)`,
    },
  ]
  return rows
}
