import type { O3Client } from '../../lib/o3/client.js'
import { O3IntegrityError, O3StreamError } from '../../lib/o3/errors.js'
import type { Logger } from '../../lib/log.js'
import { DATASET_MANIFEST_NAME, checkDatasetManifestSize, parseDatasetManifest, type ManifestFile } from '../../lib/content/dataset-manifest.js'
import type { Entry, MetadataCache } from '../metadata-cache.js'

export const VERIFY_MODES = ['off', 'if-present', 'required'] as const
export type VerifyMode = (typeof VERIFY_MODES)[number]

/** An open refused by `--verify required`: no manifest covers the file. */
export class NotCoveredError extends Error {}

/** The manifest listed is not the one on the server any more: loaded again, not refused. */
class ManifestReplaced extends O3StreamError {}

interface Loaded {
  etag: string
  files: Record<string, ManifestFile>
}

/**
 * The dataset manifests of the mounted tree: `.o3-manifest.json` in the mount's root and in any
 * directory below it, each fetched once (again only when its ETag changes) and checked as
 * untrusted input before any of its digests is used. A file is covered by the deepest manifest
 * above it that names it.
 */
export class ManifestIndex {
  private readonly byDir = new Map<string, { etag: string; loaded: Promise<Loaded> }>()
  private readonly failedLogged = new Set<string>()

  constructor(
    private readonly client: O3Client,
    private readonly meta: MetadataCache,
    readonly mode: VerifyMode,
    private readonly trustedSigners: readonly string[],
    private readonly log: Logger,
  ) {}

  /** Loads the root's manifest at mount time, so that a bad one stops the mount with its error. */
  async loadRoot(): Promise<number | undefined> {
    const m = await this.manifestIn('')
    if (m)
      this.log.info(
        { manifest: DATASET_MANIFEST_NAME, files: Object.keys(m.files).length, mode: this.mode },
        'dataset manifest loaded; reads of the files it names are verified',
      )
    return m ? Object.keys(m.files).length : undefined
  }

  /** The manifest in directory `dir` (`''` for the root, else `a/b`), or undefined when there is none. */
  private async manifestIn(dir: string): Promise<Loaded | undefined> {
    const path = `/${dir === '' ? '' : `${dir}/`}${DATASET_MANIFEST_NAME}`
    const e = await this.meta.lookup(path)
    if (!e || e.kind !== 'file') return undefined
    let cached = this.byDir.get(dir)
    if (!cached || cached.etag !== e.etag) {
      const entry = { etag: e.etag, loaded: this.load(path, e.key, e.etag, e.size) }
      this.byDir.set(dir, entry)
      // A manifest that is bad stays refused until its ETag changes; one that could not be fetched
      // (a timeout, the server away) is tried again by the next open.
      entry.loaded.catch((err: unknown) => {
        if (!(err instanceof O3IntegrityError) && this.byDir.get(dir) === entry) this.byDir.delete(dir)
      })
      cached = entry
    }
    return cached.loaded
  }

  /**
   * Starts looking up (and loading) the manifests an open of `path` consults, and returns at once:
   * begun beside the lookup of the file itself, they cost its open no round trip of its own. What
   * goes wrong is the open's to report.
   */
  warm(path: string): void {
    if (this.mode === 'off') return
    for (const { dir } of consultedBy(path)) this.manifestIn(dir).catch(() => {})
  }

  /** manifestIn for an open: a bad manifest is logged once (at mount time it stops the mount instead). */
  private async manifestForOpen(dir: string): Promise<Loaded | undefined> {
    try {
      // Once more for a manifest replaced since its listing: its listing has been dropped by then.
      return await this.manifestIn(dir).catch((err: unknown) => {
        if (err instanceof ManifestReplaced) return this.manifestIn(dir)
        throw err
      })
    } catch (err) {
      const msg = (err as Error).message
      if (!this.failedLogged.has(msg)) {
        this.failedLogged.add(msg)
        this.log.error({ dir, err: msg }, 'dataset manifest refused; opens of files below it fail with EIO')
      }
      throw err
    }
  }

