import { O3AuthError, O3IntegrityError, O3NotFoundError, O3UnreachableError } from '../lib/o3/errors.js'
import { fullKey, type Scope } from '../lib/o3/scope.js'
import type { ManifestFile } from '../lib/content/dataset-manifest.js'
import type { Logger } from '../lib/log.js'
import type { Entry, MetadataCache } from './metadata-cache.js'
import type { ErrorKind, NativeError, NativeMount, NativeOpen } from './native-mount.js'
import type { MountCounters } from './stats.js'
import { NotCoveredError, openPin, type ManifestIndex } from './verify/manifest-index.js'

export interface ControlPlaneOptions {
  scope: Scope
  /** Longest a lookup, listing or open may take before it fails (EIO). */
  opTimeoutMs: number
  /**
   * Whether the bucket may keep versions: then a file's size is the one of the version its manifest
   * records (what an open reads), and a lookup loads the manifest above it to know it. In a bucket
   * without versions a manifest records none, so lookups never wait on manifests.
   */
  versioned: boolean
  /** Told of every open answered with a file (ListingOrder follows them). */
  onOpened?: (path: string) => void
}

class OpTimeout extends Error {}

/** A path the mount would not open: none there, a directory, not covered by --verify required, or contradicting its manifest. */
export class Unopenable extends Error {
  constructor(
    readonly kind: 'NotFound' | 'Auth' | 'Integrity',
    message: string,
    /** The object's key, when there is one. */
    readonly key?: string,
  ) {
    super(message)
  }
}

/** The dataset manifest that would cover a path could not be loaded (the server, a timeout): `cause` says why. */
export class ManifestUnavailable extends Error {
  constructor(override readonly cause: unknown) {
    super((cause as Error).message ?? String(cause))
  }
}

function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new OpTimeout(`${what}: no answer within ${ms} ms`)), ms)
  })
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer))
}

const LEVELS = new Set(['debug', 'info', 'warn', 'error'])

/**
 * The mount's control plane: answers the native byte path's questions from the metadata cache and
 * the dataset manifests. A lookup or listing crosses here, as does an open (to pin the object's
 * version and hand over its leaf digests); reads never do. Every answer is an error kind the native
 * side maps to errno, or the data; nothing here blocks the native side, which is never waiting.
 */
export class ControlPlane {
  /** Leaf digests as the native side takes them, built once per manifest record. */
  private readonly leafBuffers = new WeakMap<ManifestFile, Buffer>()

  constructor(
    private readonly meta: MetadataCache,
    private readonly manifests: ManifestIndex,
    private readonly counters: MountCounters,
    private readonly log: Logger,
    private readonly o: ControlPlaneOptions,
  ) {}

  /** The dispatcher the native mount calls on this thread; `ended` hears the session's end. */
  dispatcher(native: () => NativeMount, ended: (status: number) => void): (kind: string, a: unknown, b: unknown, c?: unknown) => void {
    return (kind, a, b, c) => {
      switch (kind) {
        case 'lookup':
          return this.answer(
            b as string,
            this.lookup(b as string),
            ([err, entry]) => native().answerLookup(a as number, err, entry),
            (err) => native().answerLookup(a as number, err, null),
          )
        case 'readdir':
          return this.answer(
            b as string,
            this.readdir(b as string),
            ([err, names, dirs]) => native().answerReaddir(a as number, err, names, dirs),
            (err) => native().answerReaddir(a as number, err, [], []),
          )
        case 'open':
          return this.answer(
            b as string,
            this.open(b as string),
            ([err, info]) => native().answerOpen(a as number, err, info),
            (err) => native().answerOpen(a as number, err, null),
          )
        case 'invalidate':
          return this.meta.invalidate(b as string)
        case 'log': {
          const level = LEVELS.has(a as string) ? (a as 'debug' | 'info' | 'warn' | 'error') : 'info'
          return this.log[level](c as object, b as string)
        }
        case 'ended':
          return ended(a as number)
      }
    }
  }

  /**
   * Sends an answer. One the native side refuses (a value it cannot represent, such as a time
   * before 1970 from a server's listing) fails that request with EIO and a log line instead: it
   * must neither end the mount nor leave the kernel waiting for the op timeout.
   */
  private answer<T>(path: string, pending: Promise<T>, send: (value: T) => unknown, fail: (err: NativeError) => unknown): void {
    void pending.then(send).catch((err: unknown) => {
      const message = `${path}: the byte path refused the answer: ${(err as Error).message ?? String(err)}`
      this.log.error({ path, err: message }, 'control plane: an answer was refused')
      try {
        fail({ kind: 'Stream', message })
      } catch (again) {
        this.log.error({ path, err: (again as Error).message }, 'control plane: cannot answer the byte path')
      }
    })
  }

