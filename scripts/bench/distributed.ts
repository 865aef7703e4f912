/**
 * Data-parallel benchmark: the MLP on Fashion-MNIST trained by one process against two ranks
 * (Gloo on loopback) with the same global batch, each process with one thread. Ranks are the test
 * suite's worker (test/support/dist-worker.ts) given torchrun's variables. Reports global
 * samples/s and the time each step spends in the gradient all-reduce (`commSeconds`).
 */
import { execFile } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { projectRoot } from '../../lib/paths.js'
import type { BenchModule, BenchRow } from './types.js'
import { freePort } from '../../test/support/free-port.js'

const GLOBAL_BATCH = 64
const STEPS = 300
const WORKER = join(projectRoot(), 'test/support/dist-worker.ts')

interface Rank {
  result: { steps: number; samples: number; seconds: number; commSeconds: number }
}

async function job(workDir: string, world: number): Promise<{ samplesPerSecond: number; commPerStep: number }> {
  const port = String(await freePort())
  const ranks = await Promise.all(
    Array.from({ length: world }, async (_, rank) => {
      const out = join(workDir, `dist-${world}-${rank}.json`)
      const env = world > 1 ? { WORLD_SIZE: String(world), RANK: String(rank), LOCAL_RANK: String(rank), MASTER_ADDR: '127.0.0.1', MASTER_PORT: port } : {}
      await promisify(execFile)(process.execPath, ['--no-warnings', '--import', 'tsx', WORKER, out, String(GLOBAL_BATCH / world), String(STEPS), '120'], {
        env: { ...process.env, ...env },
      })
      return JSON.parse(readFileSync(out, 'utf8')) as Rank
    }),
  )
  // The job is as fast as its slowest rank.
  const seconds = Math.max(...ranks.map((r) => r.result.seconds))
  const samples = ranks.reduce((s, r) => s + r.result.samples, 0)
  return { samplesPerSecond: samples / seconds, commPerStep: Math.max(...ranks.map((r) => r.result.commSeconds)) / STEPS }
}

export const run: BenchModule = async (ctx) => {
  const what = `MLP, Fashion-MNIST, CPU, global batch ${GLOBAL_BATCH}, ${STEPS} steps, 1 thread per process`
  ctx.log(`distributed: 1 process (${what})`)
  const one = await job(ctx.workDir, 1)
  ctx.log(`distributed: 2 ranks through Gloo on loopback (${what})`)
  const two = await job(ctx.workDir, 2)
  ctx.metrics['distributed.cpu.1.samplesPerSecond'] = one.samplesPerSecond
  ctx.metrics['distributed.cpu.2.samplesPerSecond'] = two.samplesPerSecond
  const rows: BenchRow[] = [
    {
      area: 'distributed',
      case: `${what}: 2 ranks (Gloo, loopback) against 1 process`,
      value: `${two.samplesPerSecond.toFixed(0)} samples/s`,
      note: `1 process: ${one.samplesPerSecond.toFixed(0)} samples/s (${(two.samplesPerSecond / one.samplesPerSecond).toFixed(2)}x)`,
    },
    {
      area: 'distributed',
      case: `${what}: time in gradient all-reduce per step, 2 ranks`,
      value: `${(two.commPerStep * 1000).toFixed(2)} ms`,
      note: "the slower rank's commSeconds / steps",
    },
    { area: 'distributed', case: '1 against N GPUs through NCCL', value: 'not measured: no GPU machine in this session' },
  ]
  return rows
}
