// The native trainer's data side: ImageFolder over real PNG and JPEG files (ResNet and MLP),
// sharding, and bad files, which must reject with an error naming the file, never crash.
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { gunzipSync, gzipSync } from 'node:zlib'
import t from 'tap'
import { listImageFolder, Trainer, type DataSpec, type TrainerOptions } from '../addon/index.js'
import { buildImageFolder, FASHION_MNIST } from './support/imagefolder.js'

const work = mkdtempSync(path.join(tmpdir(), 'o3-trainer-data-'))
t.teardown(() => rmSync(work, { recursive: true, force: true }))

const tree = buildImageFolder(path.join(work, 'images'), { labels: [0, 1, 7, 9], perClass: 6 })
const images: DataSpec = { kind: 'imagefolder', root: tree.root, imageSize: 32 }

const options = (data: DataSpec, over: Partial<TrainerOptions> = {}): TrainerOptions => ({
  model: 'mlp',
  seed: 3,
  threads: 2,
  optimizer: { type: 'adam', lr: 1e-3 },
  data,
  batchSize: 8,
  ...over,
})

t.test('listImageFolder gives the files and labels of the class directories', async (t) => {
  const listing = await listImageFolder(tree.root)
  t.same(listing.classes, ['boot', 'sneaker', 'trouser', 'tshirt'])
  t.same(
    listing.samples,
    tree.files.map((f) => ({ path: f.path, label: f.label })),
  )
  t.ok(tree.files.some((f) => f.format === 'png') && tree.files.some((f) => f.format === 'jpeg'), 'both formats')
})

t.test('a ResNet trains on the image tree', async (t) => {
  const tr = await Trainer.create(options(images, { model: 'resnet', optimizer: { type: 'sgd', lr: 0.05, momentum: 0.9 } }))
  t.teardown(() => tr.close())
  t.same(tr.dataset, {
    size: 24,
    epochSize: 24,
    stepsPerEpoch: 3,
    globalBatch: 8,
    classes: 4,
    shape: [3, 32, 32],
    classNames: tree.classes,
    normalize: { mul: 2 / 255, sub: 1 },
  })
  t.same(tr.model, { name: 'resnet', config: { blocks: 1, width: 16 } })
  const r = await tr.trainSteps(4)
  t.equal(r.samples, 32)
  t.ok(Number.isFinite(r.loss), `loss ${r.loss}`)
  const state = await tr.stateDict()
  t.ok(
    state.some((s) => s.name === 'model.blocks.0.bn1.running_mean'),
    'batch-norm buffers are part of the state',
  )
  t.ok(
    state.some((s) => s.name === 'model.blocks.0.bn1.num_batches_tracked' && s.dtype === 'I64'),
    'I64 buffers too',
  )
  const e = await tr.evaluate(images, 10)
  t.equal(e.samples, 24)
})

t.test('images and their labels stay paired: an MLP learns the tree by heart', async (t) => {
  const tr = await Trainer.create(options(images, { batchSize: 24 }))
  t.teardown(() => tr.close())
  await tr.trainSteps(60)
  const e = await tr.evaluate(images, 7)
  t.ok(e.accuracy >= 0.95, `accuracy on the training images ${e.accuracy}`)
})

t.test('sharding gives each rank its slice of every global batch', async (t) => {
  const sizes = []
  for (let rank = 0; rank < 5; rank++) {
    const tr = await Trainer.create(options(images, { rank, worldSize: 5, batchSize: 2 }))
    sizes.push(tr.dataset.epochSize)
    if (rank === 4) {
      const r = await tr.trainEpoch()
      t.equal(r.samples, tr.dataset.epochSize, 'an epoch visits the rank’s share')
      t.same(tr.position, { epoch: 1, index: 0 })
    }
    tr.close()
  }
  // 24 samples in global batches of 10: two full ones, then 4 samples for ranks 0 and 1.
  t.same(sizes, [6, 6, 4, 4, 4])
  await t.rejects(Trainer.create(options(images, { rank: 5, worldSize: 5 })), /rank must be in \[0, worldSize\)/)
})

t.test('options are checked', async (t) => {
  await t.rejects(Trainer.create(options(images, { model: 'vgg' as 'mlp' })), /unknown model 'vgg'/)
  await t.rejects(Trainer.create(options(images, { modelConfig: { depth: 3 } })), /no hyperparameter 'depth' \(it has: dropout, hidden, layers\)/)
  await t.rejects(Trainer.create(options(images, { batchSize: 0 })), /options\.batchSize must be an integer >= 1/)
  await t.rejects(Trainer.create(options(images, { optimizer: { type: 'adam', lr: 1e-3, momentum: 0.9 } })), /momentum applies to sgd only/)
  await t.rejects(Trainer.create(options({ kind: 'imagefolder', root: path.join(work, 'nowhere') })), /nowhere: not a directory/)
})

