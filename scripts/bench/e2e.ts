/**
 * o3train end to end, as users run it: every epoch is its own `o3train` process (o3train-epoch.ts).
 * ROUNDS rounds alternate the cases: a local copy of Fashion-MNIST; `--data o3://` (the run mounts
 * it itself, cold); a mount kept open and warmed by one untimed epoch; and that warm mount with
 * checkpoints, at the epoch's end and every 100 steps. Median (min-max) of each.
 */
import { readdirSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { createBucket } from '../../test/support/s3-server.js'
import { FASHION_MNIST } from '../../test/support/imagefolder.js'
import { mountForRun } from '../../trainer/run-mount.js'
import { o3trainEpoch, seconds } from './o3train-epoch.js'
import { alternate, median } from './stats.js'
import type { BenchModule, BenchRow } from './types.js'
import { benchClient, benchEnv } from './util.js'

const AREA = 'o3train'
const ROUNDS = 3
const DATA_BUCKET = 'bench-e2e'
const CKPT_BUCKET = 'bench-ckpt-e2e'

const FASHION = ['--dataset', 'fashion-mnist', '--model', 'cnn']
const epoch = (data: string, extra: string[] = []) => o3trainEpoch(data, [...FASHION, ...extra])

export const run: BenchModule = async (ctx) => {
  // mountForRun and the o3train processes reach the server through process.env.
  Object.assign(process.env, benchEnv(ctx))
  await createBucket(ctx.server, DATA_BUCKET)
  await createBucket(ctx.server, CKPT_BUCKET)
  const client = benchClient(ctx, `${DATA_BUCKET}/fashion-mnist`)
  try {
    for (const f of readdirSync(FASHION_MNIST)) await client.put(f, readFileSync(join(FASHION_MNIST, f)))
  } finally {
    client.close()
  }

  const rows: BenchRow[] = []
  const mount = await mountForRun(`o3://${DATA_BUCKET}/fashion-mnist`, {}, join(ctx.workDir, 'e2e-mount.log'))
  try {
    ctx.log('o3train: one untimed epoch to warm the kept mount')
    await epoch(mount.dir)
    const r = await alternate(ROUNDS, {
      local: () => epoch(FASHION_MNIST),
      cold: () => epoch(`o3://${DATA_BUCKET}/fashion-mnist`),
      warm: () => epoch(mount.dir),
      perEpoch: (round) => epoch(mount.dir, ['--ckpt', `o3://${CKPT_BUCKET}/per-epoch-${round}`, '--ckpt-every', 'epoch', '--resume', 'none']),
      every100: (round) =>
        epoch(mount.dir, ['--ckpt', `o3://${CKPT_BUCKET}/every-100-${round}`, '--ckpt-every', '100', '--resume', 'none', '--keep-last', '2']),
    })
    const ratio = median(r.warm) / median(r.local)
    const overhead = median(r.perEpoch) / median(r.warm) - 1
    const how = `a fresh o3train process per epoch, wall time, median (min-max) of ${ROUNDS} alternating rounds`
    rows.push({ area: AREA, case: 'Fashion-MNIST CNN epoch (60k, batch 64, CPU), local copy', value: seconds(r.local), note: how })
    rows.push({
      area: AREA,
      case: 'same epoch with --data o3:// (the run mounts the bucket itself, cold)',
      value: seconds(r.cold),
      note: `${(median(r.cold) / median(r.local)).toFixed(2)}x local`,
    })
    rows.push({
      area: AREA,
      case: 'same epoch from a kept o3mount, warm cache',
      value: seconds(r.warm),
      target: `<= 1.05x local: ${ratio <= 1.05 ? 'met' : 'not met'} (${ratio.toFixed(2)}x, medians)`,
    })
    rows.push({
      area: AREA,
      case: 'same epoch (warm) with a checkpoint at the end of the epoch, upload and commit before exit',
      value: seconds(r.perEpoch),
      target: `overhead <= 5%: ${overhead <= 0.05 ? 'met' : 'not met'} (${(overhead * 100).toFixed(1)}%, medians)`,
    })
    rows.push({
      area: AREA,
      case: 'same epoch (warm) with a checkpoint every 100 steps (10 saves, the last 2 kept), in the background',
      value: seconds(r.every100),
      note: `overhead ${((median(r.every100) / median(r.warm) - 1) * 100).toFixed(1)}% (medians)`,
    })
  } finally {
    await mount.close()
  }
  rows.push({
    area: AREA,
    case: 'CUDA samples/s at batch 256 / 1024, accuracy after one epoch',
    value: 'not measured',
    note: 'no GPU machine was lent to this session; scripts/bench/gpu.sh runs it where one is',
  })
  return rows
}
