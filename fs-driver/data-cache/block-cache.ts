import { LRUCache } from 'lru-cache'
import type { O3Client, ObjectPin } from '../../lib/o3/client.js'
import type { Logger } from '../../lib/log.js'
import { BlockPool } from '../memory/block-pool.js'
import type { DiskCache } from './disk-cache.js'
import { FetchQueue, type FetchJob } from '../prefetch/fetch-queue.js'
import { GcNudge } from '../memory/gc-nudge.js'
import { MemoryBudget } from '../memory/memory-budget.js'
import type { MountCounters } from '../stats.js'
import { checkLeaves, LeafMismatchError } from '../verify/leaf-check.js'
import { CID_BLOCK_SIZE } from '../../lib/content/cid.js'

/** An object as pinned by an open file: every block read for it must come from this version. */
export interface ObjectRef extends ObjectPin {
  key: string
  size: number
  /** Hex sha256 of each 1 MiB leaf from the tree's manifest: every block is checked against them before it is served or cached. */
  leaves?: readonly string[]
}

interface Block {
  /** From the pool; back to it once the cache and any disk write have let go. */
  data: Buffer
  refs: number
  prefetched: boolean
  used: boolean
}

interface Pending {
  promise: Promise<void>
  resolve(): void
  reject(e: unknown): void
  job?: FetchJob
  wanted: boolean
}

export interface BlockCacheOptions {
  client: O3Client
  blockSize: number
  /** Bytes for cached blocks and blocks in flight together. */
  memoryBytes: number
  /** Largest ranged GET; longer runs are split into parallel requests of this size. */
  partSize: number
  maxConnections: number
  disk?: DiskCache
  counters: MountCounters
  log: Logger
}

const noop = () => {}
const GC_EVERY_BYTES = 8 << 20

/**
 * Blocks of objects, keyed by (key, ETag, block index) and, in memory and in flight, by what they
 * were checked against (none, or the leaf digests they hold): memory first (an LRU bounded in bytes),
 * then the disk tier, then the server. Each block is fetched at most once at a time however many
 * readers want it; runs of missing blocks go out as ranged GETs of up to `partSize`, and each block
 * is handed over as soon as its own bytes have arrived.
 *
 * Readers wait with `load` and then copy synchronously from `peek`: a block's buffer is reused
 * once evicted, so nobody may hold on to it across an await.
 */
export class BlockCache {
  readonly blockSize: number
  readonly budget: MemoryBudget
  private readonly pool: BlockPool
  private readonly mem: LRUCache<string, Block>
  private readonly inflight = new Map<string, Pending>()
  private readonly queue: FetchQueue
  private readonly gc = new GcNudge(GC_EVERY_BYTES)
  private readonly o: BlockCacheOptions

  constructor(o: BlockCacheOptions) {
    this.o = o
    this.blockSize = o.blockSize
    this.queue = new FetchQueue(o.maxConnections)
    // Blocks being filled count against the budget as reservations, so the budget's worth of
    // buffers is enough; the few reads forced past it borrow from the heap.
    this.pool = new BlockPool(o.blockSize, Math.ceil(o.memoryBytes / o.blockSize))
    this.mem = new LRUCache<string, Block>({
      maxSize: o.memoryBytes,
      sizeCalculation: (b) => b.data.length,
      dispose: (b, _id, reason) => {
        if (reason === 'evict' && b.prefetched && !b.used) o.counters.prefetchWasted++
        this.unref(b)
      },
    })
    const mem = this.mem
    this.budget = new MemoryBudget(o.memoryBytes, {
      get heldBytes() {
        return mem.calculatedSize
      },
      evictOne: () => mem.pop() !== undefined,
    })
  }

  get cachedBytes(): number {
    return this.mem.calculatedSize
  }

  get overflowBuffers(): number {
    return this.pool.overflow
  }

  private unref(b: Block): void {
    if (--b.refs === 0) this.pool.release(b.data)
  }

  /**
   * A block in memory or in flight. Verification is part of what a cached block is: one fetched for
   * an open without manifest coverage (or with other leaves) is never served to an open whose leaves
   * it was not checked against.
   */
  private idOf(obj: ObjectRef, index: number): string {
    const leaves = this.blockSize / CID_BLOCK_SIZE
    const checked = obj.leaves ? obj.leaves.slice(index * leaves, (index + 1) * leaves).join(',') : 'unverified'
    return `${this.diskIdOf(obj, index)}\0${checked}`
  }