  private async load(path: string, key: string, etag: string, size: number): Promise<Loaded> {
    checkDatasetManifestSize(size, key)
    let bytes: Buffer
    try {
      bytes = size === 0 ? Buffer.alloc(0) : await this.client.getBytes(key, 0, size - 1, { pin: { etag } })
    } catch (err) {
      // Not the listed object any more (replaced since the listing): not a bad manifest, so not
      // refused until its ETag changes; the listing is dropped and the next open loads the new one.
      if (!(err instanceof O3IntegrityError)) throw err
      this.meta.invalidate(path)
      throw new ManifestReplaced(`${key} was replaced while it was being loaded; the next open loads it again`, { cause: err })
    }
    const m = await parseDatasetManifest(bytes, key, this.trustedSigners)
    return { etag, files: m.files }
  }

  /**
   * The size a file shows: the size of the version its manifest records where there is one (what
   * an open will read), else the object's now. A manifest that refuses the file leaves that to
   * the open to report; one that could not be loaded fails the lookup, because the listed size may
   * not be what an open reads and the kernel would keep it.
   */
  async shownSize(path: string, listed: Extract<Entry, { kind: 'file' }>): Promise<number> {
    if (this.mode === 'off') return listed.size
    try {
      const f = await this.coverage(path, listed.key, listed.size)
      return f?.versionId !== undefined ? f.size : listed.size
    } catch (err) {
      if (err instanceof NotCoveredError || err instanceof O3IntegrityError) return listed.size
      throw err
    }
  }

  /**
   * The manifest record of the file at `path` (key `key`, `size` bytes), or undefined when no
   * manifest names it (NotCoveredError instead under `--verify required`); O3IntegrityError when a
   * manifest above it is bad, or names it with another size and no version of its own to read.
   */
  async coverage(path: string, key: string, size: number): Promise<ManifestFile | undefined> {
    if (this.mode === 'off') return undefined
    for (const { dir, name } of consultedBy(path)) {
      const m = await this.manifestForOpen(dir)
      const f = m?.files[name]
      if (!f) continue
      if (f.versionId === undefined && f.size !== size)
        throw new O3IntegrityError(`${key} has ${size} bytes, its manifest says ${f.size}; it was replaced or truncated after upload`)
      return f
    }
    if (this.mode === 'required') throw new NotCoveredError(`${key} is named by no ${DATASET_MANIFEST_NAME}; --verify required refuses to open it`)
    return undefined
  }
}

/**
 * The directories whose manifests may name the file at `path`, deepest first, each with the
 * file's path relative to it: `a/b/c.png` is `c.png` in `a/b`, `b/c.png` in `a`, the whole path in
 * the root (`''`).
 */
function* consultedBy(path: string): Generator<{ dir: string; name: string }> {
  const parts = path.replace(/^\/+/, '').split('/')
  for (let depth = parts.length - 1; depth >= 0; depth--) yield { dir: parts.slice(0, depth).join('/'), name: parts.slice(depth).join('/') }
}

/**
 * What an open of a file reads, its pin: the version its manifest records where the bucket gave
 * one at upload (that version's ETag, id and size, so that a key overwritten since still serves the
 * uploaded bytes, which the leaves then check), else the object listed now. Every read of the open
 * file stays on this version.
 */
export function openPin(listed: Extract<Entry, { kind: 'file' }>, recorded: ManifestFile | undefined): OpenPin {
  if (recorded?.versionId !== undefined && recorded.etag !== undefined)
    return { key: listed.key, etag: recorded.etag, versionId: recorded.versionId, size: recorded.size }
  return { key: listed.key, etag: listed.etag, versionId: listed.versionId, size: listed.size }
}

/** The object version an open reads: key (relative to the mount's scope), ETag, version id and size. */
export interface OpenPin {
  key: string
  etag: string
  versionId?: string
  size: number
}
