// Fashion-MNIST's 70,000 images as WebDataset shards against the same images as PNG files: an
// epoch of the CNN from local shards, from shards on a cold mount, from local PNG files and from
// the PNG files on a cold mount. Each epoch is a fresh o3train process (o3train-epoch.ts); a cold
// case is `--data o3://`, so the run mounts the data itself, announces its order to that mount
// and no cache has seen the data. ROUNDS alternating rounds, median (min-max).
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join, relative } from 'node:path'
import { createBucket } from '../../test/support/s3-server.js'
import { FASHION_MNIST } from '../../test/support/imagefolder.js'
import { directorySink, listImageTree, writeShards } from '../../upload/webdataset.js'
import { o3trainEpoch, seconds } from './o3train-epoch.js'
import { alternate, median } from './stats.js'
import type { BenchModule } from './types.js'
import { benchClient, benchEnv, mapLimit, MiB } from './util.js'

const ROUNDS = 3

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

export const run: BenchModule = async (ctx) => {
  // The o3train processes reach the server through process.env.
  Object.assign(process.env, benchEnv(ctx))
  const area = 'o3train'
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
  const images = ['--model', 'cnn', '--image-size', '28', '--channels', '1']
  const shardsAt = (data: string) => o3trainEpoch(data, ['--dataset', 'webdataset', ...images])
  const pngsAt = (data: string) => o3trainEpoch(data, ['--dataset', 'imagefolder', ...images])
  ctx.log(`webdataset: ${ROUNDS} rounds of four epochs (local shards, shards on o3://, local PNG files, PNG files on o3://)`)
  const r = await alternate(ROUNDS, {
    localShards: () => shardsAt(shards),
    mountedShards: () => shardsAt(`o3://${BUCKET}/shards`),
    localPngs: () => pngsAt(pngs),
    mountedPngs: () => pngsAt(`o3://${BUCKET}/png`),
  })
  const pngRatio = median(r.mountedPngs) / median(r.localPngs)
  const shape = `${written.shards.length} shards of <= ${SHARD_SIZE / MiB} MiB; a fresh o3train process per epoch, wall time, median (min-max) of ${ROUNDS} alternating rounds`
  return [
    { area, case: `Fashion-MNIST 70k as WebDataset shards, CNN epoch (batch 64, CPU), local shards`, value: seconds(r.localShards), note: shape },
    {
      area,
      case: 'same epoch from shards with --data o3:// (mounted by the run, cold)',
      value: seconds(r.mountedShards),
      note: `${(median(r.mountedShards) / median(r.localShards)).toFixed(2)}x local shards`,
    },
    { area, case: 'same epoch from 70,000 local PNG files (ImageFolder)', value: seconds(r.localPngs) },
    {
      area,
      case: 'same epoch from the 70,000 PNG files with --data o3:// (mounted by the run, cold, its epoch order announced to the mount)',
      value: seconds(r.mountedPngs),
      target: `<= 1.5x local PNG files: ${pngRatio <= 1.5 ? 'met' : 'not met'} (${pngRatio.toFixed(2)}x, medians)`,
      note: `${(median(r.mountedPngs) / median(r.mountedShards)).toFixed(2)}x shards on the mount`,
    },
  ]
}
