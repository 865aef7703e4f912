import { constants } from 'node:os'
import type { FuseOps, FuseStat, FuseStatfs } from 'fuse-native'
import { O3AuthError, O3IntegrityError } from '../lib/o3/errors.js'
import type { Logger } from '../lib/log.js'
import type { BlockCache, ObjectRef } from './data-cache/block-cache.js'
import type { Entry, MetadataCache } from './metadata-cache.js'
import { Readahead } from './prefetch/readahead.js'
import { LeafMismatchError } from './verify/leaf-check.js'
import { NotCoveredError, openPin, type ManifestIndex } from './verify/manifest-index.js'
import type { ManifestFile } from '../lib/content/dataset-manifest.js'
import type { MountCounters } from './stats.js'

export interface FilesystemOptions {
  fileMode: number
  dirMode: number
  uid: number
  gid: number
  /** Longest a read or lookup may take before it fails with EIO. */
  opTimeoutMs: number
  readaheadInitial: number
  readaheadMax: number
  /** Forward jump still counted as sequential; at least the kernel's readahead span. */
  seekTolerance: number
}

interface Handle {
  path: string
  obj: ObjectRef
  ra: Readahead
}

/** FUSE wants negative errno values. fuse-native's own constants would load libfuse before the start-up checks. */
const E = {
  ENOENT: -constants.errno.ENOENT,
  EIO: -constants.errno.EIO,
  EROFS: -constants.errno.EROFS,
  EACCES: -constants.errno.EACCES,
  EBADF: -constants.errno.EBADF,
  EISDIR: -constants.errno.EISDIR,
  ENOTDIR: -constants.errno.ENOTDIR,
}

const S_IFDIR = 0o040000
const S_IFREG = 0o100000
const O_ACCMODE = 3
const O_TRUNC = 0o1000

class OpTimeout extends Error {}

function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new OpTimeout(`${what}: no answer within ${ms} ms`)), ms)
  })
  return Promise.race([p, deadline]).finally(() => clearTimeout(timer))
}

/**
 * The FUSE operations: a read-only tree over the metadata cache, file reads served from the block
 * cache with per-file readahead, EROFS for anything that would change the bucket.
 */
export class O3Filesystem {
  private readonly handles = new Map<number, Handle>()
  private nextFd = 1
  private readonly mountedAt = new Date()

  constructor(
    private readonly meta: MetadataCache,
    private readonly blocks: BlockCache,
    private readonly manifests: ManifestIndex,
    private readonly counters: MountCounters,
    private readonly log: Logger,
    private readonly o: FilesystemOptions,
  ) {}

  get openFiles(): number {
    return this.handles.size
  }

  readaheadStats(): { streams: number; maxWindowBytes: number; totalWindowBytes: number } {
    let streams = 0
    let max = 0
    let total = 0
    for (const h of this.handles.values()) {
      const w = h.ra.windowBytes
      if (w > 0) streams++
      max = Math.max(max, w)
      total += w
    }
    return { streams, maxWindowBytes: max, totalWindowBytes: total }
  }

  private stat(e: Entry): FuseStat {
    if (e.kind === 'dir') {
      const t = this.mountedAt
      return { mode: S_IFDIR | this.o.dirMode, uid: this.o.uid, gid: this.o.gid, size: 4096, nlink: 2, mtime: t, atime: t, ctime: t }
    }
    return {
      mode: S_IFREG | this.o.fileMode,
      uid: this.o.uid,
      gid: this.o.gid,
      size: e.size,
      nlink: 1,
      mtime: e.mtime,
      atime: e.mtime,
      ctime: e.mtime,
      blocks: Math.ceil(e.size / 512),
      blksize: this.blocks.blockSize,
    }
  }

  private errno(err: unknown, what: string, path: string): number {
    if (err instanceof OpTimeout) {
      this.counters.timeouts++
      this.log.error({ path }, err.message)
      return E.EIO
    }
    if (err instanceof O3AuthError) {
      this.log.error({ path, err: err.message }, `${what} refused by the server`)
      return E.EACCES
    }
    this.log.error({ path, err: (err as Error).message }, `${what} failed`)
    return E.EIO
  }

  private lookup(path: string): Promise<Entry | undefined> {
    return withDeadline(this.meta.lookup(path), this.o.opTimeoutMs, `lookup ${path}`)
  }

  private maxWindow = (): number => Math.min(this.o.readaheadMax, Math.floor(this.blocks.budget.limit / (4 * Math.max(1, this.handles.size))))