  private errorOf(err: unknown, what: string, path: string): NativeError {
    const message = (err as Error).message ?? String(err)
    let kind: ErrorKind = 'Stream'
    if (err instanceof OpTimeout) {
      this.counters.timeouts++
      kind = 'Timeout'
    } else if (err instanceof O3AuthError) kind = 'Auth'
    else if (err instanceof O3NotFoundError) kind = 'NotFound'
    else if (err instanceof O3IntegrityError) kind = 'Integrity'
    else if (err instanceof O3UnreachableError) kind = 'Unreachable'
    this.log.error({ path, err: message }, kind === 'Auth' ? `${what} refused by the server` : `${what} failed`)
    return { kind, message }
  }

  /** A file's size is what an open will read: the version its manifest records, where it records one. */
  private async entryOf(path: string, e: Entry): Promise<{ isDir: true } | { isDir: false; size: number; mtimeMs: number; etag: string }> {
    if (e.kind === 'dir') return { isDir: true }
    const size = this.o.versioned ? await this.manifests.shownSize(path, e) : e.size
    return { isDir: false, size, mtimeMs: e.mtime.getTime(), etag: e.etag }
  }

  async lookup(path: string): Promise<[NativeError | null, Awaited<ReturnType<ControlPlane['entryOf']>> | null]> {
    try {
      const found = async () => {
        this.manifests.warm(path)
        const e = await this.meta.lookup(path)
        return e && (await this.entryOf(path, e))
      }
      return [null, (await withDeadline(found(), this.o.opTimeoutMs, `lookup ${path}`)) ?? null]
    } catch (err) {
      return [this.errorOf(err, 'lookup', path), null]
    }
  }

  async readdir(path: string): Promise<[NativeError | null, string[], boolean[]]> {
    try {
      const entries = await withDeadline(this.meta.readdir(path), this.o.opTimeoutMs, `list ${path}`)
      const names: string[] = []
      const dirs: boolean[] = []
      for (const [name, child] of entries) {
        names.push(name)
        dirs.push(child.kind === 'dir')
      }
      return [null, names, dirs]
    } catch (err) {
      return [this.errorOf(err, 'list', path), [], []]
    }
  }

  async open(path: string): Promise<[NativeError | null, NativeOpen | null]> {
    try {
      const pinned = await this.pin(path)
      this.o.onOpened?.(path)
      return [null, pinned]
    } catch (err) {
      if (err instanceof Unopenable) {
        if (err.kind !== 'NotFound') {
          this.counters.verifyRefusedOpens++
          this.log.error({ path, key: err.key }, err.message)
        }
        return [{ kind: err.kind, message: err.kind === 'NotFound' ? `${path}: ${err.message}` : err.message }, null]
      }
      // The manifest could not be loaded (the server, a timeout): this open fails with EIO and
      // the next one tries again.
      if (err instanceof ManifestUnavailable) return [this.errorOf(err.cause, 'loading the dataset manifest', path), null]
      return [this.errorOf(err, 'open', path), null]
    }
  }

  /**
   * What an open of `path` would pin now: the object's key, ETag and version id, and the manifest's
   * leaf digests where one names the file; what the control socket queues files with, too. Throws
   * Unopenable when the mount would not open it, ManifestUnavailable when its manifest could not
   * be loaded, and what the lookup threw (the server, OpTimeout).
   */
  async pin(path: string): Promise<NativeOpen> {
    const e = await withDeadline(this.meta.lookup(path), this.o.opTimeoutMs, `lookup ${path}`)
    if (!e) throw new Unopenable('NotFound', 'no such file')
    if (e.kind !== 'file') throw new Unopenable('NotFound', 'a directory, not a file')
    let record: ManifestFile | undefined
    try {
      record = await withDeadline(this.manifests.coverage(path, e.key, e.size), this.o.opTimeoutMs, `manifest of ${path}`)
    } catch (err) {
      // --verify required with no manifest naming the file: refused (EACCES); a contradiction: EIO.
      if (err instanceof NotCoveredError) throw new Unopenable('Auth', err.message, e.key)
      if (err instanceof O3IntegrityError) throw new Unopenable('Integrity', err.message, e.key)
      throw new ManifestUnavailable(err)
    }
    // The version is pinned here: every block this open reads must carry this ETag (and version
    // id, from HEAD or else from the first response that names one): the one the manifest records
    // where the bucket keeps versions, else the object listed now.
    const pinned = openPin(e, record)
    return {
      key: fullKey(this.o.scope, pinned.key),
      etag: pinned.etag,
      versionId: pinned.versionId,
      size: pinned.size,
      mtimeMs: e.mtime.getTime(),
      listedEtag: e.etag,
      leaves: record && this.leavesOf(record),
    }
  }

  private leavesOf(record: ManifestFile): Buffer {
    let b = this.leafBuffers.get(record)
    if (!b) {
      b = Buffer.concat(record.leaves.map((hex) => Buffer.from(hex, 'hex')))
      this.leafBuffers.set(record, b)
    }
    return b
  }
}
