import { LRUCache } from 'lru-cache'
import type { ListEntry, O3Client } from '../lib/o3/client.js'
import { O3NotFoundError } from '../lib/o3/errors.js'
import { normalizeEtag } from '../lib/o3/etag.js'
import { checkRelativeKey } from '../lib/o3/scope.js'
import type { Logger } from '../lib/log.js'
import type { MountCounters } from './stats.js'

export type Entry = { kind: 'dir' } | { kind: 'file'; key: string; size: number; etag: string; versionId?: string; mtime: Date }

interface Listing {
  entries: Map<string, Entry>
  expires: number
}

interface Probe {
  entry: Entry | null
  expires: number
}

/** One page of a directory's listing: every name that sorts in (after, last] is in `entries` or absent. */
interface Page {
  after: string
  /** Sort position of the page's last entry (a subdirectory as `name/`); undefined when the page reaches the end. */
  last?: string
  entries: Map<string, Entry>
  expires: number
}

/** Longest a name may be on Linux, in bytes. */
const NAME_MAX = 255
/** Negative entries expire sooner than positive ones, so a freshly uploaded file shows up. */
const MAX_NEGATIVE_TTL_S = 60
/** Pages kept per directory (of up to 1,000 names each), newest first to stay. */
const MAX_PAGES_PER_DIR = 1_000
/** Keys warned about once each; beyond this many the oldest may be warned about again. */
const MAX_WARNED = 10_000

/** S3 lists keys in the byte order of their UTF-8, not in JS string order. */
const byteOrder = (a: string, b: string): number => Buffer.compare(Buffer.from(a), Buffer.from(b))

function covers(page: Page, name: string): boolean {
  return byteOrder(page.after, name) < 0 && (page.last === undefined || byteOrder(`${name}/`, page.last) <= 0)
}

/** `/a/b` -> `a/b`; `/` -> ``. */
export function keyOf(path: string): string {
  return path.replace(/^\/+/, '')
}

/** The request for `path` already on its way, else a new one from `start`: callers asking at once share one request. */
function joinFlight<V>(flights: Map<string, Promise<V>>, path: string, start: () => Promise<V>): Promise<V> {
  let flight = flights.get(path)
  if (!flight) {
    const started: Promise<V> = start().finally(() => {
      // Not one started since (an invalidation dropped this one).
      if (flights.get(path) === started) flights.delete(path)
    })
    flights.set(path, started)
    flight = started
  }
  return flight
}

/**
 * What the bucket looks like as a tree, cached with a TTL: complete directory listings (from
 * list-with-delimiter) answer both readdir and the stat of each child. A lookup whose parent was
 * never listed reads one page of the parent's listing, starting at the name, and keeps it: the
 * page answers the lookups of the names around it too (a loader opening files in order costs one
 * request per page), and a directory of millions of keys is never listed whole for a lookup.
 * Single lookups (HEAD plus a one-key list) remain for a name its page could not settle; all of
 * it is cached, negative answers included.
 */