  /** A block in the disk tier, which checks its blocks against the reader's leaves when it returns them. */
  private diskIdOf(obj: ObjectRef, index: number): string {
    return `${obj.key}\0${obj.etag}\0${this.blockSize}\0${index}`
  }

  blockCount(obj: ObjectRef): number {
    return Math.ceil(obj.size / this.blockSize)
  }

  private blockLength(obj: ObjectRef, index: number): number {
    return Math.min(this.blockSize, obj.size - index * this.blockSize)
  }

  /** The block if it is in memory, to be copied from before the next await. */
  peek(obj: ObjectRef, index: number): Buffer | undefined {
    const b = this.mem.get(this.idOf(obj, index))
    if (!b) return undefined
    b.used = true
    return b.data
  }

  /** Counts a lookup: a hit when the block is in memory, else a miss (it will be loaded). */
  has(obj: ObjectRef, index: number): boolean {
    const hit = this.mem.has(this.idOf(obj, index))
    if (hit) this.o.counters.memHits++
    else this.o.counters.memMisses++
    return hit
  }

  /** Resolves once the block is in memory (from disk or the server); a reader is waiting on it. */
  load(obj: ObjectRef, index: number): Promise<void> {
    const id = this.idOf(obj, index)
    if (this.mem.has(id)) return Promise.resolve()
    let p = this.inflight.get(id)
    if (p) {
      if (p.job) this.queue.promote(p.job)
    } else {
      this.start(obj, index, index + 1, true)
      p = this.inflight.get(id)!
    }
    p.wanted = true
    return p.promise
  }

  /**
   * Starts fetching blocks [first, last) that are neither cached nor in flight, as readahead:
   * behind demand reads in the queue, and only as far as the memory budget allows.
   * Returns the index up to which blocks are now cached or on their way.
   */
  prefetch(obj: ObjectRef, first: number, last: number): number {
    last = Math.min(last, this.blockCount(obj))
    const absent = (i: number) => !this.mem.has(this.idOf(obj, i)) && !this.inflight.has(this.idOf(obj, i))
    const maxRun = this.o.partSize / this.blockSize
    let i = first
    while (i < last) {
      if (!absent(i)) {
        i++
        continue
      }
      let j = i + 1
      while (j < last && j - i < maxRun && absent(j)) j++
      if (!this.start(obj, i, j, false)) return i
      i = j
    }
    return last
  }

  /** Registers blocks [first, last) as in flight and queues their fetch; false if the budget said no. */
  private start(obj: ObjectRef, first: number, last: number, demand: boolean): boolean {
    const bytes = Math.min(last * this.blockSize, obj.size) - first * this.blockSize
    // Readahead takes its memory when queued, or is not queued at all; a demand read takes it
    // when it starts, so that a hundred readers queued at once do not push the budget a hundred
    // blocks over.
    if (!demand && !this.budget.tryReserve(bytes)) return false
    const pendings: Pending[] = []
    for (let i = first; i < last; i++) {
      let resolve!: () => void
      let reject!: (e: unknown) => void
      const promise = new Promise<void>((res, rej) => {
        resolve = res
        reject = rej
      })
      // Nobody may be waiting on a prefetched block that fails; its error is not unhandled.
      promise.catch(noop)
      const p: Pending = { promise, resolve, reject, wanted: false }
      pendings.push(p)
      this.inflight.set(this.idOf(obj, i), p)
    }
    const job: FetchJob = { high: demand, run: () => this.run(obj, first, last, pendings) }
    if (demand) job.beforeRun = () => this.budget.forceReserve(bytes)
    for (const p of pendings) p.job = job
    this.queue.push(job)
    return true
  }

  private async run(obj: ObjectRef, first: number, last: number, pendings: Pending[]): Promise<void> {
    const disk = this.o.disk
    const onDisk = (i: number) => disk?.has(this.diskIdOf(obj, i)) ?? false
    let i = first
    try {
      while (i < last) {
        if (onDisk(i)) {
          const data = this.pool.acquire(this.blockLength(obj, i))
          if ((await disk!.read(this.diskIdOf(obj, i), data)) && (await this.verifiedFromDisk(obj, i, data))) {
            this.complete(obj, i, data, pendings[i - first]!, false)
            i++
            continue
          }
          this.pool.release(data)
        }
        // The blocks the disk tier lacks (or just rejected) go out as one ranged GET.
        let j = i + 1
        while (j < last && !onDisk(j)) j++
        await this.fetchRun(obj, i, j, pendings.slice(i - first, j - first))
        i = j
      }
    } catch (err) {
      for (let k = i; k < last; k++) if (this.inflight.get(this.idOf(obj, k)) === pendings[k - first]) this.fail(obj, k, pendings[k - first]!, err)
    }
  }

