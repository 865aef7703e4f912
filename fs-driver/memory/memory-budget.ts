/**
 * One byte budget for everything the data path holds: cached blocks and blocks being fetched.
 * Fetches reserve their bytes before the request goes out; when the sum would pass the limit, the
 * least recently used cached blocks are evicted first. Readahead asks politely (`tryReserve`) and
 * is skipped when the budget is spent; a read that a caller is waiting on always proceeds
 * (`forceReserve`, when its request starts), so the overshoot is bounded by the connections, not
 * by the number of files.
 */
export interface Reclaimable {
  /** Bytes held now. */
  readonly heldBytes: number
  /** Frees the least recently used entry; false when nothing is left to free. */
  evictOne(): boolean
}

export class MemoryBudget {
  private inflight = 0
  private peak = 0

  constructor(
    readonly limit: number,
    private readonly cache: Reclaimable,
  ) {}

  get inflightBytes(): number {
    return this.inflight
  }

  get usedBytes(): number {
    return this.inflight + this.cache.heldBytes
  }

  /** The most the data path has held at once: cached and in-flight bytes peak when a fetch reserves. */
  get peakBytes(): number {
    return this.peak
  }

  private makeRoom(n: number): boolean {
    while (this.usedBytes + n > this.limit) if (!this.cache.evictOne()) return false
    return true
  }

  /** Reserves `n` bytes if they fit after evicting cached blocks; readahead uses this. */
  tryReserve(n: number, maxInflightShare = 0.75): boolean {
    // Readahead may not take the whole budget for bytes in flight, or demand reads would evict
    // each other's blocks while prefetches hold the rest.
    if (this.inflight + n > this.limit * maxInflightShare) return false
    if (!this.makeRoom(n)) return false
    this.inflight += n
    this.peak = Math.max(this.peak, this.usedBytes)
    return true
  }

  /** Reserves `n` bytes regardless; a read someone waits on. */
  forceReserve(n: number): void {
    this.makeRoom(n)
    this.inflight += n
    this.peak = Math.max(this.peak, this.usedBytes)
  }

  release(n: number): void {
    this.inflight -= n
  }
}
