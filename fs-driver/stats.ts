import { closeSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import type { O3Stats } from '../lib/o3/client.js'
import type { Logger } from '../lib/log.js'
import { openPrivateFile } from './paths.js'

/** Counters of the data and metadata paths; every module increments its own fields. */
export class MountCounters {
  memHits = 0
  memMisses = 0
  diskHits = 0
  diskMisses = 0
  diskCorrupt = 0
  diskWrites = 0
  diskWritesSkipped = 0
  /** Blocks that arrived from the server, demanded or prefetched. */
  blocksFetched = 0
  blocksPrefetched = 0
  /** Prefetched blocks evicted before any read used them. */
  prefetchWasted = 0
  bytesFetched = 0
  getRequests = 0
  metaHits = 0
  metaMisses = 0
  negativeHits = 0
  listRequests = 0
  headRequests = 0
  reads = 0
  bytesRead = 0
  readErrors = 0
  timeouts = 0
  opens = 0
  /** Blocks checked against a manifest's leaf digests, and those that did not match. */
  blocksVerified = 0
  verifyFailures = 0
  /** Opens refused by --verify required (no manifest covers the file) or for a file that contradicts its manifest. */
  verifyRefusedOpens = 0
}

/** The shape of the stats file; the trainer reads it, so fields are only ever added. */
export interface StatsSnapshot {
  time: string
  pid: number
  mountpoint: string
  location: string
  uptimeSec: number
  cache: {
    memHits: number
    memMisses: number
    diskHits: number
    diskMisses: number
    diskCorrupt: number
    diskWrites: number
    diskBytes: number
    hitRatio: number
  }
  fetch: { bytesFetched: number; blocksFetched: number; blocksPrefetched: number; prefetchWasted: number; getRequests: number }
  o3: O3Stats
  metadata: { hits: number; misses: number; negativeHits: number; listRequests: number; headRequests: number }
  reads: { count: number; bytes: number; errors: number; timeouts: number; opens: number; openFiles: number }
  verify: { mode: string; blocksVerified: number; failures: number; refusedOpens: number }
  readahead: { streams: number; maxWindowBytes: number; totalWindowBytes: number }
  memory: {
    budgetBytes: number
    cacheBytes: number
    inflightBytes: number
    overflowBuffers: number
    rssBytes: number
    heapBytes: number
    arrayBufferBytes: number
    /** The most cached plus in-flight block bytes held at once. */
    peakUsedBytes: number
  }
}

export interface StatsSources {
  counters: MountCounters
  verifyMode: string
  o3: () => O3Stats
  readahead: () => { streams: number; maxWindowBytes: number; totalWindowBytes: number }
  memory: () => { budgetBytes: number; cacheBytes: number; inflightBytes: number; overflowBuffers: number; peakUsedBytes: number }
  diskBytes: () => number
  openFiles: () => number
}

/** Writes the stats file every `fileEveryMs` (atomically) and a one-line summary to the log every `logEveryMs`. */
export class StatsReporter {
  private readonly started = Date.now()
  private fileTimer?: NodeJS.Timeout
  private logTimer?: NodeJS.Timeout
  private lastLogged = { bytesFetched: 0, bytesRead: 0, at: Date.now() }

  constructor(
    private readonly src: StatsSources,
    private readonly meta: { mountpoint: string; location: string; statsFile: string },
    private readonly log: Logger,
  ) {}

  snapshot(): StatsSnapshot {
    const c = this.src.counters
    // Demand block reads served without fetching for them: disk-tier reads by prefetch are not
    // demand reads, so the disk tier's hits would overcount.
    const demand = c.memHits + c.memMisses
    const demandFetches = c.blocksFetched - c.blocksPrefetched
    return {
      time: new Date().toISOString(),
      pid: process.pid,
      mountpoint: this.meta.mountpoint,
      location: this.meta.location,
      uptimeSec: Math.round((Date.now() - this.started) / 1000),
      cache: {
        memHits: c.memHits,
        memMisses: c.memMisses,
        diskHits: c.diskHits,
        diskMisses: c.diskMisses,
        diskCorrupt: c.diskCorrupt,
        diskWrites: c.diskWrites,
        diskBytes: this.src.diskBytes(),
        hitRatio: demand === 0 ? 0 : Math.max(0, 1 - demandFetches / demand),
      },
      fetch: {
        bytesFetched: c.bytesFetched,
        blocksFetched: c.blocksFetched,
        blocksPrefetched: c.blocksPrefetched,
        prefetchWasted: c.prefetchWasted,
        getRequests: c.getRequests,
      },
      o3: { ...this.src.o3() },
      metadata: { hits: c.metaHits, misses: c.metaMisses, negativeHits: c.negativeHits, listRequests: c.listRequests, headRequests: c.headRequests },
      reads: { count: c.reads, bytes: c.bytesRead, errors: c.readErrors, timeouts: c.timeouts, opens: c.opens, openFiles: this.src.openFiles() },
      verify: { mode: this.src.verifyMode, blocksVerified: c.blocksVerified, failures: c.verifyFailures, refusedOpens: c.verifyRefusedOpens },
      readahead: this.src.readahead(),
      memory: (() => {
        const u = process.memoryUsage()
        return { ...this.src.memory(), rssBytes: u.rss, heapBytes: u.heapUsed, arrayBufferBytes: u.arrayBuffers }
      })(),
    }
  }

  writeFile(): void {
    const tmp = `${this.meta.statsFile}.${process.pid}.tmp`
    try {
      // Written fresh and renamed over the old one: a symlink planted at either name is replaced, never written through.
      rmSync(tmp, { force: true })
      const fd = openPrivateFile(tmp, 'exclusive')
      try {
        writeFileSync(fd, JSON.stringify(this.snapshot(), null, 1) + '\n')
      } finally {
        closeSync(fd)
      }
      renameSync(tmp, this.meta.statsFile)
    } catch (err) {
      this.log.warn({ err: (err as Error).message, statsFile: this.meta.statsFile }, 'cannot write the stats file')
    }
  }

  private logLine(): void {
    const s = this.snapshot()
    const secs = (Date.now() - this.lastLogged.at) / 1000
    const rate = (now: number, before: number) => Math.round((now - before) / 1e6 / secs)
    this.log.info(
      {
        readMBps: rate(s.reads.bytes, this.lastLogged.bytesRead),
        fetchMBps: rate(s.fetch.bytesFetched, this.lastLogged.bytesFetched),
        hitRatio: Number(s.cache.hitRatio.toFixed(3)),
        requests: s.o3.requests,
        retries: s.o3.retries,
        errors: s.o3.errors,
        readErrors: s.reads.errors,
        openFiles: s.reads.openFiles,
        readaheadMaxMiB: s.readahead.maxWindowBytes / 2 ** 20,
        cacheMiB: Math.round(s.memory.cacheBytes / 2 ** 20),
        rssMiB: Math.round(s.memory.rssBytes / 2 ** 20),
      },
      'stats',
    )
    this.lastLogged = { bytesFetched: s.fetch.bytesFetched, bytesRead: s.reads.bytes, at: Date.now() }
  }

  start(fileEveryMs: number, logEveryMs: number): void {
    this.writeFile()
    this.fileTimer = setInterval(() => this.writeFile(), fileEveryMs).unref()
    this.logTimer = setInterval(() => this.logLine(), logEveryMs).unref()
  }

  stop(): void {
    clearInterval(this.fileTimer)
    clearInterval(this.logTimer)
    this.writeFile()
  }
}