export class MetadataCache {
  private readonly listings: LRUCache<string, Listing>
  private readonly probes: LRUCache<string, Probe>
  private readonly pages: LRUCache<string, Page[]>
  private readonly pageFlights = new Map<string, Promise<Entry | null>>()
  private readonly listingFlights = new Map<string, Promise<Map<string, Entry>>>()
  private readonly probeFlights = new Map<string, Promise<Entry | null>>()
  private readonly warned = new LRUCache<string, true>({ max: MAX_WARNED })
  private readonly ttlMs: number
  private readonly negativeTtlMs: number
  /**
   * Moved on by every invalidate(): an answer to a request sent before it may describe the bucket
   * before the change, so it is handed to its callers but not kept.
   */
  private epoch = 0

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
    // A bound by size, not `max`: lru-cache allocates arrays for `max` entries up front (5.6 MB
    // for 200,000), held by the mount from start-up whether it ever probes or not.
    this.probes = new LRUCache<string, Probe>({ maxSize: 200_000, sizeCalculation: () => 1 })
    this.pages = new LRUCache<string, Page[]>({ maxSize: 2_000_000, sizeCalculation: (ps) => ps.reduce((n, p) => n + p.entries.size + 1, 0) })
  }

  private expiry(ms: number): number {
    return Number.isFinite(ms) ? Date.now() + ms : Infinity
  }

  /** The entry at `path`, or undefined if there is none. */
  async lookup(path: string): Promise<Entry | undefined> {
    if (path === '/') return { kind: 'dir' }
    // The kernel resolves `..` itself; a path that still could not name a key below the prefix
    // (`..`, `.`, `//`, a backslash) names nothing.
    try {
      checkRelativeKey(keyOf(path))
    } catch {
      return undefined
    }
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
    const now = Date.now()
    const page = this.pages.get(parent)?.find((p) => p.expires > now && covers(p, name))
    const probe = this.probes.get(path)
    const known = page ? (page.entries.get(name) ?? null) : probe && probe.expires > now ? probe.entry : undefined
    if (known !== undefined) {
      if (known) this.counters.metaHits++
      else this.counters.negativeHits++
      return known ?? undefined
    }
    this.counters.metaMisses++
    return (await joinFlight(this.pageFlights, path, () => this.fromPage(parent, name, path))) ?? undefined
  }

  /** Reads the page of `parent`'s listing that starts at `name` and keeps it; a probe if the page cannot settle the name. */
  private async fromPage(parent: string, name: string, path: string): Promise<Entry | null> {
    if (!this.validName(name)) return this.remember(path, null)
    const prefix = parent === '/' ? '' : `${keyOf(parent)}/`
    // Everything after the name less its last character: the name itself, and the names just
    // before it, are on the page.
    const after = [...name].slice(0, -1).join('')
    const epoch = this.epoch
    this.counters.listRequests++
    const { entries: listed, next } = await this.client.listPage(prefix, { delimiter: '/', startAfter: after })
    const entries = this.collect(prefix, listed)
    const tail = listed
      .map((e) => (e.type === 'prefix' ? e.prefix : e.key).slice(prefix.length))
      .sort(byteOrder)
      .at(-1)
    // A page may come back empty and still say more follows: then it settles nothing past `after`.
    const page: Page = { after, last: next === undefined ? undefined : (tail ?? after), entries, expires: this.expiry(this.ttlMs) }
    const now = Date.now()
    if (epoch === this.epoch) this.pages.set(parent, [...(this.pages.get(parent) ?? []).filter((p) => p.expires > now).slice(1 - MAX_PAGES_PER_DIR), page])
    if (covers(page, name)) return entries.get(name) ?? null
    return joinFlight(this.probeFlights, path, () => this.probe(path))
  }

  private async probe(path: string): Promise<Entry | null> {
    const key = keyOf(path)
    if (!this.validName(path.slice(path.lastIndexOf('/') + 1)) || !this.validKey(key)) return this.remember(path, null)
    const epoch = this.epoch
    // A prefix wins over an object of the same name, as in listings.
    const [isDir, head] = await Promise.all([this.hasChildren(`${key}/`), this.headOrNull(key)])
    const entry = isDir ? ({ kind: 'dir' } as const) : head
    return epoch === this.epoch ? this.remember(path, entry) : entry
  }

  private remember(path: string, entry: Entry | null): Entry | null {
    this.probes.set(path, { entry, expires: this.expiry(entry ? this.ttlMs : this.negativeTtlMs) })
    return entry
  }

  private async hasChildren(prefix: string): Promise<boolean> {
    this.counters.listRequests++
    // Any entry will do, a directory marker object (`a/b/` itself) included: empty "folders" made
    // by consoles are directories too.
    return (await this.client.listPage(prefix, { delimiter: '/', maxKeys: 1 })).entries.length > 0
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

  /**
   * The children of `path` as readdir() gives them, unless it has more than `max`: then undefined,
   * once the pages read hold more than `max` entries. For hints, which must never list a directory
   * of millions whole.
   */
  async readdirUpTo(path: string, max: number): Promise<Map<string, Entry> | undefined> {
    const cached = this.listings.get(path)
    if (cached && cached.expires > Date.now()) {
      this.counters.metaHits++
      return cached.entries
    }
    this.counters.metaMisses++
    return this.listingFlights.get(path) ?? this.listUpTo(path, max)
  }

  private async list(path: string): Promise<Map<string, Entry>> {
    return (await this.listUpTo(path, Infinity))!
  }

  private async listUpTo(path: string, max: number): Promise<Map<string, Entry> | undefined> {
    const prefix = path === '/' ? '' : `${keyOf(path)}/`
    const epoch = this.epoch
    const listed: ListEntry[] = []
    let token: string | undefined
    do {
      this.counters.listRequests++
      const page = await this.client.listPage(prefix, { delimiter: '/', token })
      listed.push(...page.entries)
      if (listed.length > max) return undefined
      token = page.next
    } while (token)
    const entries = this.collect(prefix, listed)
    if (epoch === this.epoch) this.listings.set(path, { entries, expires: this.expiry(this.ttlMs) })
    return entries
  }

  /** The entries of a directory (or of a page of it) from what a listing returned; unusable keys are skipped with a warning. */
  private collect(prefix: string, listed: ListEntry[]): Map<string, Entry> {
    const entries = new Map<string, Entry>()
    const shadowed: string[] = []
    for (const e of listed) {
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
    this.warned.set(key, true)
    this.log.warn({ key }, msg)
  }

  /**
   * Forgets what is known about `path` and its parent's listing, e.g. after its object changed, and
   * what requests already on their way will answer: the next lookups ask again.
   */
  invalidate(path: string): void {
    this.epoch++
    this.probes.delete(path)
    this.pageFlights.delete(path)
    this.probeFlights.delete(path)
    const slash = path.lastIndexOf('/')
    const parent = slash <= 0 ? '/' : path.slice(0, slash)
    this.listings.delete(parent)
    this.pages.delete(parent)
    this.listingFlights.delete(parent)
  }
}
