import { LRUCache } from 'lru-cache'
import type { O3Client } from '../lib/o3/client.js'
import { O3NotFoundError } from '../lib/o3/errors.js'
import { normalizeEtag } from '../lib/o3/etag.js'
import { checkRelativeKey } from '../lib/o3/scope.js'
import type { Logger } from '../lib/log.js'
import type { MountCounters } from './stats.js'

export type Entry =
  | { kind: 'dir' }
  | { kind: 'file'; key: string; size: number; etag: string; versionId?: string; mtime: Date }

interface Listing {
  entries: Map<string, Entry>
  expires: number
}

interface Probe {
  entry: Entry | null
  expires: number
}

/** Longest a name may be on Linux, in bytes. */
const NAME_MAX = 255
/** Negative entries expire sooner than positive ones, so a freshly uploaded file shows up. */
const MAX_NEGATIVE_TTL_S = 60

/** `/a/b` -> `a/b`; `/` -> ``. */
export function keyOf(path: string): string {
  return path.replace(/^\/+/, '')
}

/** The request for `path` already on its way, else a new one from `start`: callers asking at once share one request. */
function joinFlight<V>(flights: Map<string, Promise<V>>, path: string, start: () => Promise<V>): Promise<V> {
  let flight = flights.get(path)
  if (!flight) {
    flight = start().finally(() => flights.delete(path))
    flights.set(path, flight)
  }
  return flight
}

/**
 * What the bucket looks like as a tree, cached with a TTL: complete directory listings (from
 * list-with-delimiter) answer both readdir and the stat of each child, and single lookups (HEAD plus
 * a one-page list, for a path whose parent was never listed) are cached on their own, negative
 * answers included.
 */
export class MetadataCache {
  private readonly listings: LRUCache<string, Listing>
  private readonly probes: LRUCache<string, Probe>
  private readonly listingFlights = new Map<string, Promise<Map<string, Entry>>>()
  private readonly probeFlights = new Map<string, Promise<Entry | null>>()
  private readonly warned = new Set<string>()
  private readonly ttlMs: number
  private readonly negativeTtlMs: number

  constructor(
    private readonly client: O3Client,
    ttlSeconds: number,
    private readonly counters: MountCounters,
    private readonly log: Logger,
  ) {
    this.ttlMs = ttlSeconds * 1000
    this.negativeTtlMs = Math.min(ttlSeconds, MAX_NEGATIVE_TTL_S) * 1000
    // Bounded by entries, not by time: a cache that outgrows memory is worse than a relisting.
    this.listings = new LRUCache<string, Listing>({ maxSize: 2_000_000, sizeCalculation: (l) => l.entries.size + 1 })
    this.probes = new LRUCache<string, Probe>({ max: 200_000 })
  }

  private expiry(ms: number): number {
    return Number.isFinite(ms) ? Date.now() + ms : Infinity
  }

  /** The entry at `path`, or undefined if there is none. */
  async lookup(path: string): Promise<Entry | undefined> {
    if (path === '/') return { kind: 'dir' }
    const slash = path.lastIndexOf('/')
    const parent = slash <= 0 ? '/' : path.slice(0, slash)
    const name = path.slice(slash + 1)
    const listing = this.listings.get(parent)
    if (listing && listing.expires > Date.now()) {
      const e = listing.entries.get(name)
      if (e) this.counters.metaHits++
      else this.counters.negativeHits++
      return e
    }
    const probe = this.probes.get(path)
    if (probe && probe.expires > Date.now()) {
      if (probe.entry) this.counters.metaHits++
      else this.counters.negativeHits++
      return probe.entry ?? undefined
    }
    this.counters.metaMisses++
    const flight = joinFlight(this.probeFlights, path, () => this.probe(path))
    // A loader opens files by name without listing first: list the parent once, alongside the
    // probe, and take whichever answers first, so that its siblings' lookups cost nothing.
    const fromListing = this.readdir(parent).then((entries) => entries.get(name) ?? null)
    fromListing.catch(() => {})
    try {
      return (await Promise.any([flight, fromListing])) ?? undefined
    } catch (err) {
      // Both failed: report the probe's own error (an O3AuthError, say), not Promise.any's wrapper.
      throw err instanceof AggregateError ? err.errors[0] : err
    }
  }

