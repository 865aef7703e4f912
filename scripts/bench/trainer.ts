/**
 * Trainer benchmark: the CNN trained one epoch on Fashion-MNIST on the CPU by the native addon and,
 * in the same run, by Debian's python3-torch (scripts/bench/torch_peer.py) with the same model,
 * data, batch size, optimizer and threads. Reports samples/s, epoch time and test accuracy, each
 * the mean of two fresh one-epoch runs per side in the order python, native, native, python, so
 * that a shared machine's load drifting during the run favours neither side.
 */
import { execFile } from 'node:child_process'
import path from 'node:path'
import { promisify } from 'node:util'
import { Trainer } from '../../addon/index.js'
import { projectRoot } from '../../lib/paths.js'
import type { BenchModule, BenchRow } from './types.js'

const DATA = '/usr/share/datasets/fashion-mnist'
const BATCH = 64
const THREADS = 2
const PEER = path.join(projectRoot(), 'scripts/bench/torch_peer.py')

interface EpochResult {
  samplesPerSecond: number
  seconds: number
  accuracy: number
}

async function native(): Promise<EpochResult> {
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
    return { samplesPerSecond: r.samples / r.seconds, seconds: r.seconds, accuracy: e.accuracy }
  } finally {
    trainer.close()
  }
}

async function python(): Promise<EpochResult> {
  const { stdout } = await promisify(execFile)(
    '/usr/bin/python3',
    [PEER, '--root', DATA, '--batch', String(BATCH), '--threads', String(THREADS), '--evaluate'],
    { env: { ...process.env, OPENBLAS_NUM_THREADS: '1' } },
  )
  return JSON.parse(stdout.trim().split('\n').at(-1)!) as EpochResult
}

function mean(runs: EpochResult[]): EpochResult {
  const avg = (f: (r: EpochResult) => number) => runs.reduce((s, r) => s + f(r), 0) / runs.length
  return { samplesPerSecond: avg((r) => r.samplesPerSecond), seconds: avg((r) => r.seconds), accuracy: avg((r) => r.accuracy) }
}

export const run: BenchModule = async (ctx) => {
  const what = `CNN, Fashion-MNIST 60k, CPU, batch ${BATCH}, ${THREADS} threads`
  const runs: Record<'python' | 'native', EpochResult[]> = { python: [], native: [] }
  for (const side of ['python', 'native', 'native', 'python'] as const) {
    ctx.log(`trainer: one epoch with ${side === 'python' ? 'python3-torch' : 'the native addon'} (${what})`)
    const r = side === 'python' ? await python() : await native()
    ctx.log(`trainer: ${side} ${r.samplesPerSecond.toFixed(0)} samples/s, ${r.seconds.toFixed(1)} s, accuracy ${r.accuracy}`)
    runs[side].push(r)
  }
  const py = mean(runs.python)
  const ours = mean(runs.native)
  const ratio = ours.samplesPerSecond / py.samplesPerSecond
  ctx.metrics['trainer.cpu.samplesPerSecond'] = ours.samplesPerSecond
  ctx.metrics['trainer.cpu.python.samplesPerSecond'] = py.samplesPerSecond
  const rows: BenchRow[] = [
    {
      area: 'trainer',
      case: `${what}: training throughput`,
      value: `${ours.samplesPerSecond.toFixed(0)} samples/s`,
      target: `>= 1.0x python3-torch: ${ratio >= 1 ? 'met' : 'not met'} (${ratio.toFixed(2)}x)`,
      note: `python3-torch 1.13.1: ${py.samplesPerSecond.toFixed(0)} samples/s (means of 2 epochs each, interleaved)`,
    },
    {
      area: 'trainer',
      case: `${what}: epoch time`,
      value: `${ours.seconds.toFixed(1)} s`,
      note: `python3-torch: ${py.seconds.toFixed(1)} s`,
    },
    {
      area: 'trainer',
      case: `${what}: test accuracy after one epoch`,
      value: `${(ours.accuracy * 100).toFixed(1)}%`,
      target: `>= 85%: ${ours.accuracy >= 0.85 ? 'met' : 'not met'}`,
      note: `python3-torch: ${(py.accuracy * 100).toFixed(1)}%`,
    },
  ]
  return rows
}