// An mnist directory with real test images and the given labels file contents.
function mnistDir(name: string, labels: { file: string; bytes: Buffer }): DataSpec {
  const dir = path.join(work, name)
  mkdirSync(dir)
  copyFileSync(path.join(FASHION_MNIST, 't10k-images-idx3-ubyte.gz'), path.join(dir, 't10k-images-idx3-ubyte.gz'))
  writeFileSync(path.join(dir, labels.file), labels.bytes)
  return { kind: 'mnist', root: dir, split: 'test' }
}

t.test('--device auto picks what an explicit cuda request gets: CUDA where the addon has it and a GPU is visible', async (t) => {
  const auto = await Trainer.create(options(images, { device: 'auto' }))
  const picked = auto.device.type
  auto.close()
  const cuda = Trainer.create(options(images, { device: 'cuda' }))
  if (picked === 'cuda') {
    const c = await cuda
    t.equal(c.device.type, 'cuda', 'cuda is granted where auto chose it')
    c.close()
  } else {
    await t.rejects(cuda, /no CUDA support or no GPU/, 'cuda is refused where auto chose the CPU')
  }
  // No NVIDIA device node: nothing can have been visible to torch.
  if (!existsSync('/dev/nvidiactl')) t.equal(picked, 'cpu', 'without a GPU, auto is the CPU')
})

t.test('corrupt and truncated idx files are named in the error', async (t) => {
  const gz = readFileSync(path.join(FASHION_MNIST, 't10k-labels-idx1-ubyte.gz'))
  const raw = gunzipSync(gz)
  const flipped = Buffer.from(gz)
  for (let i = 40; i < 60; i++) flipped[i] ^= 0xff
  const badMagic = Buffer.from(raw)
  badMagic[0] = 7
  const cases: [string, string, Buffer, RegExp][] = [
    ['truncated-gz', 't10k-labels-idx1-ubyte.gz', gz.subarray(0, gz.length >> 1), /truncated data/],
    ['corrupt-gz', 't10k-labels-idx1-ubyte.gz', flipped, /corrupt data|truncated/],
    ['truncated-raw', 't10k-labels-idx1-ubyte', raw.subarray(0, 5000), /truncated data: expected 10000 bytes, got 4992/],
    ['bad-magic', 't10k-labels-idx1-ubyte', badMagic, /not an idx file/],
    ['too-long', 't10k-labels-idx1-ubyte', gzipSync(Buffer.concat([raw, Buffer.from([1])])), /trailing bytes/],
  ]
  for (const [name, file, bytes, why] of cases) {
    const data = mnistDir(name, { file, bytes })
    const err = await Trainer.create(options(data)).then(
      () => new Error('created'),
      (e: Error) => e,
    )
    t.match(err.message, path.join(work, name, file), `${name}: names the file`)
    t.match(err.message, why, `${name}: says what is wrong (${err.message})`)
  }
})

t.test('corrupt and truncated images reject the step that reads them, naming the file', async (t) => {
  const png = tree.files.find((f) => f.format === 'png')!
  const jpeg = tree.files.find((f) => f.format === 'jpeg')!
  const pngBytes = readFileSync(png.path)
  const jpegBytes = readFileSync(jpeg.path)
  const crc = Buffer.from(pngBytes)
  crc[crc.length - 20] ^= 0xff // inside the last IDAT: its CRC no longer matches
  const cases: [string, string, Buffer, RegExp][] = [
    ['truncated.png', 'png', pngBytes.subarray(0, pngBytes.length >> 1), /corrupt PNG/],
    ['crc.png', 'png', crc, /corrupt PNG/],
    ['truncated.jpg', 'jpg', jpegBytes.subarray(0, jpegBytes.length >> 1), /corrupt JPEG/],
    ['header-only.jpg', 'jpg', jpegBytes.subarray(0, 20), /corrupt JPEG/],
    ['text.png', 'png', Buffer.from('not an image'), /neither a JPEG nor a PNG/],
  ]
  for (const [name, , bytes, why] of cases) {
    const root = path.join(work, `bad-${name}`)
    mkdirSync(path.join(root, 'a'), { recursive: true })
    copyFileSync(png.path, path.join(root, 'a', 'good.png'))
    const bad = path.join(root, 'a', name)
    writeFileSync(bad, bytes)
    const tr = await Trainer.create(options({ kind: 'imagefolder', root, imageSize: 28 }, { batchSize: 2 }))
    const err = await tr.trainSteps(1).then(
      () => new Error('trained'),
      (e: Error) => e,
    )
    t.match(err.message, bad, `${name}: names the file`)
    t.match(err.message, why, `${name}: says what is wrong (${err.message})`)
    t.same(tr.position, { epoch: 0, index: 0 }, `${name}: the failed batch was not consumed`)
    tr.close()
  }
})