  private async probe(path: string): Promise<Entry | null> {
    const key = keyOf(path)
    if (!this.validName(path.slice(path.lastIndexOf('/') + 1)) || !this.validKey(key)) return this.remember(path, null)
    // A prefix wins over an object of the same name, as in listings.
    const [isDir, head] = await Promise.all([this.hasChildren(`${key}/`), this.headOrNull(key)])
    if (isDir) return this.remember(path, { kind: 'dir' })
    if (head) return this.remember(path, head)
    return this.remember(path, null)
  }

  private remember(path: string, entry: Entry | null): Entry | null {
    this.probes.set(path, { entry, expires: this.expiry(entry ? this.ttlMs : this.negativeTtlMs) })
    return entry
  }

  private async hasChildren(prefix: string): Promise<boolean> {
    this.counters.listRequests++
    // Any entry will do, a directory marker object (`a/b/` itself) included: empty "folders" made
    // by consoles are directories too.
    for await (const _ of this.client.list(prefix, { delimiter: '/' })) return true
    return false
  }

  private async headOrNull(key: string): Promise<Entry | null> {
    this.counters.headRequests++
    try {
      const h = await this.client.head(key)
      return { kind: 'file', key, size: h.size, etag: normalizeEtag(h.etag), versionId: h.versionId, mtime: h.lastModified }
    } catch (err) {
      if (err instanceof O3NotFoundError) return null
      throw err
    }
  }

  /** The children of the directory at `path`, listed once per TTL however many callers ask at once. */
  async readdir(path: string): Promise<Map<string, Entry>> {
    const cached = this.listings.get(path)
    if (cached && cached.expires > Date.now()) {
      this.counters.metaHits++
      return cached.entries
    }
    this.counters.metaMisses++
    return joinFlight(this.listingFlights, path, () => this.list(path))
  }

  private async list(path: string): Promise<Map<string, Entry>> {
    const prefix = path === '/' ? '' : `${keyOf(path)}/`
    const entries = new Map<string, Entry>()
    const shadowed: string[] = []
    this.counters.listRequests++
    for await (const e of this.client.list(prefix, { delimiter: '/' })) {
      if (e.type === 'prefix') {
        const name = e.prefix.slice(prefix.length, -1)
        if (!this.validName(name, e.prefix)) continue
        if (entries.get(name)?.kind === 'file') shadowed.push(name)
        entries.set(name, { kind: 'dir' })
      } else {
        if (e.key === prefix) continue // the directory's own marker object
        const name = e.key.slice(prefix.length)
        if (!this.validName(name, e.key) || !this.validKey(e.key)) continue
        if (entries.get(name)?.kind === 'dir') {
          shadowed.push(name)
          continue
        }
        entries.set(name, { kind: 'file', key: e.key, size: e.size, etag: normalizeEtag(e.etag), mtime: e.lastModified })
      }
    }
    for (const name of shadowed) this.warnOnce(`${prefix}${name}`, `object ${prefix}${name} is hidden by the directory of the same name`)
    this.listings.set(path, { entries, expires: this.expiry(this.ttlMs) })
    return entries
  }

  private validName(name: string, key = name): boolean {
    let why: string | undefined
    if (name === '') why = 'an empty path component (a "//" in the key)'
    else if (name === '.' || name === '..') why = `a "${name}" component`
    else if (name.includes('\0')) why = 'a NUL byte'
    else if (Buffer.byteLength(name) > NAME_MAX) why = `a component longer than ${NAME_MAX} bytes`
    if (why) this.warnOnce(key, `skipping key ${JSON.stringify(key)}: it has ${why}, which cannot be a file name`)
    return !why
  }

  private validKey(key: string): boolean {
    try {
      checkRelativeKey(key)
      return true
    } catch (err) {
      this.warnOnce(key, `skipping key ${JSON.stringify(key)}: ${(err as Error).message}`)
      return false
    }
  }

  private warnOnce(key: string, msg: string): void {
    if (this.warned.has(key)) return
    this.warned.add(key)
    this.log.warn({ key }, msg)
  }

  /** Forgets what is known about `path` and its parent's listing, e.g. after its object changed. */
  invalidate(path: string): void {
    this.probes.delete(path)
    const slash = path.lastIndexOf('/')
    this.listings.delete(slash <= 0 ? '/' : path.slice(0, slash))
  }
}
