/**
 * The CNN on CUDA: test accuracy after one epoch and training throughput (the second epoch, after
 * cuDNN has picked its kernels) at batch 256 and 1024. Run by scripts/bench/gpu.sh on the GPU
 * machine; prints one JSON line per batch size, then a Markdown table for the README.
 */
import { Trainer } from '../../addon/index.js'

const DATA = process.env.O3_FASHION_MNIST ?? '/usr/share/datasets/fashion-mnist'

interface GpuResult {
  batch: number
  device: string
  firstEpochSeconds: number
  accuracyAfterOneEpoch: number
  samplesPerSecond: number
}

async function measure(batch: number): Promise<GpuResult> {
  const trainer = await Trainer.create({
    model: 'cnn',
    device: 'cuda',
    seed: 0,
    optimizer: { type: 'adam', lr: 1e-3 },
    data: { kind: 'mnist', root: DATA, split: 'train' },
    batchSize: batch,
    prefetch: 8,
    workers: 4,
  })
  try {
    const first = await trainer.trainEpoch()
    const accuracy = (await trainer.evaluate({ kind: 'mnist', root: DATA, split: 'test' }, 1000)).accuracy
    const second = await trainer.trainEpoch()
    return {
      batch,
      device: trainer.device.name,
      firstEpochSeconds: first.seconds,
      accuracyAfterOneEpoch: accuracy,
      samplesPerSecond: second.samples / second.seconds,
    }
  } finally {
    trainer.close()
  }
}

const results: GpuResult[] = []
for (const batch of [256, 1024]) {
  const r = await measure(batch)
  console.log(JSON.stringify(r))
  results.push(r)
}
console.log('\n| batch | samples/s (CUDA, fp32) | test accuracy after one epoch | device |\n|---|---|---|---|')
for (const r of results) {
  console.log(`| ${r.batch} | ${r.samplesPerSecond.toFixed(0)} | ${(r.accuracyAfterOneEpoch * 100).toFixed(1)}% | ${r.device} |`)
}
