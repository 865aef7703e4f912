// Reproducibility and the state round trip of the native trainer: the same seed gives the same
// weights, and train k / stateDict / load into a fresh trainer / train the rest gives exactly
// the state of an uninterrupted run. Runs on a shard of Fashion-MNIST so epochs are short and the
// round trip crosses an epoch boundary (reshuffle) too.
import t, { type Test } from 'tap'
import { Trainer, type StateTensor, type TrainerOptions } from '../addon/index.js'
import { FASHION_MNIST } from './support/imagefolder.js'

// rank 3 of 200: each global step of 200 x 32 samples gives rank 3 its 32, and its slice of the
// tenth, short global batch (57,600 + 96 ... + 128 < 60,000) is whole: 320 samples, 10 batches.
const RANK_EPOCH = 320
const options = (over: Partial<TrainerOptions> = {}): TrainerOptions => ({
  model: 'cnn',
  seed: 11,
  threads: 2,
  optimizer: { type: 'adam', lr: 1e-3 },
  data: { kind: 'mnist', root: FASHION_MNIST, split: 'train' },
  batchSize: 32,
  rank: 3,
  worldSize: 200,
  ...over,
})

const DTYPE_SIZE: Record<string, number> = { F32: 4, F64: 8, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 }

function byName(state: StateTensor[]): Map<string, StateTensor> {
  return new Map(state.map((s) => [s.name, s]))
}

function sameState(t: Test, a: StateTensor[], b: StateTensor[], what: string): void {
  t.same(
    a.map((s) => s.name),
    b.map((s) => s.name),
    `${what}: same names`,
  )
  const other = byName(b)
  const differing = a.filter((s) => {
    const o = other.get(s.name)
    return !o || o.dtype !== s.dtype || o.shape.join() !== s.shape.join() || !o.data.equals(s.data)
  })
  t.same(
    differing.map((s) => s.name),
    [],
    `${what}: every tensor bit-identical`,
  )
}

async function withTrainer<T>(opts: TrainerOptions, f: (tr: Trainer) => Promise<T>): Promise<T> {
  const tr = await Trainer.create(opts)
  try {
    return await f(tr)
  } finally {
    tr.close()
  }
}

t.test('the same seed gives identical weights, another seed different ones', async (t) => {
  const run = (seed: number) =>
    withTrainer(options({ seed, worldSize: 1, rank: 0 }), async (tr) => {
      await tr.trainSteps(200)
      return tr.stateDict()
    })
  const a = await run(5)
  const b = await run(5)
  sameState(t, a, b, 'seed 5 twice')
  const c = await run(6)
  t.notOk(byName(c).get('model.fc1.weight')!.data.equals(byName(a).get('model.fc1.weight')!.data), 'seed 6 differs')
})

t.test('stateDict holds every tensor, typed, shaped and named once', async (t) => {
  await withTrainer(options(), async (tr) => {
    await tr.trainSteps(3)
    const state = await tr.stateDict()
    const names = state.map((s) => s.name)
    t.equal(new Set(names).size, names.length, 'names are unique')
    for (const s of state) {
      const elements = s.shape.reduce((n, d) => n * d, 1)
      if (s.data.length !== elements * DTYPE_SIZE[s.dtype]) t.fail(`${s.name}: ${s.data.length} bytes for ${s.dtype} [${s.shape}]`)
    }
    for (const p of ['conv1.weight', 'conv1.bias', 'conv2.weight', 'conv2.bias', 'fc1.weight', 'fc1.bias', 'fc2.weight', 'fc2.bias']) {
      t.ok(names.includes(`model.${p}`), `model.${p}`)
      for (const f of ['step', 'exp_avg', 'exp_avg_sq']) t.ok(names.includes(`optim.${p}.${f}`), `optim.${p}.${f}`)
    }
    const m = byName(state)
    t.match(m.get('optim.fc1.weight.step'), { dtype: 'I64', shape: [] })
    t.equal(m.get('optim.fc1.weight.step')!.data.readBigInt64LE(), 3n, 'adam step count')
    t.match(m.get('rng.cpu'), { dtype: 'U8' })
    const loader = m.get('loader.position')!
    t.match(loader, { dtype: 'I64', shape: [3] })
    t.same(
      [0, 1, 2].map((i) => Number(loader.data.readBigInt64LE(8 * i))),
      // The index is global (3 steps of 32 x 200 ranks), so that it means the same place at any world size.
      [11, 0, 3 * 32 * 200],
      'seed, epoch, index',
    )
    t.same(tr.position, { epoch: 0, index: 96 })

    const before = Buffer.from(m.get('model.fc2.weight')!.data)
    await tr.trainSteps(2)
    t.ok(m.get('model.fc2.weight')!.data.equals(before), 'an exported state is a snapshot')
  })
})

