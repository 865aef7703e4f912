/**
 * One epoch as users run it: a fresh `o3train` process (CLI, default threads, batch 64, no
 * evaluation), timed from its start to its exit, so that a run's own mount (`--data o3://`), its
 * announced order and a checkpoint's upload and commit all count, and no epoch inherits another's
 * warmed-up libtorch. It reaches the bench's server through process.env (benchEnv).
 */
import { spawn } from 'node:child_process'
import { performance } from 'node:perf_hooks'
import { cliCommand } from '../../lib/paths.js'
import { formatSpread } from './stats.js'

const O3TRAIN = cliCommand('trainer/cli.ts')

/** Wall seconds of `o3train --data DATA --epochs 1 --batch 64 --no-evaluate ...extra`. */
export function o3trainEpoch(data: string, extra: string[]): Promise<number> {
  const args = [...O3TRAIN.execArgv, O3TRAIN.file, '--data', data, '--epochs', '1', '--batch', '64', '--no-evaluate', '--log-format', 'json', ...extra]
  return new Promise((resolve, reject) => {
    const t0 = performance.now()
    const child = spawn(process.execPath, args, { env: process.env, stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)))
    child.on('error', reject)
    child.on('close', (code) =>
      code === 0 ? resolve((performance.now() - t0) / 1000) : reject(new Error(`o3train ${args.slice(-12).join(' ')} exited ${code}:\n${stderr}`)),
    )
  })
}

/** `19.3 (18.9-20.1) s`. */
export const seconds = (xs: number[]): string => `${formatSpread(xs, 1)} s`
