/**
 * One rank of a data-parallel test job: joins the job torchrun's variables describe (or trains
 * alone without them), trains `steps` steps of the MLP and writes its model weights as JSON.
 *   node --import tsx test/support/dist-worker.ts <out.json> <batch> <steps> <timeout seconds>
 */
import { writeFileSync } from 'node:fs'
import { Trainer } from '../../addon/index.js'
import { distributedFromEnv } from '../../trainer/distributed.js'
import { FASHION_MNIST } from './imagefolder.js'

const [out, batch, steps, timeout] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4]), Number(process.argv[5])]
const trainer = await Trainer.create({
  model: 'mlp',
  modelConfig: { dropout: 0 },
  device: 'cpu',
  seed: 7,
  threads: 1,
  optimizer: { type: 'sgd', lr: 0.01 },
  data: { kind: 'mnist', root: FASHION_MNIST, split: 'train' },
  batchSize: batch,
  workers: 1,
  distributed: distributedFromEnv(process.env, timeout),
})
const r = await trainer.trainSteps(steps)
const test = await trainer.evaluate({ kind: 'mnist', root: FASHION_MNIST, split: 'test' })
const state = await trainer.stateDict()
trainer.close()
const weights = Object.fromEntries(state.filter((s) => s.name.startsWith('model.')).map((s) => [s.name, s.data.toString('base64')]))
writeFileSync(out, JSON.stringify({ world: trainer.world, result: r, test, globalBatch: trainer.dataset.globalBatch, weights }))
