// The CNN trained for one epoch on the real Fashion-MNIST reaches 85% test accuracy, while the
// event loop stays responsive and progress arrives through the thread-safe callback.
// OPENBLAS_NUM_THREADS=1 comes from addon/index.ts; torch gets the machine's two cores.
import t from 'tap'
import { Trainer, type Progress } from '../addon/index.js'
import { FASHION_MNIST } from './support/imagefolder.js'

t.test('one epoch of the CNN on Fashion-MNIST', async (t) => {
  const trainer = await Trainer.create({
    model: 'cnn',
    seed: 1,
    threads: 2,
    optimizer: { type: 'adam', lr: 1e-3 },
    data: { kind: 'mnist', root: FASHION_MNIST, split: 'train' },
    batchSize: 64,
  })
  t.teardown(() => trainer.close())
  // The default device is auto; trainer-data.test.ts checks what auto picks on this machine.
  t.ok(['cpu', 'cuda'].includes(trainer.device.type), `trained on ${trainer.device.type}`)
  t.same(trainer.dataset, {
    size: 60000,
    epochSize: 60000,
    classes: 10,
    shape: [1, 28, 28],
    stepsPerEpoch: 938,
    globalBatch: 64,
    classNames: [],
    normalize: { mul: 2 / 255, sub: 1 },
  })

  // A 10 ms timer must keep firing while the epoch trains on native threads.
  const periodMs = 10
  let ticks = 0
  let worstLagMs = 0
  let last = performance.now()
  const timer = setInterval(() => {
    const now = performance.now()
    worstLagMs = Math.max(worstLagMs, now - last - periodMs)
    last = now
    ticks++
  }, periodMs)

  const progress: Progress[] = []
  const started = performance.now()
  const result = await trainer.trainEpoch({ onProgress: (p) => progress.push(p) })
  const seconds = (performance.now() - started) / 1000
  clearInterval(timer)

  t.equal(result.samples, 60000)
  // Each report reads the loss (a GPU sync on CUDA), so by default one every 10 steps and the last.
  t.equal(progress.length, Math.floor(938 / 10) + 1, 'a progress report every 10 steps and after the last')
  t.match(progress.at(-1), { step: 938, samples: 60000, epoch: 1, index: 0, total: 60000 })
  t.ok(
    progress.slice(0, -1).every((p, i) => p.step === (i + 1) * 10),
    'reports arrive in order',
  )
  t.same(trainer.position, { epoch: 1, index: 0 })
  // Generous bounds: CI machines are shared; a blocked loop would show seconds, not milliseconds.
  t.ok(ticks >= (seconds * 1000) / periodMs / 4, `timer fired ${ticks} times in ${seconds.toFixed(1)} s`)
  t.ok(worstLagMs < 250, `worst timer lag ${worstLagMs.toFixed(1)} ms`)

  const evaluation = await trainer.evaluate({ kind: 'mnist', root: FASHION_MNIST, split: 'test' })
  t.equal(evaluation.samples, 10000)
  t.ok(evaluation.accuracy >= 0.85, `test accuracy ${evaluation.accuracy} after one epoch`)
  t.comment(
    `epoch ${result.seconds.toFixed(1)} s (${(result.samples / result.seconds).toFixed(0)} samples/s), ` +
      `train loss ${result.loss.toFixed(3)}, test loss ${evaluation.loss.toFixed(3)}, accuracy ${evaluation.accuracy}`,
  )
})

t.test('close() during training ends the call early and later calls reject', async (t) => {
  const trainer = await Trainer.create({
    model: 'mlp',
    threads: 2,
    optimizer: { type: 'sgd', lr: 0.01 },
    data: { kind: 'mnist', root: FASHION_MNIST, split: 'test' },
    batchSize: 16,
  })
  const running = trainer.trainSteps(100000)
  const queued = trainer.trainSteps(1)
  setTimeout(() => trainer.close(), 200)
  const r = await running
  t.ok(r.steps < 100000, `stopped after ${r.steps} steps`)
  await t.rejects(queued, /trainer is closed/)
  t.throws(() => trainer.position, /trainer is closed/)
})

t.test('stopAfterStep ends the running call after its current step; the next call runs normally', async (t) => {
  const trainer = await Trainer.create({
    model: 'mlp',
    seed: 1,
    optimizer: { type: 'sgd', lr: 0.01 },
    data: { kind: 'mnist', root: FASHION_MNIST, split: 'train' },
    batchSize: 64,
    progressEvery: 1,
  })
  t.teardown(() => trainer.close())
  let requestedAt = -1
  const stopped = await trainer.trainEpoch({
    onProgress: (p) => {
      if (p.step === 3) {
        requestedAt = p.step
        trainer.stopAfterStep()
      }
    },
  })
  // Progress is delivered asynchronously, so the native loop may finish a step or two more first.
  t.ok(stopped.steps >= requestedAt && stopped.steps <= requestedAt + 3, `stopped after ${stopped.steps} of ${Math.ceil(60000 / 64)} steps`)
  t.same(trainer.position, { epoch: 0, index: stopped.steps * 64 }, 'the position is where it stopped')
  const next = await trainer.trainSteps(5)
  t.equal(next.steps, 5, 'the next call is not stopped')
})