  private read(path: string, fd: number, buf: Buffer, len: number, pos: number, cb: (n: number) => void): void {
    const h = this.handles.get(fd)
    if (!h) return cb(E.EBADF)
    this.counters.reads++
    const { obj } = h
    if (pos >= obj.size || len === 0) return cb(0)
    const n = Math.min(len, obj.size - pos)
    const bs = this.blocks.blockSize
    const first = Math.floor(pos / bs)
    const last = Math.floor((pos + n - 1) / bs)
    const loads: Promise<void>[] = []
    for (let i = first; i <= last; i++) if (!this.blocks.has(obj, i)) loads.push(this.blocks.load(obj, i))
    const ra = h.ra.onRead(pos, n, obj.size)
    if (ra) h.ra.issuedTo(this.blocks.prefetch(obj, ra.from, ra.to), obj.size)
    if (this.log.isLevelEnabled('trace')) this.log.trace({ fd, pos, n, waiting: loads.length, ra, window: h.ra.windowBytes }, 'read')
    // Copies synchronously from the cache; false if a block was evicted again before its reader
    // got to it (then it is loaded once more).
    const copy = (): boolean => {
      for (let i = first; i <= last; i++) {
        const block = this.blocks.peek(obj, i)
        if (!block) return false
        const blockStart = i * bs
        const from = Math.max(pos, blockStart)
        const to = Math.min(pos + n, blockStart + bs)
        block.copy(buf, from - pos, from - blockStart, to - blockStart)
      }
      this.counters.bytesRead += n
      return true
    }
    if (loads.length === 0 && copy()) return cb(n)
    const deadline = Date.now() + this.o.opTimeoutMs
    const wait = async (): Promise<void> => {
      await withDeadline(Promise.all(loads), this.o.opTimeoutMs, `read ${path} [${pos}, +${n}]`)
      while (!copy()) {
        if (Date.now() > deadline) throw new OpTimeout(`read ${path} [${pos}, +${n}]: blocks kept being evicted; raise --cache-mem`)
        const again: Promise<void>[] = []
        for (let i = first; i <= last; i++) again.push(this.blocks.load(obj, i))
        await withDeadline(Promise.all(again), Math.max(1, deadline - Date.now()), `read ${path} [${pos}, +${n}]`)
      }
    }
    wait().then(
      () => cb(n),
      (err) => {
        this.counters.readErrors++
        // Logged where it was found, with the key, block and both digests.
        if (err instanceof LeafMismatchError) return cb(E.EIO)
        if (err instanceof O3IntegrityError) {
          this.log.error(
            { path, key: obj.key, etag: obj.etag },
            'the object was replaced while open; failing the read (EIO) rather than mixing two versions; reopen the file to read the new one',
          )
          this.meta.invalidate(path)
          return cb(E.EIO)
        }
        cb(this.errno(err, 'read', path))
      },
    )
  }

  ops(): FuseOps {
    const erofs = (...args: unknown[]) => (args[args.length - 1] as (e: number) => void)(E.EROFS)
    return {
      getattr: (path, cb) => {
        this.lookup(path)
          .then(async (e) => {
            if (!e) return cb(E.ENOENT)
            // A file whose manifest records a version shows that version's size: the kernel reads no further.
            if (e.kind === 'file') e = { ...e, size: await withDeadline(this.manifests.shownSize(path, e), this.o.opTimeoutMs, `manifest of ${path}`) }
            cb(0, this.stat(e))
          })
          .catch((err) => cb(this.errno(err, 'lookup', path)))
      },
      readdir: (path, cb) => {
        this.lookup(path)
          .then(async (e) => {
            if (!e) return cb(E.ENOENT)
            if (e.kind !== 'dir') return cb(E.ENOTDIR)
            const entries = await withDeadline(this.meta.readdir(path), this.o.opTimeoutMs, `list ${path}`)
            const names = ['.', '..']
            const stats = [this.stat({ kind: 'dir' }), this.stat({ kind: 'dir' })]
            for (const [name, child] of entries) {
              names.push(name)
              stats.push(this.stat(child))
            }
            cb(0, names, stats)
          })
          .catch((err) => cb(this.errno(err, 'list', path)))
      },
      open: (path, flags, cb) => {
        if ((flags & O_ACCMODE) !== 0 || flags & O_TRUNC) return cb(E.EROFS)
        // One chain, one catch: whatever fails on the way (a lookup, a manifest that cannot be
        // fetched, an operation timeout) answers the open with an errno, never leaves it unanswered.
        this.lookup(path)
          .then(async (e) => {
            if (!e) return cb(E.ENOENT)
            if (e.kind !== 'file') return cb(E.EISDIR)
            let recorded: ManifestFile | undefined
            try {
              recorded = await withDeadline(this.manifests.coverage(path, e.key, e.size), this.o.opTimeoutMs, `manifest of ${path}`)
            } catch (err) {
              if (!(err instanceof NotCoveredError) && !(err instanceof O3IntegrityError)) throw err
              this.counters.verifyRefusedOpens++
              this.log.error({ path, key: e.key }, err.message)
              return cb(err instanceof NotCoveredError ? E.EACCES : E.EIO)
            }
            const fd = this.nextFd++
            // The version is pinned here: every block this handle reads must carry this ETag (and
            // version id: the manifest's, or from HEAD, or else from the first response that names one).
            this.handles.set(fd, {
              path,
              obj: openPin(e, recorded),
              ra: new Readahead({
                blockSize: this.blocks.blockSize,
                initialWindow: this.o.readaheadInitial,
                seekTolerance: this.o.seekTolerance,
                maxWindow: this.maxWindow,
              }),
            })
            this.counters.opens++
            cb(0, fd)
          })
          .catch((err) => cb(this.errno(err, 'open', path)))
      },
      read: (path, fd, buf, len, pos, cb) => this.read(path, fd, buf, len, pos, cb),
      release: (_path, fd, cb) => {
        this.handles.delete(fd)
        cb(0)
      },
      statfs: (_path, cb) => {
        const s: FuseStatfs = { bsize: 4096, frsize: 4096, blocks: 0, bfree: 0, bavail: 0, files: 0, ffree: 0, favail: 0, fsid: 0, flag: 0, namemax: 255 }
        cb(0, s)
      },
      write: (_p, _fd, _buf, _len, _pos, cb) => cb(E.EROFS),
      create: erofs,
      mkdir: erofs,
      unlink: erofs,
      rmdir: erofs,
      rename: erofs,
      link: erofs,
      symlink: erofs,
      truncate: erofs,
      ftruncate: erofs,
      chmod: erofs,
      chown: erofs,
      utimens: erofs,
      mknod: erofs,
      setxattr: erofs,
      removexattr: erofs,
    }
  }
}
