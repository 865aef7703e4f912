/**
 * Block-sized buffers reused for the life of the mount. Left to the garbage collector and
 * malloc, evicted 1 MiB blocks linger as garbage or as fragmented heap and the process grows
 * far past its budget; a pool keeps what the data path holds equal to what it uses. Short
 * blocks (an object's tail, small files) get buffers of their own size instead, so that a cache
 * of small files is not charged a whole block each.
 */
export class BlockPool {
  private readonly free: Buffer[] = []
  /** Full-size buffers alive, free or in use. */
  private total = 0
  /** Full-size buffers ever allocated past `capacity` (they are dropped again on release). */
  overflow = 0

  constructor(
    readonly blockSize: number,
    readonly capacity: number,
  ) {}

  /** A buffer of exactly `length` bytes, to be given back with `release` once nothing reads it. */
  acquire(length: number): Buffer {
    if (length !== this.blockSize) return Buffer.allocUnsafeSlow(length)
    const b = this.free.pop()
    if (b) return b
    if (++this.total > this.capacity) this.overflow++
    return Buffer.allocUnsafeSlow(this.blockSize)
  }

  release(b: Buffer): void {
    if (b.length !== this.blockSize) return
    if (this.total > this.capacity) this.total--
    else this.free.push(b)
  }
}
