// Fashion-MNIST's 70,000 images as WebDataset shards against the same images as PNG files: an
// epoch of the CNN from shards on a cold mount, from the PNG files on a cold mount, and from
// local shards. Each cold case gets a mount of its own, so neither cache has seen the data.
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join, relative } from 'node:path'
import { performance } from 'node:perf_hooks'
import { silentLogger } from '../../lib/log.js'
import { createBucket } from '../../test/support/s3-server.js'
import { FASHION_MNIST } from '../../test/support/imagefolder.js'
import { DEFAULTS, type TrainOptions } from '../../trainer/options.js'
import { OrderAnnouncer } from '../../trainer/announce.js'
import { train } from '../../trainer/run.js'
import { mountForRun } from '../../trainer/run-mount.js'
import { directorySink, listImageTree, writeShards } from '../../upload/webdataset.js'
import type { BenchContext, BenchRow } from './types.js'
import { benchClient, mapLimit, MiB } from './util.js'

const BUCKET = 'bench-webdataset'
const SHARD_SIZE = 16 * MiB

/** Every train and test image as a grayscale PNG under `root/<label>/`. */
function writePngTree(root: string): void {
  execFileSync('/usr/bin/python3', [
    '-c',
    `
import gzip, os, sys
from PIL import Image
src, root = sys.argv[1], sys.argv[2]
for split in ('train', 't10k'):
    with gzip.open(os.path.join(src, split + '-images-idx3-ubyte.gz')) as f: images = f.read()[16:]
    with gzip.open(os.path.join(src, split + '-labels-idx1-ubyte.gz')) as f: labels = f.read()[8:]
    for i, l in enumerate(labels):
        d = os.path.join(root, str(l)); os.makedirs(d, exist_ok=True)
        Image.frombytes('L', (28, 28), images[i * 784:(i + 1) * 784]).save(os.path.join(d, f'{split}-{i:05d}.png'))
`,
    FASHION_MNIST,
    root,
  ])
}

async function epochSeconds(o: Partial<TrainOptions>, dataDir: string, announcer?: OrderAnnouncer): Promise<number> {
  const t0 = performance.now()
  await train({ ...DEFAULTS, data: dataDir, epochs: 1, batch: 64, evaluate: false, imageSize: 28, channels: 1, ...o }, dataDir, { announcer })
  return (performance.now() - t0) / 1000
}

/**
 * One epoch from `location` freshly mounted (cold), the mount closed afterwards; the epoch's order
 * announced to the mount first, as `o3train --data o3://…` does.
 */
async function coldEpoch(ctx: BenchContext, location: string, o: Partial<TrainOptions>, name: string): Promise<number> {
  const mount = await mountForRun(location, {}, join(ctx.workDir, `webdataset-${name}.log`))
  const announcer = mount.controlSocket ? new OrderAnnouncer(mount.controlSocket, '', silentLogger) : undefined
  try {
    return await epochSeconds(o, mount.dir, announcer)
  } finally {
    announcer?.close()
    await mount.close()
  }
}

export async function webdatasetRows(ctx: BenchContext, area: string): Promise<BenchRow[]> {
  const pngs = join(ctx.workDir, 'fashion-png')
  const shards = join(ctx.workDir, 'fashion-shards')
  ctx.log('webdataset: writing 70,000 PNG files and their shards')
  writePngTree(pngs)
  const written = await writeShards(pngs, directorySink(shards), { shardSize: SHARD_SIZE })
  await createBucket(ctx.server, BUCKET)
  const client = benchClient(ctx, BUCKET)
  try {
    ctx.log('webdataset: uploading the PNG files and the shards')
    const { files } = await listImageTree(pngs)
    await mapLimit(files, 16, (f) => client.put(`png/${relative(pngs, f.path)}`, readFileSync(f.path)))
    for (const s of written.shards) await client.put(`shards/${s.name}`, readFileSync(join(shards, s.name)))
  } finally {
    client.close()
  }
  const asShards: Partial<TrainOptions> = { dataset: 'webdataset' }
  const asPngs: Partial<TrainOptions> = { dataset: 'imagefolder' }
  ctx.log('webdataset: epoch from local shards')
  const local = await epochSeconds(asShards, shards)
  ctx.log('webdataset: epoch from shards on the mount, cold')
  const mountedShards = await coldEpoch(ctx, `o3://${BUCKET}/shards`, asShards, 'shards')
  ctx.log('webdataset: epoch from 70,000 local PNG files')
  const localPngs = await epochSeconds(asPngs, pngs)
  ctx.log('webdataset: epoch from 70,000 PNG files on the mount, cold, its order announced')
  const mountedPngs = await coldEpoch(ctx, `o3://${BUCKET}/png`, asPngs, 'png')
  const pngRatio = mountedPngs / localPngs
  const shape = `${written.shards.length} shards of <= ${SHARD_SIZE / MiB} MiB`
  return [
    { area, case: `Fashion-MNIST 70k as WebDataset shards, CNN epoch (batch 64, CPU), local shards`, value: `${local.toFixed(1)} s`, note: shape },
    {
      area,
      case: 'same epoch from shards on o3mount, cold',
      value: `${mountedShards.toFixed(1)} s`,
      note: `${(mountedShards / local).toFixed(2)}x local shards`,
    },
    { area, case: 'same epoch from 70,000 local PNG files (ImageFolder)', value: `${localPngs.toFixed(1)} s` },
    {
      area,
      case: 'same epoch from the 70,000 PNG files on o3mount, cold, the epoch order announced (as o3train does)',
      value: `${mountedPngs.toFixed(1)} s`,
      target: `<= 1.5x local PNG files: ${pngRatio <= 1.5 ? 'met' : 'not met'} (${pngRatio.toFixed(2)}x)`,
      note: `${(mountedPngs / mountedShards).toFixed(2)}x shards on the mount`,
    },
  ]
}
