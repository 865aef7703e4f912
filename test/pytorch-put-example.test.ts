/**
 * examples/pytorch/train_put.py: a PyTorch training script that puts a checkpoint directory into
 * the run after each epoch and resumes from `o3ckpt get … latest`. Stopped after two epochs and
 * started again, it ends with the same checkpoint, CID for CID, as a run that never stopped.
 */
import { execFile } from 'node:child_process'
import path from 'node:path'
import t from 'tap'
import { cliCommand, projectRoot } from '../lib/paths.js'
import { CheckpointStore } from '../checkpoint/index.js'
import { createBucket, serverEnv, useS3Server } from './support/s3-server.js'
import { writeFashionSubset } from './support/fashion-subset.js'
import { openClient, tempDir } from './fixtures/ckpt.js'

const info = await useS3Server(t)
const bucket = `pytorch-put-${process.pid}`
await createBucket(info, bucket)
// The first 256 training images of the real Fashion-MNIST: each put hashes its data for the lineage.
const DATA = tempDir(t)
writeFashionSubset(DATA, 256, 16)
const cli = cliCommand('checkpoint/cli.ts')
const o3ckptCommand = [process.execPath, ...cli.execArgv, cli.file].map((a) => `'${a}'`).join(' ')

interface Line {
  event: string
  epoch: number
  step: number
  cid?: string
  checkpoint?: string
}

function train(run: string, epochs: number): Promise<Line[]> {
  return new Promise((resolve, reject) =>
    execFile(
      '/usr/bin/python3',
      [
        path.join(projectRoot(), 'examples/pytorch/train_put.py'),
        ...['--run', run, '--data', DATA, '--epochs', String(epochs), '--samples', '256', '--o3ckpt', o3ckptCommand],
      ],
      { env: { PATH: process.env.PATH, HOME: process.env.HOME, ...serverEnv(info) }, timeout: 300_000 },
      (err, stdout, stderr) =>
        err
          ? reject(new Error(`train_put.py failed: ${stderr}`))
          : resolve(
              stdout
                .trim()
                .split('\n')
                .map((l) => JSON.parse(l) as Line),
            ),
    ),
  )
}

t.test('trains, puts a checkpoint each epoch, resumes from latest, and ends where an uninterrupted run ends', async (t) => {
  const stopped = `o3://${bucket}/runs/stopped`
  const first = await train(stopped, 2)
  t.same(
    first.map((l) => [l.event, l.epoch, l.step, l.checkpoint]),
    [
      ['epoch', 1, 4, 'step-0000000004'],
      ['epoch', 2, 8, 'step-0000000008'],
    ],
    'a fresh run: a checkpoint per epoch, named by its step',
  )
  const resumed = await train(stopped, 3)
  t.same(resumed[0], { event: 'resumed', epoch: 2, step: 8 }, 'started again, it resumes from latest')
  t.same(
    resumed.slice(1).map((l) => [l.event, l.epoch, l.step]),
    [['epoch', 3, 12]],
  )

  const straight = await train(`o3://${bucket}/runs/straight`, 3)
  t.equal(resumed.at(-1)!.cid, straight.at(-1)!.cid, 'the resumed run ends with the same checkpoint directory, byte for byte')
  t.equal(first[1]!.cid, straight[1]!.cid, 'and passed through the same one after epoch 2')

  const store = new CheckpointStore(openClient(t, info, `${bucket}/runs/stopped`))
  const manifest = await store.readManifest()
  t.same(
    manifest.checkpoints.map((e) => [e.name, e.epoch, e.kind, e.path]),
    [
      ['step-0000000004', 1, 'directory', 'epoch-1'],
      ['step-0000000008', 2, 'directory', 'epoch-2'],
      ['step-0000000012', 3, 'directory', 'epoch-3'],
    ],
  )
  const record = await store.readRecord(manifest.checkpoints[2]!)
  t.same(record.meta, { model: 'mlp', framework: 'pytorch' })
  t.same(
    record.files?.map((f) => f.path),
    ['model.safetensors', 'optimizer.pt', 'rng.pt', 'trainer_state.json'],
  )
  t.equal(record.data?.files?.length, 4, 'the data lineage names the idx files')
  for (const e of manifest.checkpoints) t.ok((await store.verify(e)).ok, `${e.name} verifies`)
})
