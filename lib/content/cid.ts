import { createHash, webcrypto, type Hash } from 'node:crypto'
import { importer, type BufferImporterResult, type File as ImporterFile, type ImporterOptions } from 'ipfs-unixfs-importer'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { create as createDigest } from 'multiformats/hashes/digest'
import { sha256 } from 'multiformats/hashes/sha2'
import { O3IntegrityError } from '../o3/errors.js'

/** UnixFS leaf size of `ipfs add --chunker=size-1048576`. */
export const CID_BLOCK_SIZE = 1 << 20
/** Kubo's default width of a balanced UnixFS file DAG. */
export const CID_MAX_LINKS = 174

/** What an upload or a download of some content is checked against. */
export interface ContentDigest {
  /** CIDv1 base32, as `ipfs add --cid-version=1 --raw-leaves --chunker=size-1048576` prints it. */
  cid: string
  /** Hex sha256 of the whole content. */
  sha256: string
  size: number
}

/** Blocks the importer hashes but this module never keeps: only the root CID is wanted. */
const discard = { put: async (cid: CID) => cid }

/**
 * The root of `content` in the DAG layout of `ipfs add --cid-version=1 --raw-leaves --chunker=size-1048576`,
 * with the DAG's cumulative size (its blocks' bytes: the Tsize of a directory's link to it).
 */
async function importRoot(
  content: AsyncIterable<Uint8Array>,
  bufferImporter: ImporterOptions['bufferImporter'],
  blockWriteConcurrency: number,
): Promise<{ cid: CID; dagSize: number }> {
  const options: ImporterOptions = {
    cidVersion: 1,
    rawLeaves: true,
    reduceSingleLeafToSelf: true,
    chunker: fixedSize({ chunkSize: CID_BLOCK_SIZE }),
    layout: balanced({ maxChildrenPerNode: CID_MAX_LINKS }),
    bufferImporter,
    blockWriteConcurrency,
  }
  let last: { cid: CID; dagSize: number } | undefined
  for await (const entry of importer([{ content }], discard, options)) last = { cid: entry.cid, dagSize: Number(entry.size) }
  if (!last) throw new Error('the UnixFS importer produced no root')
  return last
}

/** How many 1 MiB leaves content of `size` bytes has (an empty file has one, empty). */
export function leafCount(size: number): number {
  return Math.max(1, Math.ceil(size / CID_BLOCK_SIZE))
}

/**
 * The CID of content of `size` bytes whose leaves have these hex sha256 digests, built the way the
 * importer builds it (balanced, 174 links, raw leaves) without the content: a leaf list that does
 * not hash to a file's CID was not taken from that file.
 */
export async function cidFromLeaves(leaves: readonly string[], size: number): Promise<string> {
  if (leaves.length !== leafCount(size)) throw new O3IntegrityError(`${leaves.length} leaf digests for ${size} bytes; expected ${leafCount(size)}`)
  // A single raw leaf is its own root; the importer would say the same, slower.
  if (leaves.length === 1) return CID.createV1(raw.code, createDigest(sha256.code, Buffer.from(leaves[0]!, 'hex'))).toString()
  async function* fromDigests(): AsyncGenerator<() => Promise<BufferImporterResult>> {
    for (let i = 0; i < leaves.length; i++) {
      const bytes = Buffer.from(leaves[i]!, 'hex')
      const leafSize = i < leaves.length - 1 ? CID_BLOCK_SIZE : size - i * CID_BLOCK_SIZE
      // The layout needs a leaf's CID and size; its bytes only for a file of one leaf, which then is its own root.
      yield () => Promise.resolve({ cid: CID.createV1(raw.code, createDigest(sha256.code, bytes)), size: BigInt(leafSize), block: new Uint8Array(0) })
    }
  }
  const none = (async function* (): AsyncGenerator<Uint8Array> {})()
  return (await importRoot(none, () => fromDigests(), 1)).cid.toString()
}

/**
 * Incremental CID + sha256 of a byte stream (push API), with memory bounded by a few 1 MiB blocks
 * whatever the content's size. Whole 1 MiB blocks inside a chunk are queued as views of it, not
 * buffered, so the promise of `update` settles only once the chunk is no longer referenced: a
 * caller that awaits it may then reuse or free the chunk's memory.
 */
export class ContentHasher {
  private readonly whole: Hash = createHash('sha256')
  private size = 0
  /** Bytes of a block that straddles two chunks, the only bytes this class buffers. */
  private carry: Buffer | undefined
  private carryLen = 0
  private readonly queue: Uint8Array[] = []
  private ended = false
  private wakeImporter: (() => void) | undefined
  /** End offsets of enqueued blocks with a callback to run once hashing passes them. */
  private readonly waiters: { end: number; release: () => void }[] = []
  private enqueuedBytes = 0
  private hashedBytes = 0
  private readonly root: Promise<{ cid: CID; dagSize: number }>
  private failure: unknown
  private readonly leaves: string[] = []
  private rootDagSize: number | undefined

  constructor() {
    // Leaves hashing at once, each a 1 MiB copy; the thread pool has 4 threads anyway.
    this.root = importRoot(this.blocks(), (file) => this.leafImporter(file), 4)
    // A failure is reported by digest(); until then nobody may be awaiting the root.
    this.root.catch((err) => {
      this.failure = err
      for (const w of this.waiters.splice(0)) w.release()
    })
  }

