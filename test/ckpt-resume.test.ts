// Resume through O3 is exact: train k steps, save to O3 (async), train on; a fresh process-like
// trainer resumes from `latest` and trains the same steps; both end bit-identical. CPU only.
import t from 'tap'
import { Trainer, type StateTensor, type TrainerOptions } from '../addon/index.js'
import { CheckpointStore, CheckpointWriter } from '../checkpoint/index.js'
import { FASHION_MNIST } from './support/imagefolder.js'
import { createBucket, useS3Server } from './support/s3-server.js'
import { openClient, tempDir } from './fixtures/ckpt.js'

const MiB = 1 << 20
const info = await useS3Server(t)
const bucket = `ckpt-resume-${process.pid}`
await createBucket(info, bucket)

// A shard of Fashion-MNIST (300 samples, 10 batches an epoch) so that the run crosses an epoch.
const options = (seed: number): TrainerOptions => ({
  model: 'cnn',
  seed,
  threads: 2,
  device: 'cpu',
  optimizer: { type: 'adam', lr: 1e-3 },
  data: { kind: 'mnist', root: FASHION_MNIST, split: 'train' },
  batchSize: 32,
  rank: 3,
  worldSize: 200,
})

function differing(a: StateTensor[], b: StateTensor[]): string[] {
  const other = new Map(b.map((s) => [s.name, s]))
  const bad = a.filter((s) => {
    const o = other.get(s.name)
    return !o || o.dtype !== s.dtype || o.shape.join() !== s.shape.join() || !o.data.equals(s.data)
  })
  return [...bad.map((s) => s.name), ...(a.length !== b.length ? ['(tensor count)'] : [])]
}

t.test('resume from O3 is bit-identical to an uninterrupted run', async (t) => {
  const k = 7
  const rest = 8
  const client = openClient(t, info, `${bucket}/cnn`)
  const writer = await CheckpointWriter.open(client, { localDir: tempDir(t), partSize: 5 * MiB, parallel: 2, signer: null })

  const a = await Trainer.create(options(11))
  t.teardown(() => a.close())
  await a.trainSteps(k)
  await writer.saveAsync(await a.stateDict(), { step: k, epoch: a.position.epoch, model: a.model.name, config: a.model.config, dataPosition: a.position })
  // Training goes on while the checkpoint uploads.
  await a.trainSteps(rest)
  const uninterrupted = await a.stateDict()
  const saved = await writer.flush()
  t.equal(saved?.entry.step, k)

  // Another seed: everything that matters must come from the checkpoint.
  const b = await Trainer.create(options(999))
  t.teardown(() => b.close())
  const loaded = await new CheckpointStore(client).resume()
  t.equal(loaded?.entry.name, 'step-0000000007')
  t.same(loaded?.meta, { step: k, epoch: 0, model: 'cnn', config: a.model.config, dataPosition: { epoch: 0, index: k * 32 } })
  await b.loadStateDict(loaded!.tensors)
  t.same(b.position, { epoch: 0, index: k * 32 }, 'data position restored')
  await b.trainSteps(rest)
  t.same(differing(uninterrupted, await b.stateDict()), [], 'every tensor bit-identical')
})
