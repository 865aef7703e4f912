import { createHash } from 'node:crypto'
import { closeSync, constants, mkdirSync, openSync, readFileSync, statSync, unlinkSync, writeSync, chmodSync } from 'node:fs'
import { mkdir, open, readdir, rename, stat, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { crc32 } from 'node:zlib'
import { LRUCache } from 'lru-cache'
import type { Logger } from '../../lib/log.js'
import { ExitCode } from '../../lib/cli/exit-codes.js'
import { MountError } from '../mount-error.js'
import type { MountCounters } from '../stats.js'

/**
 * The on-disk block tier. Each block is one file named by the SHA-256 of its identity (endpoint,
 * bucket and prefix, then key, ETag, block size, index), so a replaced object never meets its old
 * blocks, a cache directory shared by two locations never serves one's blocks for the other (equal
 * keys and ETags there say nothing about equal bytes), and a remount finds its blocks again. A 16-byte header carries a CRC32 over the identity and the data; a block that
 * fails it is deleted and fetched again, never returned.
 */
const MAGIC = 0x4f334d42 // "O3MB"
const HEADER = 16
/** Writes queued beyond this many bytes are dropped: the disk tier must not hold memory hostage. */
const MAX_PENDING_WRITE_BYTES = 16 << 20

interface DiskEntry {
  size: number
}

export class DiskCache {
  private readonly index: LRUCache<string, DiskEntry>
  private pendingWriteBytes = 0
  private lockPath: string

  private constructor(
    readonly dir: string,
    readonly maxBytes: number,
    private readonly namespace: string,
    private readonly counters: MountCounters,
    private readonly log: Logger,
  ) {
    this.lockPath = join(dir, 'lock')
    this.index = new LRUCache<string, DiskEntry>({
      maxSize: maxBytes,
      sizeCalculation: (e) => Math.max(1, e.size),
      dispose: (_e, name, reason) => {
        if (reason === 'evict' || reason === 'delete') unlink(this.pathOf(name)).catch(() => {})
      },
    })
  }

  /** Creates (mode 0700) or reopens the cache directory, takes its lock and indexes the blocks already there. */
  static async open(dir: string, maxBytes: number, namespace: string, counters: MountCounters, log: Logger): Promise<DiskCache> {
    try {
      mkdirSync(join(dir, 'blocks'), { recursive: true, mode: 0o700 })
      const st = statSync(dir)
      if (process.getuid && st.uid !== process.getuid()) {
        throw new MountError(`cache directory ${dir} belongs to uid ${st.uid}, not to you; choose another --cache-dir`, ExitCode.cacheDir)
      }
      // Cached blocks are the bucket's bytes: no other user may read them.
      chmodSync(dir, 0o700)
    } catch (err) {
      if (err instanceof MountError) throw err
      throw new MountError(`cannot create cache directory ${dir}: ${(err as NodeJS.ErrnoException).code ?? err}; check --cache-dir`, ExitCode.cacheDir)
    }
    const cache = new DiskCache(dir, maxBytes, namespace, counters, log)
    cache.lock()
    await cache.scan()
    return cache
  }

  private lock(): void {
    try {
      const fd = openSync(this.lockPath, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, 0o600)
      writeSync(fd, String(process.pid))
      closeSync(fd)
      return
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST')
        throw new MountError(`cannot lock cache directory ${this.dir}: ${(err as Error).message}`, ExitCode.cacheDir)
    }
    const holder = Number(readFileSync(this.lockPath, 'utf8'))
    let alive = false
    try {
      if (holder > 0 && holder !== process.pid) {
        process.kill(holder, 0)
        alive = true
      }
    } catch {
      alive = false
    }
    if (alive) throw new MountError(`cache directory ${this.dir} is in use by process ${holder}; give each mount its own --cache-dir`, ExitCode.cacheDir)
    // A mount that crashed left its lock; the blocks are checksummed, so they stay usable.
    unlinkSync(this.lockPath)
    this.lock()
  }

  unlock(): void {
    try {
      if (readFileSync(this.lockPath, 'utf8') === String(process.pid)) unlinkSync(this.lockPath)
    } catch {
      // already gone
    }
  }

  private async scan(): Promise<void> {
    const found: { name: string; size: number; mtime: number }[] = []
    const root = join(this.dir, 'blocks')
    for (const sub of await readdir(root)) {
      for (const name of await readdir(join(root, sub)).catch(() => [] as string[])) {
        const p = join(root, sub, name)
        if (name.endsWith('.tmp')) {
          await unlink(p).catch(() => {})
          continue
        }
        const st = await stat(p).catch(() => undefined)
        if (st?.isFile()) found.push({ name, size: st.size, mtime: st.mtimeMs })
      }
    }
    // Oldest first, so that the most recently written blocks end up most recently used.
    found.sort((a, b) => a.mtime - b.mtime)
    for (const f of found) this.index.set(f.name, { size: f.size })
    this.log.info({ dir: this.dir, blocks: this.index.size, bytes: this.index.calculatedSize }, 'disk cache opened')
  }

  private nameOf(id: string): string {
    return createHash('sha256').update(this.namespace).update('\0').update(id).digest('hex')
  }

  private pathOf(name: string): string {
    return join(this.dir, 'blocks', name.slice(0, 2), name)
  }

  get bytes(): number {
    return this.index.calculatedSize
  }

  has(id: string): boolean {
    return this.index.has(this.nameOf(id))
  }

  private static checksum(name: string, data: Buffer): number {
    return crc32(data, crc32(name))
  }

  /**
   * Reads the block into `into` (exactly its length); false when it is absent or fails its
   * checksum (then it is deleted), and `into` must not be used.
   */
  async read(id: string, into: Buffer): Promise<boolean> {
    const name = this.nameOf(id)
    if (!this.index.get(name)) {
      this.counters.diskMisses++
      return false
    }
    const header = Buffer.alloc(HEADER)
    let got: number
    let size: number
    try {
      const fh = await open(this.pathOf(name), 'r')
      try {
        size = (await fh.stat()).size
        got = (await fh.readv([header, into], 0)).bytesRead
      } finally {
        await fh.close()
      }
    } catch {
      this.index.delete(name)
      this.counters.diskMisses++
      return false
    }
    const ok =
      size === HEADER + into.length &&
      got === size &&
      header.readUInt32LE(0) === MAGIC &&
      header.readUInt32LE(4) === into.length &&
      header.readUInt32LE(8) === DiskCache.checksum(name, into)
    if (!ok) {
      this.counters.diskCorrupt++
      this.log.warn({ block: name, file: this.pathOf(name) }, 'disk cache block failed its checksum; deleting it and fetching again')
      this.index.delete(name)
      return false
    }
    this.counters.diskHits++
    return true
  }

  /** Forgets a block (and deletes its file) that a caller found wrong. */
  drop(id: string): void {
    this.index.delete(this.nameOf(id))
  }

  /**
   * Stores a block in the background; a failure only costs a later refetch. Returns false when
   * the write was skipped; otherwise `done` runs once `data` is no longer needed.
   */
  write(id: string, data: Buffer, done: () => void): boolean {
    const name = this.nameOf(id)
    if (this.index.has(name)) return false
    if (this.pendingWriteBytes + data.length > MAX_PENDING_WRITE_BYTES) {
      this.counters.diskWritesSkipped++
      return false
    }
    this.pendingWriteBytes += data.length
    const header = Buffer.alloc(HEADER)
    header.writeUInt32LE(MAGIC, 0)
    header.writeUInt32LE(data.length, 4)
    header.writeUInt32LE(DiskCache.checksum(name, data), 8)
    const path = this.pathOf(name)
    const tmp = `${path}.${process.pid}.tmp`
    const finished = () => {
      this.pendingWriteBytes -= data.length
      done()
    }
    mkdirAsync(join(this.dir, 'blocks', name.slice(0, 2)))
      .then(() => writeFile(tmp, [header, data], { mode: 0o600 }))
      .then(() => rename(tmp, path))
      .then(() => {
        this.counters.diskWrites++
        this.index.set(name, { size: HEADER + data.length })
      })
      .catch((err: NodeJS.ErrnoException) => {
        unlink(tmp).catch(() => {})
        this.log.warn({ code: err.code, file: path }, 'cannot write a block to the disk cache')
      })
      .finally(finished)
    return true
  }
}

const madeDirs = new Set<string>()
async function mkdirAsync(dir: string): Promise<void> {
  if (madeDirs.has(dir)) return
  await mkdir(dir, { recursive: true, mode: 0o700 })
  madeDirs.add(dir)
}
