import { join } from 'node:path'
import { performance } from 'node:perf_hooks'
import { createBucket } from '../../test/support/s3-server.js'
import { FASHION_MNIST } from '../../test/support/imagefolder.js'
import { DEFAULTS, type TrainOptions } from '../../trainer/options.js'
import { train } from '../../trainer/run.js'
import { mountForRun } from '../../trainer/run-mount.js'
import type { BenchModule, BenchRow } from './types.js'
import { benchEnv } from './util.js'
import { webdatasetRows } from './webdataset.js'

const AREA = 'o3train'

/** One epoch of the Fashion-MNIST CNN on `dataDir`, timed from opening the data to the epoch's end. */
async function epoch(dataDir: string, extra: Partial<TrainOptions> = {}): Promise<{ seconds: number; accuracy: number }> {
  const o: TrainOptions = { ...DEFAULTS, data: dataDir, epochs: 1, batch: 64, evaluate: false, ...extra }
  const t0 = performance.now()
  const s = await train(o, dataDir)
  return { seconds: (performance.now() - t0) / 1000, accuracy: s.test?.accuracy ?? NaN }
}

export const run: BenchModule = async (ctx) => {
  Object.assign(process.env, benchEnv(ctx))
  await createBucket(ctx.server, 'bench-e2e')
  const upload = await import('../../lib/o3/index.js')
  const client = upload.O3Client.open('bench-e2e/fashion-mnist')
  const { readdirSync, readFileSync } = await import('node:fs')
  for (const f of readdirSync(FASHION_MNIST)) await client.put(f, readFileSync(join(FASHION_MNIST, f)))
  client.close()

  const rows: BenchRow[] = []
  ctx.log('epoch from a local copy')
  const local = await epoch(FASHION_MNIST)
  const mount = await mountForRun('o3://bench-e2e/fashion-mnist', {}, join(ctx.workDir, 'e2e-mount.log'))
  try {
    ctx.log('epoch from the mount, cold')
    const cold = await epoch(mount.dir)
    ctx.log('epoch from the mount, warm')
    const warm = await epoch(mount.dir)
    const ratio = warm.seconds / local.seconds
    rows.push({ area: AREA, case: 'Fashion-MNIST CNN epoch (60k, batch 64, CPU), local copy', value: `${local.seconds.toFixed(1)} s` })
    rows.push({
      area: AREA,
      case: 'same epoch from o3mount, cold cache',
      value: `${cold.seconds.toFixed(1)} s`,
      note: `${(cold.seconds / local.seconds).toFixed(2)}x local`,
    })
    rows.push({
      area: AREA,
      case: 'same epoch from o3mount, warm cache',
      value: `${warm.seconds.toFixed(1)} s`,
      target: `<= 1.05x local: ${ratio <= 1.05 ? 'met' : 'not met'} (${ratio.toFixed(2)}x)`,
    })

    await createBucket(ctx.server, 'bench-ckpt-e2e')
    ctx.log('epoch with a checkpoint at its end, saved in the background')
    const perEpoch = await epoch(mount.dir, { ckpt: 'o3://bench-ckpt-e2e/per-epoch', ckptEvery: 'epoch', resume: 'none' })
    ctx.log('epoch with a checkpoint every 100 steps, saved in the background')
    const every100 = await epoch(mount.dir, { ckpt: 'o3://bench-ckpt-e2e/every-100', ckptEvery: 100, resume: 'none', keepLast: 2 })
    const overhead = perEpoch.seconds / warm.seconds - 1
    rows.push({
      area: AREA,
      case: 'same epoch (warm) with a checkpoint at the end of the epoch, async',
      value: `${perEpoch.seconds.toFixed(1)} s`,
      target: `overhead <= 5%: ${overhead <= 0.05 ? 'met' : 'not met'} (${(overhead * 100).toFixed(1)}%)`,
    })
    rows.push({
      area: AREA,
      case: 'same epoch (warm) with a checkpoint every 100 steps (10 saves), async',
      value: `${every100.seconds.toFixed(1)} s`,
      note: `overhead ${((every100.seconds / warm.seconds - 1) * 100).toFixed(1)}%`,
    })
  } finally {
    await mount.close()
  }
  rows.push(...(await webdatasetRows(ctx, AREA)))
  rows.push({
    area: AREA,
    case: 'CUDA samples/s at batch 256 / 1024, accuracy after one epoch',
    value: 'not measured',
    note: 'no GPU machine was lent to this session; scripts/bench/gpu.sh runs it where one is',
  })
  return rows
}
