import { closeSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import type { O3Stats } from '../lib/o3/client.js'
import type { Logger } from '../lib/log.js'
import type { NativeStats } from './native-mount.js'
import type { ControlSocketCounters } from './control-socket.js'
import { openPrivateFile } from './paths.js'

const EMPTY_NATIVE: NativeStats = {
  counters: {
    memHits: 0,
    memMisses: 0,
    diskHits: 0,
    diskMisses: 0,
    diskCorrupt: 0,
    diskWrites: 0,
    diskWritesSkipped: 0,
    blocksFetched: 0,
    blocksPrefetched: 0,
    prefetchWasted: 0,
    bytesFetched: 0,
    getRequests: 0,
    reads: 0,
    bytesRead: 0,
    readErrors: 0,
    timeouts: 0,
    opens: 0,
    blocksVerified: 0,
    verifyFailures: 0,
    filesAnnounced: 0,
    filesPrefetched: 0,
    filesSkipped: 0,
    filesPrefetchUsed: 0,
    announcedBlocksUsed: 0,
  },
  fetch: {
    requests: 0,
    retries: 0,
    errors: 0,
    bytesReceived: 0,
    connectionsOpened: 0,
    queued: 0,
    inFlight: 0,
    firstByteUsAverage: 0,
    bytesPerSecondPerConnection: 0,
    clockOffsetMs: 0,
  },
  cache: { budgetBytes: 0, cacheBytes: 0, inflightBytes: 0, peakUsedBytes: 0, overflowBuffers: 0, queuedJobs: 0, runningJobs: 0, announcedFiles: 0 },
  readahead: { streams: 0, maxWindowBytes: 0, totalWindowBytes: 0 },
  openFiles: 0,
  diskBytes: 0,
  inodes: 0,
}

/**
 * Counters of the control plane (metadata lookups and opens); the byte path keeps its own
 * (cpp/mount/counters.h) and the stats file joins both.
 */
export class MountCounters {
  metaHits = 0
  metaMisses = 0
  negativeHits = 0
  listRequests = 0
  headRequests = 0
  /** Lookups, listings and opens that got no answer within --op-timeout. */
  timeouts = 0
  /** Opens refused by --verify required (no manifest covers the file) or for a file that contradicts its manifest. */
  verifyRefusedOpens = 0
  /** Files queued ahead because opens followed their directory's listing (ListingOrder). */
  listingQueued = 0
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
  /** The native byte path's own figures (added with it; the fields above keep their meaning). */
  native: {
    connectionsOpened: number
    requestsQueued: number
    requestsInFlight: number
    /** Moving averages of the engine's requests: time to first byte, and one connection's rate. */
    firstByteUsAverage: number
    bytesPerSecondPerConnection: number
    /** What signatures add to this machine's clock: the server's clock minus ours, where they differ by 5 minutes or more. */
    clockOffsetMs: number
    diskWritesSkipped: number
    inodes: number
  }
  /** Read orders announced on the control socket (--control-socket), and what the byte path made of them. */
  announced: {
    /** Requests answered, and those of them refused (nothing of a refused request is queued). */
    requests: number
    refused: number
    /** Files queued, and of them: still waiting their turn, fetched ahead, passed over (a reader got there first, or all was cached). */
    files: number
    /** Of the files queued, those queued by the mount itself because opens followed a directory's listing. */
    listingFiles: number
    waiting: number
    prefetched: number
    skipped: number
    /** Files fetched ahead that a reader then read, and the blocks it took of them. */
    used: number
    blocksUsed: number
  }
}

export interface StatsSources {
  counters: MountCounters
  verifyMode: string
  /** The control plane's own requests (HEAD, LIST, manifests). */
  o3: () => O3Stats
  /** The byte path's snapshot; undefined before it has started. */
  native: () => NativeStats | undefined
  /** The control socket's tallies; undefined without --control-socket. */
  control: () => ControlSocketCounters | undefined
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
    const n = this.src.native() ?? EMPTY_NATIVE
    const d = n.counters
    const o3 = this.src.o3()
    const control = this.src.control()
    // Demand block reads served without fetching for them: disk-tier reads by prefetch are not
    // demand reads, so the disk tier's hits would overcount.
    const demand = d.memHits + d.memMisses
    const demandFetches = d.blocksFetched - d.blocksPrefetched
    const u = process.memoryUsage()
    return {
      time: new Date().toISOString(),
      pid: process.pid,
      mountpoint: this.meta.mountpoint,
      location: this.meta.location,
      uptimeSec: Math.round((Date.now() - this.started) / 1000),
      cache: {
        memHits: d.memHits,
        memMisses: d.memMisses,
        diskHits: d.diskHits,
        diskMisses: d.diskMisses,
        diskCorrupt: d.diskCorrupt,
        diskWrites: d.diskWrites,
        diskBytes: n.diskBytes,
        hitRatio: demand === 0 ? 0 : Math.max(0, 1 - demandFetches / demand),
      },
      fetch: {
        bytesFetched: d.bytesFetched,
        blocksFetched: d.blocksFetched,
        blocksPrefetched: d.blocksPrefetched,
        prefetchWasted: d.prefetchWasted,
        getRequests: d.getRequests,
      },
      // The SDK client's calls and the native engine's GETs together: every request to O3.
      o3: {
        requests: o3.requests + n.fetch.requests,
        retries: o3.retries + n.fetch.retries,
        errors: o3.errors + n.fetch.errors,
        bytesReceived: o3.bytesReceived + n.fetch.bytesReceived,
        bytesSent: o3.bytesSent,
      },
      metadata: { hits: c.metaHits, misses: c.metaMisses, negativeHits: c.negativeHits, listRequests: c.listRequests, headRequests: c.headRequests },
      reads: { count: d.reads, bytes: d.bytesRead, errors: d.readErrors, timeouts: d.timeouts + c.timeouts, opens: d.opens, openFiles: n.openFiles },
      verify: { mode: this.src.verifyMode, blocksVerified: d.blocksVerified, failures: d.verifyFailures, refusedOpens: c.verifyRefusedOpens },
      readahead: { ...n.readahead },
      memory: {
        budgetBytes: n.cache.budgetBytes,
        cacheBytes: n.cache.cacheBytes,
        inflightBytes: n.cache.inflightBytes,
        overflowBuffers: n.cache.overflowBuffers,
        peakUsedBytes: n.cache.peakUsedBytes,
        rssBytes: u.rss,
        heapBytes: u.heapUsed,
        arrayBufferBytes: u.arrayBuffers,
      },
      native: {
        connectionsOpened: n.fetch.connectionsOpened,
        requestsQueued: n.fetch.queued,
        requestsInFlight: n.fetch.inFlight,
        firstByteUsAverage: n.fetch.firstByteUsAverage,
        bytesPerSecondPerConnection: n.fetch.bytesPerSecondPerConnection,
        clockOffsetMs: n.fetch.clockOffsetMs,
        diskWritesSkipped: d.diskWritesSkipped,
        inodes: n.inodes,
      },
      announced: {
        requests: control?.requests ?? 0,
        refused: control?.refused ?? 0,
        files: d.filesAnnounced,
        listingFiles: c.listingQueued,
        waiting: n.cache.announcedFiles,
        prefetched: d.filesPrefetched,
        skipped: d.filesSkipped,
        used: d.filesPrefetchUsed,
        blocksUsed: d.announcedBlocksUsed,
      },
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
