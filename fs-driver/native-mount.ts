/**
 * The mount's native byte path, typed: `build/Release/o3_mount.node` (built by `scripts/build-addon`
 * with the trainer's addon, but loading no libtorch), or the file named by `O3_MOUNT_ADDON`. It
 * holds the FUSE 3 session, the block cache, readahead, the disk tier, leaf checks and the fetch
 * engine (cpp/mount/); this side answers its questions (lookup, readdir, open) and takes its log
 * lines, its statistics and the news that the session ended.
 */
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'
import { projectRoot } from '../lib/paths.js'
import type { Credentials } from '../lib/o3/config.js'

/** The byte path's error kinds (cpp/mount/error.h); the native side maps them to errno. */
export type ErrorKind = 'NotFound' | 'Auth' | 'Integrity' | 'Stream' | 'Unreachable' | 'Timeout' | 'Cancelled' | 'NoMemory'
export interface NativeError {
  kind: ErrorKind
  message: string
}

/** A file or directory as a lookup answers it. */
export type NativeEntry = { isDir: true } | { isDir: false; size: number; mtimeMs: number; etag: string }

/** What an open pins: the version every block must come from, and the manifest's leaf digests. */
export interface NativeOpen {
  /** Relative to the bucket: the mount's prefix already applied. */
  key: string
  etag: string
  versionId?: string
  size: number
  mtimeMs: number
  /** The ETag the listing names now, as lookups report it: `etag` may be an older version's, the one a manifest records. */
  listedEtag: string
  /** The SHA-256 of each 1 MiB leaf, 32 bytes each; absent when no manifest names the file. */
  leaves?: Buffer
}

export interface NativeMountConfig {
  mountpoint: string
  /** Shown in /proc/mounts; no commas. */
  fsname: string
  allowOther: boolean
  debug: boolean
  maxBackground: number
  congestionThreshold: number
  fileMode: number
  dirMode: number
  uid: number
  gid: number
  attrTimeoutSec: number
  negativeTimeoutSec: number
  opTimeoutMs: number
  blockSize: number
  cacheMem: number
  maxConnections: number
  /** 0: chosen from the cores. */
  workerThreads: number
  partSize: number
  readaheadMax: number
  readaheadInitial: number
  seekTolerance: number
  /** '' for none. */
  cacheDir: string
  cacheDiskBytes: number
  cacheNamespace: string
  fetch: {
    endpoint: string
    region: string
    bucket: string
    /** The keys to sign with, handed over in memory; never logged. */
    credentials: NativeCredentials
    /** PEM file for HTTPS; '' for the system store. */
    caBundle: string
    /** Added to this machine's clock in signatures: the server's minus ours, as the SDK measured it. */
    clockOffsetMs: number
    /** The HTTP proxy to go through (credentials in it are secrets), '' for none: lib/o3/proxy.ts decides for both paths. */
    proxy: string
    connectTimeoutMs: number
    requestTimeoutMs: number
    /** Attempts per fetch, the first included; the waits between them are the SDK client's. */
    maxAttempts: number
    /** Connections opened at start-up, before the first read needs them. */
    warmConnections: number
  }
}

/** A start that failed: the disk tier (`cacheDir`), the mount itself, the configuration, or something else. */
export interface NativeStartFailure {
  kind: 'cacheDir' | 'mount' | 'config' | 'internal'
  message: string
}

/** The native counters (cpp/mount/counters.h), by their stats-file names. */
export interface NativeCounters {
  memHits: number
  memMisses: number
  diskHits: number
  diskMisses: number
  diskCorrupt: number
  diskWrites: number
  diskWritesSkipped: number
  blocksFetched: number
  blocksPrefetched: number
  prefetchWasted: number
  bytesFetched: number
  getRequests: number
  reads: number
  bytesRead: number
  readErrors: number
  timeouts: number
  opens: number
  blocksVerified: number
  verifyFailures: number
  /** Files queued to fetch ahead of their readers, and of them: fetched ahead, passed over, then read from what was fetched. */
  filesAnnounced: number
  filesPrefetched: number
  filesSkipped: number
  filesPrefetchUsed: number
  /** Blocks the announced queue fetched that a reader then took. */
  announcedBlocksUsed: number
}

export interface NativeStats {
  counters: NativeCounters
  fetch: {
    requests: number
    retries: number
    errors: number
    bytesReceived: number
    connectionsOpened: number
    queued: number
    inFlight: number
    firstByteUsAverage: number
    bytesPerSecondPerConnection: number
    clockOffsetMs: number
  }
  cache: {
    budgetBytes: number
    cacheBytes: number
    inflightBytes: number
    peakUsedBytes: number
    overflowBuffers: number
    queuedJobs: number
    runningJobs: number
    announcedFiles: number
  }
  readahead: { streams: number; maxWindowBytes: number; totalWindowBytes: number }
  openFiles: number
  diskBytes: number
  inodes: number
}

/** One file to fetch ahead of its readers (issue 21's announced order). */
export interface NativePrefetch extends NativeOpen {
  /** Below the mount's root, `/a/b`. */
  path: string
}

/** What the native signer signs with (the keys without their expiry): secrets, held in memory only. */
export type NativeCredentials = Pick<Credentials, 'accessKeyId' | 'secretAccessKey' | 'sessionToken'>

export type Dispatch = (kind: string, a: unknown, b: unknown, c?: unknown) => void

export interface NativeMount {
  start(config: NativeMountConfig): Promise<NativeStartFailure | null>
  unmount(): void
  /** Requests signed from now on use `credentials` (temporary ones, refreshed before they expire). */
  setCredentials(credentials: NativeCredentials): void
  stats(): NativeStats | undefined
  /** Queues `files` to fetch ahead of their readers, in order, after what `stream` (one per announcing client) queued before. */
  prefetch(files: NativePrefetch[], stream: number): void
  answerLookup(id: number, error: NativeError | null, entry: NativeEntry | null): boolean
  answerReaddir(id: number, error: NativeError | null, names: string[], isDir: boolean[]): boolean
  answerOpen(id: number, error: NativeError | null, info: NativeOpen | null): boolean
}

interface MountAddon {
  NativeMount: new (dispatch: Dispatch) => NativeMount
}

const ADDON_FILE = 'o3_mount.node'

/** Where the addon is loaded from: `O3_MOUNT_ADDON`, else the cmake-js build in the project. */
export function mountAddonPath(): string {
  return process.env.O3_MOUNT_ADDON ?? path.join(projectRoot(), 'build', 'Release', ADDON_FILE)
}

/** The addon could not be loaded; the message says why in one line and what to do. */
export class MountAddonError extends Error {}

let addon: MountAddon | undefined

export function loadMountAddon(): MountAddon {
  if (addon) return addon
  const file = mountAddonPath()
  try {
    addon = createRequire(import.meta.url)(file) as MountAddon
  } catch (err) {
    const message = (err instanceof Error ? err.message : String(err)).split('\n')[0]!
    if (!existsSync(file)) throw new MountAddonError(`the mount's native addon is not built (${file} is missing): run scripts/setup (or npm run build:addon)`)
    const lib = /([^\s:]*fuse[^\s:]*\.so[.\d]*): (.*)/.exec(message)
    if (lib) throw new MountAddonError(`libfuse 3 cannot be loaded (${lib[1]}: ${lib[2]}); install it with apt-get install -y libfuse3-3`)
    throw new MountAddonError(`cannot load the mount's native addon ${file}: ${message}; rebuild it with npm run build:addon`)
  }
  return addon
}