  /**
   * Raw leaves: a block's CID is its sha256. WebCrypto copies the block when called and hashes it
   * on the thread pool, so the caller's bytes are free at once and leaf hashing runs beside the
   * whole-content sha256 on this thread; the importer keeps a bounded number in flight.
   */
  private async *leafImporter(file: ImporterFile): AsyncGenerator<() => Promise<BufferImporterResult>> {
    for await (const block of file.content) {
      const index = this.leaves.length
      this.leaves.push('')
      const digest = webcrypto.subtle.digest('SHA-256', block)
      // Read now: once hashed() releases it, the caller may reuse or detach the block's memory.
      const size = BigInt(block.length)
      this.hashed(block.length)
      yield async () => {
        const bytes = new Uint8Array(await digest)
        this.leaves[index] = Buffer.from(bytes).toString('hex')
        return { cid: CID.createV1(raw.code, createDigest(sha256.code, bytes)), size, block }
      }
    }
  }

  private async *blocks(): AsyncGenerator<Uint8Array> {
    for (;;) {
      const next = this.queue.shift()
      if (next) {
        yield next
        continue
      }
      if (this.ended) return
      await new Promise<void>((resolve) => (this.wakeImporter = resolve))
      this.wakeImporter = undefined
    }
  }

  private enqueue(block: Uint8Array): void {
    this.queue.push(block)
    this.enqueuedBytes += block.length
    this.wakeImporter?.()
  }

  private hashed(bytes: number): void {
    this.hashedBytes += bytes
    while (this.waiters.length > 0 && this.waiters[0]!.end <= this.hashedBytes) this.waiters.shift()!.release()
  }

  /** Adds the next bytes. Settles once `chunk` is no longer referenced. */
  update(chunk: Uint8Array): Promise<void> {
    if (this.ended) throw new Error('ContentHasher.update after digest')
    if (this.failure) return Promise.reject(this.failure)
    this.whole.update(chunk)
    this.size += chunk.length
    let off = 0
    if (this.carryLen > 0) {
      const n = Math.min(chunk.length, CID_BLOCK_SIZE - this.carryLen)
      this.carry!.set(chunk.subarray(0, n), this.carryLen)
      this.carryLen += n
      off = n
      if (this.carryLen === CID_BLOCK_SIZE) this.flushCarry()
    }
    while (chunk.length - off >= CID_BLOCK_SIZE) {
      this.enqueue(chunk.subarray(off, off + CID_BLOCK_SIZE))
      off += CID_BLOCK_SIZE
    }
    if (off < chunk.length) {
      this.carry ??= Buffer.allocUnsafeSlow(CID_BLOCK_SIZE)
      this.carry.set(chunk.subarray(off), 0)
      this.carryLen = chunk.length - off
    }
    // Copied bytes are free at once, but waiting for every full block keeps the queue short
    // (bounded memory) even for callers that feed small chunks.
    if (this.hashedBytes >= this.enqueuedBytes) return Promise.resolve()
    return new Promise((resolve) => this.waiters.push({ end: this.enqueuedBytes, release: resolve }))
  }

  private flushCarry(): void {
    // The importer may still hold the previous carry; hand this one over and start a new one.
    this.enqueue(this.carry!.subarray(0, this.carryLen))
    this.carry = undefined
    this.carryLen = 0
  }

  /** Ends the content and returns its CID, sha256 and size. */
  async digest(): Promise<ContentDigest> {
    if (this.carryLen > 0) this.flushCarry()
    this.ended = true
    this.wakeImporter?.()
    const root = await this.root
    this.rootDagSize = root.dagSize
    return { cid: root.cid.toString(), sha256: this.whole.digest('hex'), size: this.size }
  }

  /** The cumulative size of the content's DAG (blocks and links, as a directory's link records it); known once digest() has resolved. */
  get dagSize(): number {
    if (this.rootDagSize === undefined) throw new Error('ContentHasher.dagSize before digest')
    return this.rootDagSize
  }

  /** Hex sha256 of each 1 MiB leaf of the CID, in order; complete once digest() has resolved. */
  get leafDigests(): readonly string[] {
    return this.leaves
  }
}

/** CID, sha256 and size of bytes in memory or of a stream. */
export async function digestContent(content: Uint8Array | AsyncIterable<Uint8Array> | Iterable<Uint8Array>): Promise<ContentDigest> {
  const h = new ContentHasher()
  if (content instanceof Uint8Array) await h.update(content)
  else for await (const chunk of content) await h.update(chunk)
  return h.digest()
}

/**
 * Throws O3IntegrityError unless `actual` matches every field `expected` gives. `what` names
 * the content in the message (e.g. `o3://bucket/run/step-10.safetensors`).
 */
export function verifyDigest(what: string, actual: ContentDigest, expected: Partial<ContentDigest>): void {
  const bad: string[] = []
  if (expected.size !== undefined && actual.size !== expected.size) bad.push(`size ${actual.size}, expected ${expected.size}`)
  if (expected.sha256 !== undefined && actual.sha256 !== expected.sha256.toLowerCase()) bad.push(`sha256 ${actual.sha256}, expected ${expected.sha256}`)
  if (expected.cid !== undefined && actual.cid !== normalizeCid(expected.cid)) bad.push(`CID ${actual.cid}, expected ${expected.cid}`)
  if (bad.length > 0) throw new O3IntegrityError(`${what}: content does not match its record (${bad.join('; ')}); do not use it`)
}

export function isCid(text: string): boolean {
  try {
    CID.parse(text.trim())
    return true
  } catch {
    return false
  }
}

/** A CID string in its canonical CIDv1 base32 form; O3IntegrityError if it does not parse. */
export function normalizeCid(text: string): string {
  try {
    return CID.parse(text.trim()).toV1().toString()
  } catch {
    throw new O3IntegrityError(`${JSON.stringify(text)} is not a CID`)
  }
}