  /** A disk block that fails its leaf check is dropped from the disk tier and fetched again from the server. */
  private async verifiedFromDisk(obj: ObjectRef, index: number, data: Buffer): Promise<boolean> {
    if (!obj.leaves) return true
    const bad = await checkLeaves(obj.leaves, this.blockSize, index, data)
    if (!bad) {
      this.o.counters.blocksVerified++
      return true
    }
    this.o.counters.verifyFailures++
    this.o.log.error(
      { key: obj.key, block: index, leaf: bad.leaf, expected: bad.expected, actual: bad.actual, from: 'disk' },
      'disk cache block does not match the manifest; dropping it and fetching it again',
    )
    this.o.disk!.drop(this.diskIdOf(obj, index))
    return false
  }

  /** Completes a block from the server once its leaves match the manifest; a block that does not is failed, never cached. */
  private deliver(obj: ObjectRef, index: number, data: Buffer, p: Pending): void {
    if (!obj.leaves) return this.complete(obj, index, data, p, true)
    checkLeaves(obj.leaves, this.blockSize, index, data).then(
      (bad) => {
        if (!bad) {
          this.o.counters.blocksVerified++
          return this.complete(obj, index, data, p, true)
        }
        this.o.counters.verifyFailures++
        this.o.log.error(
          { key: obj.key, block: index, leaf: bad.leaf, expected: bad.expected, actual: bad.actual, from: 'o3' },
          'block does not match the manifest; failing its reads with EIO, not caching it',
        )
        this.pool.release(data)
        this.fail(
          obj,
          index,
          p,
          new LeafMismatchError(`${obj.key} block ${index}: leaf ${bad.leaf} has sha256 ${bad.actual}, the manifest says ${bad.expected}`),
        )
      },
      (err) => {
        this.pool.release(data)
        this.fail(obj, index, p, err)
      },
    )
  }

  private complete(obj: ObjectRef, index: number, data: Buffer, p: Pending, fromNetwork: boolean): void {
    const id = this.idOf(obj, index)
    this.budget.release(data.length)
    this.inflight.delete(id)
    const block: Block = { data, refs: 1, prefetched: !p.wanted, used: p.wanted }
    if (fromNetwork) {
      this.o.counters.blocksFetched++
      if (!p.wanted) this.o.counters.blocksPrefetched++
      this.o.counters.bytesFetched += data.length
      block.refs++
      if (!this.o.disk?.write(this.diskIdOf(obj, index), data, () => this.unref(block))) block.refs--
    }
    this.mem.set(id, block)
    p.resolve()
  }

  private fail(obj: ObjectRef, index: number, p: Pending, err: unknown): void {
    this.budget.release(this.blockLength(obj, index))
    this.inflight.delete(this.idOf(obj, index))
    p.reject(err)
  }

  private async fetchRun(obj: ObjectRef, first: number, last: number, pendings: Pending[]): Promise<void> {
    const start = first * this.blockSize
    const end = Math.min(last * this.blockSize, obj.size) - 1
    let cur = first
    let buf: Buffer | undefined
    let filled = 0
    this.o.counters.getRequests++
    // The body is read straight into pooled block buffers; each block is handed over once full.
    const sink = {
      space: (): Buffer => {
        buf ??= this.pool.acquire(this.blockLength(obj, cur))
        return buf.subarray(filled)
      },
      wrote: (n: number): void => {
        this.gc.add(n)
        filled += n
        if (filled === buf!.length) {
          this.deliver(obj, cur, buf!, pendings[cur - first]!)
          cur++
          buf = undefined
          filled = 0
        }
      },
    }
    try {
      await this.o.client.readRangeInto(obj.key, start, end, obj, sink)
      if (cur < last) throw new Error(`get ${obj.key}: the body ended at block ${cur} of [${first}, ${last})`)
    } catch (err) {
      if (buf) this.pool.release(buf)
      this.o.log.warn({ key: obj.key, start, end, err: (err as Error).message }, 'block fetch failed')
      for (let i = cur; i < last; i++) this.fail(obj, i, pendings[i - first]!, err)
    }
  }
}
