/** A unit of network work; `high` jobs (a reader is waiting) run before readahead. */
export interface FetchJob {
  high: boolean
  /** Called just before the job runs, e.g. to take its memory from the budget. */
  beforeRun?(): void
  run(): Promise<void>
  started?: boolean
}

/** At most `limit` fetches at once, demand before readahead, so a cold read never queues behind a window of prefetches. */
export class FetchQueue {
  private readonly high: FetchJob[] = []
  private readonly low: FetchJob[] = []
  private running = 0

  constructor(private readonly limit: number) {}

  get active(): number {
    return this.running
  }

  push(job: FetchJob): void {
    ;(job.high ? this.high : this.low).push(job)
    this.pump()
  }

  /** A reader now waits on a queued readahead job: move it to the front class. */
  promote(job: FetchJob): void {
    if (job.started || job.high) return
    const i = this.low.indexOf(job)
    if (i >= 0) this.low.splice(i, 1)
    job.high = true
    this.high.push(job)
    this.pump()
  }

  private pump(): void {
    while (this.running < this.limit) {
      const job = this.high.shift() ?? this.low.shift()
      if (!job) return
      job.started = true
      job.beforeRun?.()
      this.running++
      job.run().finally(() => {
        this.running--
        this.pump()
      })
    }
  }
}
