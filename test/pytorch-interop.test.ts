// Checkpoints that PyTorch loads, and weights from PyTorch that o3train starts from: o3train on
// real Fashion-MNIST (a subset), the real S3 server, o3ckpt get, the real addon, and Debian's
// python3-torch running examples/pytorch/.
import t, { type Test } from 'tap'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { gunzipSync } from 'node:zlib'
import { Trainer, type ModelName, type StateTensor } from '../addon/index.js'
import { encodeHeader, parseSafetensors } from '../checkpoint/safetensors.js'
import { applyInitWeights } from '../trainer/init-weights.js'
import { tempDir } from './fixtures/ckpt.js'
import { writeFashionSubset } from './support/fashion-subset.js'
import { createBucket, serverEnv, useS3Server } from './support/s3-server.js'
import { EXAMPLES, pytorchRunner, type Ran } from './support/pytorch-runner.js'

const TEST_IMAGES = 300
/** both evaluate in float32 batches of up to 1000: sums may differ in the last bits. */
const LOSS_TOLERANCE = 1e-4
/** Test images whose whole log-softmax row is compared. */
const ROWS = 2

const info = await useS3Server(t)
const BUCKET = `pytorch-interop-${process.pid}`
await createBucket(info, BUCKET)
const scratch = tempDir(t)

const { node, python: runPython } = pytorchRunner(scratch, serverEnv(info))
const o3train = (args: string[]) =>
  node('trainer/cli.ts', ['--dataset', 'fashion-mnist', '--device', 'cpu', '--threads', '2', '--batch', '64', '--seed', '7', ...args])
const python = (script: string, args: string[]) => runPython([join(EXAMPLES, script), ...args])

interface PyEval {
  model: string
  samples: number
  accuracy: number
  loss: number
  correct_per_class: number[]
  total_per_class: number[]
}
async function pyEvaluate(file: string, data: string, extra: string[] = []): Promise<PyEval> {
  const r = await python('evaluate.py', [file, '--data', data, '--json', '--threads', '2', ...extra])
  if (r.code !== 0) throw new Error(`evaluate.py ${file} exited ${r.code}: ${r.stderr}`)
  return JSON.parse(r.stdout) as PyEval
}

interface Summary {
  steps: number
  test: { accuracy: number; loss: number }
}
const summaryOf = (r: Ran): Summary => JSON.parse(r.stdout.trim().split('\n').at(-1)!) as Summary
/** The lines a command ended with on stderr (its error), without the JSON log lines before them. */
const errorLines = (r: Ran, prog: string) => r.stderr.split('\n').filter((l) => l.startsWith(`${prog}:`))

/** The test split of a Fashion-MNIST directory as one 784-byte buffer per image, and labels. */
function testSplit(dir: string): { images: Buffer[]; labels: number[] } {
  const body = (name: string, rank: number) => gunzipSync(readFileSync(join(dir, name))).subarray(4 + 4 * rank)
  const pixels = body('t10k-images-idx3-ubyte.gz', 3)
  const labels = [...body('t10k-labels-idx1-ubyte.gz', 1)]
  return { images: labels.map((_, i) => pixels.subarray(i * 784, (i + 1) * 784)), labels }
}

/** Writes images and labels as an uncompressed Fashion-MNIST test split in a new directory. */
let splits = 0
function writeTestSplit(images: Buffer[], labels: number[]): string {
  const dir = join(scratch, `split-${splits++}`)
  mkdirSync(dir)
  const header = (dims: number[]) => {
    const h = Buffer.alloc(4 + 4 * dims.length)
    h.writeUInt32BE(0x800 + dims.length, 0)
    dims.forEach((d, i) => h.writeUInt32BE(d, 4 + 4 * i))
    return h
  }
  writeFileSync(join(dir, 't10k-images-idx3-ubyte'), Buffer.concat([header([images.length, 28, 28]), ...images]))
  writeFileSync(join(dir, 't10k-labels-idx1-ubyte'), Buffer.concat([header([labels.length]), Buffer.from(labels)]))
  return dir
}

/** Correct answers per class of the trainer's model, from one evaluation per class. */
async function correctPerClass(trainer: Trainer, split: { images: Buffer[]; labels: number[] }): Promise<number[]> {
  const out: number[] = []
  for (let c = 0; c < 10; c++) {
    const images = split.images.filter((_, i) => split.labels[i] === c)
    if (images.length === 0) {
      out.push(0)
      continue
    }
    const e = await trainer.evaluate({
      kind: 'mnist',
      root: writeTestSplit(
        images,
        images.map(() => c),
      ),
      split: 'test',
    })
    out.push(Math.round(e.accuracy * e.samples))
  }
  return out
}

