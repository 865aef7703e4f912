import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { gunzipSync, gzipSync } from 'node:zlib'
import { FASHION_MNIST } from './imagefolder.js'

/** idx header: magic (type, rank), then one big-endian u32 per dimension. */
function idxSlice(file: string, count: number): Buffer {
  const all = gunzipSync(readFileSync(join(FASHION_MNIST, file)))
  const rank = all[3]!
  const dims = Array.from({ length: rank }, (_, i) => all.readUInt32BE(4 + 4 * i))
  if (count > dims[0]!) throw new Error(`${file} has only ${dims[0]} items`)
  const itemBytes = dims.slice(1).reduce((a, b) => a * b, 1)
  const headerBytes = 4 + 4 * rank
  const out = Buffer.from(all.subarray(0, headerBytes + count * itemBytes))
  out.writeUInt32BE(count, 4)
  return out
}

/**
 * Writes the first `train` and `test` samples of the real Fashion-MNIST (Debian's
 * dataset-fashion-mnist) as gzipped idx files under `dir`, so tests that restart training many
 * times run in seconds on real data.
 */
export function writeFashionSubset(dir: string, train: number, test: number): string[] {
  mkdirSync(dir, { recursive: true })
  const files: [string, number][] = [
    ['train-images-idx3-ubyte.gz', train],
    ['train-labels-idx1-ubyte.gz', train],
    ['t10k-images-idx3-ubyte.gz', test],
    ['t10k-labels-idx1-ubyte.gz', test],
  ]
  for (const [name, n] of files) writeFileSync(join(dir, name), gzipSync(idxSlice(name, n)))
  return files.map(([name]) => name)
}
