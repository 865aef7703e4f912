// examples/pytorch/evaluate.py on every layout o3train trains on: the real addon's image path
// against the script's, byte for byte, on PNGs and JPEGs of every colour type; then models trained
// by o3train on WebDataset shards, an ImageFolder tree and idx files (real Fashion-MNIST, the real
// S3 server, o3ckpt get), each evaluated by Debian's python3-torch on the same test images in the
// other two layouts, against the accuracy o3train reported.
import t, { type Test } from 'tap'
import { execFileSync } from 'node:child_process'
import { cpSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { decodeSample, Trainer } from '../addon/index.js'
import { encodeHeader, parseSafetensors } from '../checkpoint/safetensors.js'
import { directorySink, writeShards } from '../upload/webdataset.js'
import { tempDir } from './fixtures/ckpt.js'
import { writeFashionSubset } from './support/fashion-subset.js'
import { writeGrayPngTree } from './support/imagefolder.js'
import { createBucket, serverEnv, useS3Server } from './support/s3-server.js'
import { EXAMPLES, PYTHON, pytorchRunner } from './support/pytorch-runner.js'

const TRAIN = 512
const TEST = 200
/**
 * The mean test loss of the same weights on the same tensors, summed by libtorch in o3train and
 * by PyTorch here, in float32 batches that may group the images in another order: the per-image
 * losses agree to a few float32 ulps (about 1e-7 relative), their mean to well within this.
 */
const LOSS_TOLERANCE = 1e-4

const info = await useS3Server(t)
const BUCKET = `pytorch-layouts-${process.pid}`
await createBucket(info, BUCKET)
const work = tempDir(t)

const { node, python } = pytorchRunner(work, serverEnv(info))

interface PyEval {
  model: string
  dataset: string
  input: Record<string, unknown>
  samples: number
  accuracy: number
  loss: number
  total_per_class: number[]
}
async function evaluatePy(file: string, args: string[]): Promise<PyEval> {
  const r = await python([join(EXAMPLES, 'evaluate.py'), file, '--json', '--threads', '2', ...args])
  if (r.code !== 0) throw new Error(`evaluate.py ${file} ${args.join(' ')} exited ${r.code}: ${r.stderr}`)
  return JSON.parse(r.stdout) as PyEval
}

// The same test images in the three layouts; training images in each layout too.
const idx = join(work, 'idx')
writeFashionSubset(idx, TRAIN, TEST)
const trainTree = writeGrayPngTree(join(work, 'train-tree'), 'train', TRAIN)
const testTree = writeGrayPngTree(join(work, 'test-tree'), 't10k', TEST)
const trainShards = join(work, 'train-shards')
const testShards = join(work, 'test-shards')
await writeShards(trainTree, directorySink(trainShards), { shardSize: 64 << 10 })
const writtenTest = await writeShards(testTree, directorySink(testShards), { shardSize: 24 << 10 })

t.test("the script's images are the addon's, byte for byte: PNG and JPEG of every colour type, any size, and idx images", async (t) => {
  // Random pixels (seeded) so that every interpolation weight and colour conversion shows.
  const images = join(work, 'codec')
  execFileSync(PYTHON, [
    '-c',
    `
import io, os, random, struct, sys
from PIL import Image, PngImagePlugin
random.seed(7)
out = sys.argv[1]; os.makedirs(out)
def rgb(w, h):
    im = Image.new('RGB', (w, h)); im.putdata([tuple(random.randrange(256) for _ in range(3)) for _ in range(w * h)]); return im
def save(name, im, **kw): im.save(os.path.join(out, name), **kw)
save('rgb.png', rgb(37, 23))
rgba = rgb(30, 30).convert('RGBA'); rgba.putalpha(Image.linear_gradient('L').resize((30, 30))); save('rgba.png', rgba)
save('gray-alpha.png', rgba.convert('LA'))
save('palette.png', rgb(20, 31).convert('P', palette=Image.ADAPTIVE, colors=16))
gamma = PngImagePlugin.PngInfo(); gamma.add(b'gAMA', struct.pack('>I', 100000))
save('gray-linear.png', rgb(33, 33).convert('L'), pnginfo=gamma)
save('gray16.png', rgb(33, 33).convert('L').point(lambda v: v * 257, 'I').convert('I;16'))
save('rgb420.jpg', rgb(40, 28), quality=90)
save('rgb444-progressive.jpg', rgb(40, 28), quality=90, subsampling=0, progressive=True)
save('gray.jpg', rgb(29, 41).convert('L'), quality=80)
`,
    images,
  ])
  const files = readdirSync(images).sort()
  const channels = [1, 3] as const
  const sizes = [8, 28, 30, 64]
  const pyOut = JSON.parse(
    execFileSync(
      PYTHON,
      [
        '-c',
        `
import json, os, sys
sys.path.insert(0, sys.argv[1])
from images import image_sample
out = {}
for f in sys.argv[3:]:
    data = open(os.path.join(sys.argv[2], f), 'rb').read()
    for c in (1, 3):
        for s in (8, 28, 30, 64):
            out[f'{f} {c} {s}'] = image_sample(data, f, c, s).numpy().tobytes().hex()
print(json.dumps(out))
`,
        EXAMPLES,
        images,
        ...files,
      ],
      { encoding: 'utf8', maxBuffer: 64 << 20 },
    ),
  ) as Record<string, string>
  for (const f of files) {
    const bytes = readFileSync(join(images, f))
    for (const c of channels)
      for (const s of sizes) t.equal(pyOut[`${f} ${c} ${s}`], (await decodeSample(bytes, c, s)).toString('hex'), `${f}: ${c} channel(s), ${s} x ${s}`)
  }

  // An idx image is the gray PNG of its bytes: replicated into RGB and resized, it is what the addon makes of that PNG.
  const first = 12
  const fromIdx = JSON.parse(
    execFileSync(
      PYTHON,
      [
        '-c',
        `
import json, sys
sys.path.insert(0, sys.argv[1])
from fashion_mnist import load_split
from images import gray_samples
images = load_split(sys.argv[2], 'test')[0][:int(sys.argv[3])].squeeze(1)
print(json.dumps({f'{c} {s}': [x.numpy().tobytes().hex() for x in gray_samples(images, c, s)] for c in (1, 3) for s in (20, 28, 32)}))
`,
        EXAMPLES,
        idx,
        String(first),
      ],
      { encoding: 'utf8', maxBuffer: 64 << 20 },
    ),
  ) as Record<string, string[]>
  const pngs = readdirSync(testTree)
    .flatMap((c) => readdirSync(join(testTree, c)).map((f) => ({ index: Number(f.slice(0, 5)), path: join(testTree, c, f) })))
    .filter((p) => p.index < first)
    .sort((a, b) => a.index - b.index)
  t.equal(pngs.length, first)
  for (const c of channels)
    for (const s of [20, 28, 32]) {
      const native = await Promise.all(pngs.map(async (p) => (await decodeSample(readFileSync(p.path), c, s)).toString('hex')))
      t.same(fromIdx[`${c} ${s}`], native, `idx images as ${c} x ${s} x ${s}`)
    }
})

interface Summary {
  test: { accuracy: number; loss: number }
}

/** Trains a model with o3train (one epoch, a checkpoint at its end), fetches the checkpoint, and returns it with the test result o3train reported. */
async function trained(t: Test, name: string, args: string[]): Promise<{ file: string; reported: Summary['test'] }> {
  const runUrl = `o3://${BUCKET}/runs/${name}`
  const r = await node('trainer/cli.ts', [
    '--device',
    'cpu',
    '--threads',
    '2',
    '--batch',
    '32',
    '--seed',
    '3',
    '--epochs',
    '1',
    '--lr',
    '0.05',
    '--ckpt',
    runUrl,
    ...args,
  ])
  t.equal(r.code, 0, r.stderr)
  const reported = (JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Summary).test
  t.ok(reported.accuracy > 0.3 && reported.accuracy < 1, `o3train reports a model that learnt something: ${reported.accuracy}`)
  const file = join(work, `${name}.safetensors`)
  const got = await node('checkpoint/cli.ts', ['get', runUrl, 'latest', '-o', file])
  t.equal(got.code, 0, got.stderr)
  return { file, reported }
}

function sameResult(t: Test, py: PyEval, reported: Summary['test'], what: string): void {
  t.equal(py.samples, TEST, `${what}: every test image`)
  t.equal(py.accuracy, reported.accuracy, `${what}: accuracy ${py.accuracy}, as o3train reported`)
  t.ok(Math.abs(py.loss - reported.loss) < LOSS_TOLERANCE, `${what}: loss ${py.loss} vs o3train's ${reported.loss}`)
}

const NORMALIZE = { mul: 2 / 255, sub: 1 }
const lastShard = writtenTest.shards.length - 1
const shardPattern = `shard-{000000..${String(lastShard).padStart(6, '0')}}.tar`

t.test('trained on shards (3 x 32 x 32): the ImageFolder and the idx files of the test images score as o3train scored its shards', async (t) => {
  const { file, reported } = await trained(t, 'shards', [
    '--dataset',
    'webdataset',
    '--data',
    trainShards,
    '--test-data',
    testShards,
    '--model',
    'cnn',
    '--image-size',
    '32',
    '--channels',
    '3',
  ])
  const input = { dataset: 'webdataset', channels: 3, height: 32, width: 32, classes: 10, resize: 'bilinear', normalize: NORMALIZE }
  t.same(JSON.parse(parseSafetensors(readFileSync(file), file).header.metadata.input!), input, 'the checkpoint records its input')
  const tree = await evaluatePy(file, ['--data', testTree, '--dataset', 'imagefolder'])
  t.same(tree.input, input, 'the model is built from the record')
  sameResult(t, tree, reported, 'ImageFolder')
  sameResult(t, await evaluatePy(file, ['--data', idx, '--dataset', 'fashion-mnist']), reported, 'idx files, gray replicated and resized')
})

t.test(
  'trained on an ImageFolder (1 x 20 x 20): the shards and the idx files score as o3train scored its tree; other class directories are refused',
  async (t) => {
    const { file, reported } = await trained(t, 'tree', [
      '--dataset',
      'imagefolder',
      '--data',
      trainTree,
      '--test-data',
      testTree,
      '--model',
      'mlp',
      '--image-size',
      '20',
      '--channels',
      '1',
    ])
    const recorded = JSON.parse(parseSafetensors(readFileSync(file), file).header.metadata.input!) as { classNames: string[] }
    t.same(recorded.classNames, ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'], 'the class directories, by label')
    sameResult(t, await evaluatePy(file, ['--data', testShards, '--dataset', 'webdataset', '--shards', shardPattern]), reported, 'shards')
    sameResult(t, await evaluatePy(file, ['--data', idx, '--dataset', 'fashion-mnist']), reported, 'idx files, resized')

    // A test tree without class 3: every label after it would shift. Both refuse it.
    const lacking = join(work, 'tree-without-3')
    cpSync(testTree, lacking, { recursive: true })
    rmSync(join(lacking, '3'), { recursive: true })
    const refused = await python([join(EXAMPLES, 'evaluate.py'), file, '--data', lacking])
    t.equal(refused.code, 64, refused.stderr)
    t.match(refused.stderr.trim(), /^evaluate\.py: evaluation class 3 is '4' but the model's class 3 is '3'/)
    const trainer = await Trainer.create({
      model: 'mlp',
      device: 'cpu',
      threads: 2,
      optimizer: { type: 'sgd', lr: 0.05 },
      data: { kind: 'imagefolder', root: trainTree, imageSize: 20, channels: 1 },
      batchSize: 32,
    })
    t.teardown(() => trainer.close())
    t.same(trainer.dataset.classNames, recorded.classNames)
    await t.rejects(
      trainer.evaluate({ kind: 'imagefolder', root: lacking, imageSize: 20, channels: 1 }),
      /evaluation class 3 is '4' but the model's class 3 is '3'/,
    )
  },
)

t.test(
  'trained on idx files: the ImageFolder and the shards score as o3train scored its idx files; a checkpoint without the record evaluates as before',
  async (t) => {
    const { file, reported } = await trained(t, 'idx', ['--dataset', 'fashion-mnist', '--data', idx, '--model', 'cnn'])
    sameResult(t, await evaluatePy(file, ['--data', testTree, '--dataset', 'imagefolder']), reported, 'ImageFolder')
    sameResult(t, await evaluatePy(file, ['--data', testShards, '--dataset', 'webdataset']), reported, 'shards')

    // As an older o3train wrote it: no input record.
    const { header, tensors } = parseSafetensors(readFileSync(file), file)
    const { input: _input, ...older } = header.metadata
    const old = join(work, 'idx-no-input.safetensors')
    writeFileSync(old, Buffer.concat([encodeHeader(tensors, older), ...tensors.map((x) => x.data)]))
    const py = await evaluatePy(old, ['--data', idx])
    t.equal(py.dataset, 'fashion-mnist')
    sameResult(t, py, reported, 'a checkpoint without the input record, on idx files')
  },
)