/**
 * The trainer's log-softmax row for one image. The addon has no predict call, but its evaluation
 * loss over a one-image set labelled k is -log softmax(logits)[k]: ten of them give the row.
 */
async function logSoftmaxRow(trainer: Trainer, image: Buffer): Promise<number[]> {
  const row: number[] = []
  for (let k = 0; k < 10; k++) row.push(-(await trainer.evaluate({ kind: 'mnist', root: writeTestSplit([image], [k]), split: 'test' })).loss)
  return row
}

function logSoftmax(logits: number[]): number[] {
  const max = Math.max(...logits)
  const lse = max + Math.log(logits.reduce((s, x) => s + Math.exp(x - max), 0))
  return logits.map((x) => x - lse)
}

/** Rows of a dumped F32 [N, 10] logits tensor. */
function logitRows(file: string): number[][] {
  const logits = parseSafetensors(readFileSync(file), file).tensors.find((x) => x.name === 'logits')!
  const all = new Float32Array(logits.data.buffer.slice(logits.data.byteOffset, logits.data.byteOffset + logits.data.length))
  return Array.from({ length: logits.shape[0]! }, (_, i) => [...all.subarray(i * 10, (i + 1) * 10)])
}

function closeRows(t: Test, got: number[][], want: number[][], what: string): void {
  const worst = Math.max(...got.flatMap((row, i) => row.map((x, k) => Math.abs(x - want[i]![k]!))))
  t.ok(worst < LOSS_TOLERANCE, `${what}: largest difference ${worst.toExponential(2)}`)
}

/** Training samples per model: enough to learn something, few enough for a 2-core machine. */
const TRAIN: Record<ModelName, number> = { cnn: 512, mlp: 512, resnet: 256 }

for (const model of ['cnn', 'mlp', 'resnet'] as const) {
  t.test(`${model}: a checkpoint of o3train gives in PyTorch the same accuracy and logits; PyTorch's weights give in o3train the same`, async (t) => {
    const data = join(scratch, `fmnist-${model}`)
    writeFashionSubset(data, TRAIN[model], TEST_IMAGES)
    const runUrl = `o3://${BUCKET}/runs/${model}`
    const trained = await o3train(['--data', data, '--model', model, '--epochs', '1', '--lr', '0.05', '--ckpt', runUrl])
    t.equal(trained.code, 0, trained.stderr)
    const reported = summaryOf(trained).test
    const ckpt = join(scratch, `${model}.safetensors`)
    const got = await node('checkpoint/cli.ts', ['get', runUrl, 'latest', '-o', ckpt])
    t.equal(got.code, 0, got.stderr)

    const logits = join(scratch, `${model}.logits.safetensors`)
    const py = await pyEvaluate(ckpt, data, ['--dump-logits', logits, '--dump-count', String(ROWS)])
    t.equal(py.model, model, 'the model kind comes from the checkpoint metadata')
    t.equal(py.samples, TEST_IMAGES)
    t.ok(Math.abs(py.accuracy - reported.accuracy) <= 0.001, `PyTorch ${py.accuracy} vs o3train ${reported.accuracy}`)
    t.ok(Math.abs(py.loss - reported.loss) < LOSS_TOLERANCE, `test loss: PyTorch ${py.loss} vs o3train ${reported.loss}`)

    // o3train's own model, from the same file, through the addon.
    const split = testSplit(data)
    const trainer = await Trainer.create({
      model,
      device: 'cpu',
      threads: 2,
      seed: 7,
      optimizer: { type: 'sgd', lr: 0.05 },
      data: { kind: 'mnist', root: data, split: 'train' },
      batchSize: 64,
    })
    t.teardown(() => trainer.close())
    await applyInitWeights(trainer, ckpt)
    t.same(await correctPerClass(trainer, split), py.correct_per_class, 'correct answers per class are the same')
    const ours = []
    for (let i = 0; i < ROWS; i++) ours.push(await logSoftmaxRow(trainer, split.images[i]!))
    closeRows(t, ours, logitRows(logits).map(logSoftmax), `log-softmax of the first ${ROWS} test images`)

    // The reverse: PyTorch's own initialisation, bare state_dict() names, loaded by o3train.
    const fresh = join(scratch, `${model}.pytorch-init.safetensors`)
    const saved = await python('save_init.py', [fresh, '--model', model, '--seed', '5'])
    t.equal(saved.code, 0, saved.stderr)
    t.notOk(
      parseSafetensors(readFileSync(fresh), fresh).tensors.some((x) => x.name.startsWith('model.')),
      'PyTorch wrote bare names',
    )
    const pyFresh = await pyEvaluate(fresh, data)
    t.equal(await applyInitWeights(trainer, fresh), parseSafetensors(readFileSync(ckpt), ckpt).tensors.filter((x) => x.name.startsWith('model.')).length)
    const e = await trainer.evaluate({ kind: 'mnist', root: data, split: 'test' })
    t.equal(e.accuracy, pyFresh.accuracy, `PyTorch-initialised weights: o3train ${e.accuracy} vs PyTorch ${pyFresh.accuracy}`)
    t.ok(Math.abs(e.loss - pyFresh.loss) < LOSS_TOLERANCE, `test loss: o3train ${e.loss} vs PyTorch ${pyFresh.loss}`)
  })
}

