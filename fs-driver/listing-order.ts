import { posix } from 'node:path'
import type { Logger } from '../lib/log.js'
import type { MetadataCache } from './metadata-cache.js'

/**
 * The native announce queue's stream for listing order; control-socket clients take 1, 2, ….
 */
export const LISTING_STREAM = 0

export interface ListingOrderOptions {
  /** Files kept queued ahead of the furthest one opened. */
  ahead: number
  /** Only files up to this size are fetched whole ahead; larger ones get readahead once read. */
  maxFileBytes: number
}

/**
 * An open within this many places of the furthest one opened so far still follows the listing:
 * several readers walking one list (a DataLoader's workers, `xargs -P`) open files a little out of
 * order. A shuffled order lands this close by chance in about 2 x SPREAD / (files in the
 * directory) of its opens, so CONFIRM opens in a row almost never do in a directory worth it.
 */
const SPREAD = 32
/** Opens in a row that follow the listing before anything is queued. */
const CONFIRM = 3
/**
 * A directory of no more entries than this is not followed: any order of its opens lands within
 * the spread, so listing order cannot be told from chance there (and its files are few round trips).
 */
const MIN_ENTRIES = 2 * SPREAD
/** Directories followed at once; the one opened least recently is forgotten first. */
const MAX_DIRS = 256
/**
 * A directory of more entries than this is not followed: an open must never make the mount list
 * a directory of millions (and hold it) for a hint. Found out after reading this many entries, and
 * remembered while the directory is among the MAX_DIRS followed.
 */
const MAX_ENTRIES = 100_000

interface Followed {
  /** The directory's entries in listing order: each file's path and size (a subdirectory's slot is undefined). */
  files: ({ path: string; size: number } | undefined)[]
  index: Map<string, number>
  furthest: number
  streak: number
  /** The last place queued (or passed as too large). */
  queuedTo: number
}

/**
 * Notices files opened in the order of their directory's listing (ImageFolder evaluation, `cp -r`,
 * `tar c`, a loader walking a sorted list, several readers interleaved) and queues the next small
 * files of that listing to be fetched whole before they are opened. Nothing is queued until
 * CONFIRM opens in a row follow the listing, and nothing more once an open does not: the pattern
 * must be seen again from where the opens went. The native queue holds what is queued within its
 * share of the memory budget and passes over files a reader opened first.
 */
export class ListingOrder {
  private readonly dirs = new Map<string, Promise<Followed | undefined>>()

  constructor(
    private readonly meta: MetadataCache,
    private readonly queue: (paths: string[]) => void,
    private readonly o: ListingOrderOptions,
    private readonly log: Logger,
  ) {}

  /** An open of `path` (`/a/b.png`) succeeded. Never throws, never waits. */
  opened(path: string): void {
    const dir = posix.dirname(path)
    let followed = this.dirs.get(dir)
    if (followed) {
      // Most recently opened last, so that the first key is the one to forget.
      this.dirs.delete(dir)
    } else {
      followed = this.load(dir)
      if (this.dirs.size >= MAX_DIRS) this.dirs.delete(this.dirs.keys().next().value!)
    }
    this.dirs.set(dir, followed)
    // Opens of one directory are handled in the order they came: each waits on the same listing.
    void followed.then((f) => f && this.advance(f, path))
  }

  private async load(dir: string): Promise<Followed | undefined> {
    try {
      const entries = await this.meta.readdirUpTo(dir, MAX_ENTRIES)
      if (!entries) {
        this.log.debug({ dir, over: MAX_ENTRIES }, 'listing order: a directory too large to follow')
        return undefined
      }
      const files: Followed['files'] = []
      const index = new Map<string, number>()
      for (const [name, e] of entries) {
        const path = posix.join(dir, name)
        index.set(path, files.length)
        files.push(e.kind === 'file' ? { path, size: e.size } : undefined)
      }
      return files.length > MIN_ENTRIES ? { files, index, furthest: -1, streak: 0, queuedTo: -1 } : undefined
    } catch (err) {
      // The open itself went well; only the hint is lost.
      this.log.debug({ dir, err: (err as Error).message }, 'listing order: no listing to follow')
      return undefined
    }
  }

  private advance(f: Followed, path: string): void {
    const i = f.index.get(path)
    if (i === undefined) return
    if (f.furthest >= 0 && i > f.furthest - SPREAD && i <= f.furthest + SPREAD) {
      f.streak++
      f.furthest = Math.max(f.furthest, i)
    } else {
      // Not (or no longer) in listing order: follow again from here.
      f.streak = 0
      f.furthest = i
      f.queuedTo = i
    }
    // Topped up in batches of half the distance, not one file per open.
    if (f.streak < CONFIRM || f.queuedTo - f.furthest > this.o.ahead / 2) return
    const to = Math.min(f.files.length - 1, f.furthest + this.o.ahead)
    const paths: string[] = []
    for (let j = Math.max(f.queuedTo, f.furthest) + 1; j <= to; j++) {
      const file = f.files[j]
      if (file && file.size > 0 && file.size <= this.o.maxFileBytes) paths.push(file.path)
    }
    f.queuedTo = Math.max(f.queuedTo, to)
    if (paths.length > 0) this.queue(paths)
  }
}
