/**
 * Sequential readahead of one open file, after mountpoint-s3's prefetcher: the first request is
 * small, so the first byte comes quickly; while reads stay sequential the window doubles, up to a
 * cap, each time the reader has consumed half of what is on its way; a seek outside a small
 * tolerance resets it, so random access fetches only the blocks it reads.
 */
export interface ReadaheadConfig {
  blockSize: number
  /** Window after the first sequential read. */
  initialWindow: number
  /** How far ahead of the furthest read a read may land and still count as sequential. */
  seekTolerance: number
  /** The window's cap right now (it shrinks as more files stream at once, to share the budget). */
  maxWindow: () => number
}

export interface PrefetchRange {
  /** First block to prefetch. */
  from: number
  /** One past the last block. */
  to: number
}

export class Readahead {
  /** One past the furthest byte read so far in the current sequential run. */
  private expected = -1
  private window = 0
  /** Byte offset up to which blocks have been requested. */
  private aheadTo = 0

  constructor(private readonly cfg: ReadaheadConfig) {}

  get windowBytes(): number {
    return this.window
  }

  private isSequential(offset: number): boolean {
    if (this.expected < 0) return offset === 0
    // The kernel's readahead requests are served by several threads and arrive out of order by
    // megabytes: anything within its span either side of the furthest read is not a seek.
    const span = Math.max(this.window, this.cfg.seekTolerance)
    return offset >= this.expected - span && offset <= this.expected + span
  }

  /** Records a read of [offset, offset+length) in a file of `size` bytes; returns what to prefetch, if anything. */
  onRead(offset: number, length: number, size: number): PrefetchRange | undefined {
    const bs = this.cfg.blockSize
    const end = offset + length
    if (!this.isSequential(offset)) {
      this.window = 0
      this.expected = end
      this.aheadTo = Math.min(size, Math.ceil(end / bs) * bs)
      return undefined
    }
    // A late request from behind the front changes nothing.
    if (end <= this.expected) return undefined
    // aheadTo is not moved by the read itself: out-of-order kernel readahead leaves gaps behind
    // it that the next prefetch must fill, as one request rather than block by block.
    this.expected = end
    if (this.aheadTo >= size) return undefined
    if (this.window > 0 && this.aheadTo - this.expected >= this.window / 2) return undefined
    const cap = Math.max(2 * bs, this.cfg.maxWindow())
    this.window = this.window === 0 ? Math.min(this.cfg.initialWindow, cap) : Math.min(this.window * 2, cap)
    const target = Math.min(size, this.expected + this.window)
    if (target <= this.aheadTo) return undefined
    return { from: Math.floor(this.aheadTo / bs), to: Math.ceil(target / bs) }
  }

  /** Records how far the prefetch actually got (the memory budget may have cut it short). */
  issuedTo(block: number, size: number): void {
    this.aheadTo = Math.max(this.aheadTo, Math.min(size, block * this.cfg.blockSize))
  }
}
