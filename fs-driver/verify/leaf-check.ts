import { webcrypto } from 'node:crypto'
import { CID_BLOCK_SIZE } from '../../lib/content/cid.js'

/** A block whose bytes are not those the manifest names; the read that wanted it fails with EIO. */
export class LeafMismatchError extends Error {}

export interface LeafMismatch {
  /** Index of the 1 MiB leaf in the file. */
  leaf: number
  expected: string
  actual: string
}

/**
 * Checks block `index` (of `blockSize` bytes, a multiple of the leaf size) against the hex sha256
 * of each leaf it holds; returns the first mismatch, or undefined when every leaf matches. Hashed
 * on the thread pool, so that checking does not stall every other file operation.
 */
export async function checkLeaves(leaves: readonly string[], blockSize: number, index: number, data: Buffer): Promise<LeafMismatch | undefined> {
  const first = (index * blockSize) / CID_BLOCK_SIZE
  const digests: Promise<ArrayBuffer>[] = []
  for (let off = 0; off < data.length; off += CID_BLOCK_SIZE) digests.push(webcrypto.subtle.digest('SHA-256', data.subarray(off, off + CID_BLOCK_SIZE)))
  const got = await Promise.all(digests)
  for (let i = 0; i < got.length; i++) {
    const actual = Buffer.from(got[i]!).toString('hex')
    const expected = leaves[first + i]
    if (actual !== expected) return { leaf: first + i, expected: expected ?? '(none)', actual }
  }
  return undefined
}