t.test('round trip with Adam, dropout and an epoch boundary is bit-identical', async (t) => {
  const k = 7
  const rest = 8
  let saved: StateTensor[] = []
  const uninterrupted = await withTrainer(options(), async (tr) => {
    await tr.trainSteps(k)
    saved = await tr.stateDict()
    await tr.trainSteps(rest)
    t.same(tr.position, { epoch: 1, index: 5 * 32 }, 'crossed into epoch 1 (10 steps an epoch)')
    return tr.stateDict()
  })
  // Another seed: everything that matters must come from the loaded state.
  const resumed = await withTrainer(options({ seed: 999 }), async (tr) => {
    await tr.loadStateDict(saved)
    t.same(tr.position, { epoch: 0, index: k * 32 }, 'position restored')
    await tr.trainSteps(rest)
    return tr.stateDict()
  })
  sameState(t, uninterrupted, resumed, 'resumed vs uninterrupted')
})

t.test("trainSteps with toEpochEnd ends at the epoch's last batch and says so", async (t) => {
  await withTrainer(options({ model: 'mlp' }), async (tr) => {
    const first = await tr.trainSteps(6, { toEpochEnd: true })
    t.match(first, { steps: 6, samples: 6 * 32, epochEnded: false, epoch: 0 }, 'a limit inside the epoch')
    const rest = await tr.trainSteps(20, { toEpochEnd: true })
    t.match(rest, { steps: 4, samples: RANK_EPOCH - 6 * 32, epochEnded: true, epoch: 0 }, 'stopped after the last batch')
    t.same(tr.position, { epoch: 1, index: 0 })
    const across = await tr.trainSteps(12)
    t.match(across, { steps: 12, epochEnded: false, epoch: 2 }, 'without it, the call crosses into the next epoch')
    t.same(tr.position, { epoch: 2, index: 2 * 32 })
    t.match(await tr.trainEpoch(), { steps: 8, epochEnded: true, epoch: 2 }, 'trainEpoch reports the epoch it ended')
    t.match(await tr.trainSteps(0, { toEpochEnd: true }), { steps: 0, epochEnded: false, epoch: 3 }, 'no step: the current epoch')
  })
})

t.test('round trip with SGD momentum and weight decay, by epochs, is bit-identical', async (t) => {
  const sgd = options({ model: 'mlp', optimizer: { type: 'sgd', lr: 0.05, momentum: 0.9, weightDecay: 1e-4 } })
  let saved: StateTensor[] = []
  const uninterrupted = await withTrainer(sgd, async (tr) => {
    await tr.trainSteps(4)
    saved = await tr.stateDict()
    const r = await tr.trainEpoch()
    t.equal(r.samples, RANK_EPOCH - 4 * 32, 'trainEpoch finishes the current epoch')
    t.equal((await tr.trainEpoch()).samples, RANK_EPOCH, 'then a whole one')
    return tr.stateDict()
  })
  t.ok(
    saved.some((s) => s.name === 'optim.out.weight.momentum_buffer'),
    'momentum buffers exported',
  )
  const resumed = await withTrainer(sgd, async (tr) => {
    await tr.loadStateDict(saved)
    await tr.trainEpoch()
    await tr.trainEpoch()
    return tr.stateDict()
  })
  sameState(t, uninterrupted, resumed, 'resumed vs uninterrupted')
})

t.test('loadStateDict checks everything before changing anything', async (t) => {
  await withTrainer(options(), async (tr) => {
    await tr.trainSteps(2)
    const good = await tr.stateDict()
    const without = good.filter((s) => s.name !== 'model.fc1.bias')
    await t.rejects(tr.loadStateDict(without), /no 'model\.fc1\.bias'/)
    const reshaped = good.map((s) => (s.name === 'model.fc2.bias' ? { ...s, shape: [5, 2] } : s))
    await t.rejects(tr.loadStateDict(reshaped), /model\.fc2\.bias' is F32 \[5, 2\], expected F32 \[10\]/)
    const extra = [...good, { ...good[0], name: 'model.nonsense' }]
    await t.rejects(tr.loadStateDict(extra), /entries this trainer does not have: model\.nonsense/)
    const shortBuffer = good.map((s) => (s.name === 'model.fc2.bias' ? { ...s, data: s.data.subarray(4) } : s))
    await t.rejects(tr.loadStateDict(shortBuffer), /bytes do not hold F32 \[10\]/)
    const scrambled = good.map((s) => (s.name.startsWith('model.') ? { ...s, data: Buffer.alloc(s.data.length, 1) } : s))
    await t.rejects(tr.loadStateDict([...scrambled, { ...good[0], name: 'bogus' }]))
    sameState(t, await tr.stateDict(), good, 'state unchanged by the failed loads')
  })
})