t.test('o3train --init: a run starts from weights PyTorch wrote; mismatches exit 64 with one line; a resumed run ignores it', async (t) => {
  const data = join(scratch, 'fmnist-cnn')
  const fromPyTorch = join(scratch, 'cnn.from-pytorch.safetensors')
  const saved = await python('save_init.py', [fromPyTorch, '--from', join(scratch, 'cnn.safetensors')])
  t.equal(saved.code, 0, saved.stderr)
  const py = await pyEvaluate(fromPyTorch, data)
  // A learning rate too small to move float32 weights: the test accuracy after the epoch is the one it started at.
  const r = await o3train(['--data', data, '--model', 'cnn', '--epochs', '1', '--lr', '1e-12', '--init', fromPyTorch])
  t.equal(r.code, 0, r.stderr)
  t.match(r.stderr, /"msg":"model weights from --init"/)
  t.ok(Math.abs(summaryOf(r).test.accuracy - py.accuracy) <= 0.001, `o3train from PyTorch's weights ${summaryOf(r).test.accuracy} vs PyTorch ${py.accuracy}`)

  // One tensor missing, one of another shape, one the model does not have.
  const good = parseSafetensors(readFileSync(fromPyTorch), fromPyTorch).tensors
  const bad: Pick<StateTensor, 'name' | 'dtype' | 'shape' | 'data'>[] = [
    ...good.filter((x) => x.name !== 'fc2.bias' && x.name !== 'conv1.bias'),
    { name: 'conv1.bias', dtype: 'F32', shape: [16], data: Buffer.alloc(64) },
    { name: 'extra.weight', dtype: 'F32', shape: [2], data: Buffer.alloc(8) },
  ]
  const badFile = join(scratch, 'cnn.bad.safetensors')
  writeFileSync(badFile, Buffer.concat([encodeHeader(bad, {}), ...bad.map((x) => x.data)]))
  const refused = await o3train(['--data', data, '--model', 'cnn', '--epochs', '1', '--init', badFile])
  t.equal(refused.code, 64, refused.stderr)
  const lines = errorLines(refused, 'o3train')
  t.equal(lines.length, 1, 'one line')
  t.match(lines[0], /missing fc2\.bias \(F32 \[10\]\)/)
  t.match(lines[0], /conv1\.bias is F32 \[16\], the model's is F32 \[32\]/)
  t.match(lines[0], /unexpected extra\.weight/)
  const pyRefused = await python('evaluate.py', [badFile, '--data', data, '--model', 'cnn'])
  t.equal(pyRefused.code, 64)
  t.equal(errorLines(pyRefused, 'evaluate.py').length, 3, `one line per mismatch:\n${pyRefused.stderr}`)
  const wrongKind = await python('evaluate.py', [fromPyTorch, '--data', data, '--model', 'mlp'])
  t.equal(wrongKind.code, 64)
  t.match(errorLines(wrongKind, 'evaluate.py'), [/holds a 'cnn' model, not 'mlp'/])

  // Rerunning the command of a checkpointed run continues it: --init does not reset its weights.
  const resumed = await o3train(['--data', data, '--model', 'cnn', '--epochs', '1', '--lr', '0.05', '--ckpt', `o3://${BUCKET}/runs/cnn`, '--init', badFile])
  t.equal(resumed.code, 0, resumed.stderr)
  t.match(resumed.stderr, /--init ignored: resuming from a checkpoint/)
  t.equal(summaryOf(resumed).steps, 0)
})
