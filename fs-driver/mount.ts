import type Fuse from 'fuse-native'
import type { FuseOps, FuseOptions } from 'fuse-native'
import { O3Client } from '../lib/o3/client.js'
import { resolveConfig } from '../lib/o3/config.js'
import type { Logger } from '../lib/log.js'
import { pickO3Flags } from '../lib/cli/o3-flags.js'
import { installShutdown } from '../lib/shutdown.js'
import { onInternalError } from '../lib/cli/run-cli.js'
import { BlockCache } from './data-cache/block-cache.js'
import { DiskCache } from './data-cache/disk-cache.js'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { MountError } from './mount-error.js'
import { O3Filesystem } from './filesystem.js'
import { backgroundLimits, tuneKernel } from './kernel-tuning.js'
import { MetadataCache } from './metadata-cache.js'
import type { MountOptions } from './options.js'
import { findMount, fusermountUnmount } from './mount-table.js'
import { checkBucket, checkFuse, checkMountpoint } from './preflight.js'
import { MountCounters, StatsReporter } from './stats.js'
import { ManifestIndex } from './verify/manifest-index.js'
import { CID_BLOCK_SIZE } from '../lib/content/cid.js'

/** Largest read the kernel sends to a libfuse2 filesystem. */
const MAX_READ = 128 * 1024
const STATS_FILE_EVERY_MS = 2_000
const UNMOUNT_POLL_MS = 1_000
const NETWORK_BYTES_PER_CONNECTION = 2 << 20

/** A fuse-native mount with libfuse options that fuse-native has no name for (it builds a fixed list). */
async function createFuse(mnt: string, ops: FuseOps, opts: FuseOptions, extra: string[]): Promise<Fuse> {
  // Loaded only here, after checkFuse: loading it needs libfuse, whose absence is a start-up check.
  const { default: FuseNative } = await import('fuse-native')
  class TunedFuse extends FuseNative {
    protected override _fuseOptions(): string {
      const base = super._fuseOptions().replace(/^-o/, '')
      return `-o${[base, ...extra].filter(Boolean).join(',')}`
    }
  }
  return new TunedFuse(mnt, ops, opts)
}

export interface MountedInfo {
  pid: number
  mountpoint: string
  location: string
  statsFile: string
}

/**
 * Checks everything, mounts, and serves until the mount goes away (SIGINT/SIGTERM, `o3mount
 * --unmount`, or `fusermount -u`). Resolves with the exit status once unmounted.
 */
export async function serveMount(o: MountOptions, statsFile: string, log: Logger, onReady: (info: MountedInfo) => void): Promise<number> {
  await checkFuse()
  await checkMountpoint(o.mountpoint, log)
  const config = resolveConfig(pickO3Flags(o))
  await checkBucket(o.location, config)

  const counters = new MountCounters()
  const client = O3Client.open(o.location, { config, maxSockets: o.maxConnections, logger: log.child({ component: 'o3' }) })
  // The blocks' keys are relative to the location: the cache must tell locations apart itself.
  const cacheNamespace = [config.endpoint, client.scope.bucket, client.scope.prefix].join('\0')
  const disk = o.cacheDir ? await DiskCache.open(o.cacheDir, o.cacheDiskSize, cacheNamespace, counters, log) : undefined
  // Each open GET holds socket and stream buffers outside the blocks, and their chunks linger as
  // garbage until collected; they come out of the same budget, so that --cache-mem bounds what
  // the data path holds, not just the blocks.
  const networkReserve = Math.min(o.maxConnections * NETWORK_BYTES_PER_CONNECTION, Math.floor(o.cacheMem / 2))
  // A leaf is checked whole: with verification on, a block holds whole leaves.
  const blockSize = o.verify === 'off' ? o.blockSize : Math.max(o.blockSize, CID_BLOCK_SIZE)
  if (blockSize !== o.blockSize)
    log.info({ blockSize, asked: o.blockSize }, 'block size raised to one 1 MiB leaf so that each block can be verified whole (--verify off keeps it)')
  const blocks = new BlockCache({
    client,
    blockSize,
    memoryBytes: o.cacheMem - networkReserve,
    partSize: o.partSize,
    maxConnections: o.maxConnections,
    disk,
    counters,
    log,
  })
  const meta = new MetadataCache(client, o.metadataTtl, counters, log)
  const manifests = new ManifestIndex(client, meta, o.verify, o.trustedSigners, log)
  try {
    await manifests.loadRoot()
  } catch (err) {
    disk?.unlock()
    client.close()
    throw err
  }
  const fs = new O3Filesystem(meta, blocks, manifests, counters, log, {
    fileMode: o.fileMode,
    dirMode: o.dirMode,
    uid: process.getuid?.() ?? 0,
    gid: process.getgid?.() ?? 0,
    opTimeoutMs: o.opTimeoutMs,
    readaheadInitial: 2 * o.blockSize,
    readaheadMax: o.readaheadMax,
    seekTolerance: Math.max(16 << 20, 2 * o.kernelReadaheadKb * 1024),
  })

  const kernelTtl = Math.min(o.metadataTtl, 24 * 3600)
  const fuse = await createFuse(
    o.mountpoint,
    fs.ops(),
    {
      // Our own deadline (opTimeoutMs) answers first, with EIO and a log line; this is the backstop.
      timeout: o.opTimeoutMs + 10_000,
      allowOther: o.allowOther,
      defaultPermissions: true,
      maxRead: MAX_READ,
      fsname: `o3mount:${o.location.replace(/[,\s]/g, '_')}`,
      subtype: 'o3mount',
      // The kernel keeps an object's pages across opens while its size and mtime stay the same.
      autoCache: true,
      entryTimeout: kernelTtl,
      attrTimeout: kernelTtl,
      debug: o.debugFuse,
    },
    ['ro', ...Object.entries(backgroundLimits(o.maxBackground)).map(([name, value]) => `${name}=${value}`), `negative_timeout=${Math.min(kernelTtl, 60)}`],
  )

  const stats = new StatsReporter(
    {
      counters,
      verifyMode: o.verify,
      o3: () => client.stats,
      readahead: () => fs.readaheadStats(),
      memory: () => ({
        budgetBytes: blocks.budget.limit,
        cacheBytes: blocks.cachedBytes,
        inflightBytes: blocks.budget.inflightBytes,
        overflowBuffers: blocks.overflowBuffers,
        peakUsedBytes: blocks.budget.peakBytes,
      }),
      diskBytes: () => disk?.bytes ?? 0,
      openFiles: () => fs.openFiles,
    },
    { mountpoint: o.mountpoint, location: o.location, statsFile },
    log,
  )

  try {
    await new Promise<void>((resolve, reject) => fuse.mount((err) => (err ? reject(err) : resolve())))
  } catch (err) {
    disk?.unlock()
    client.close()
    throw new MountError(
      `mounting ${o.mountpoint} failed: ${(err as Error).message}; check that you may use FUSE (user_allow_other for --allow-other)`,
      ExitCode.mountFailed,
    )
  }
  tuneKernel(o.mountpoint, { readAheadKb: o.kernelReadaheadKb, maxBackground: o.maxBackground }, log)
  stats.start(STATS_FILE_EVERY_MS, o.statsIntervalMs)
  log.info(
    { mountpoint: o.mountpoint, location: o.location, endpoint: config.endpoint, statsFile, cacheDir: o.cacheDir, credentialsFrom: config.sources.credentials },
    'mounted',
  )
  onReady({ pid: process.pid, mountpoint: o.mountpoint, location: o.location, statsFile })

  // A slip that kills the process must not leave a dead mountpoint (ENOTCONN) behind.
  const forgetUnmount = onInternalError(async () => {
    log.error({ mountpoint: o.mountpoint }, 'unmounting after an internal error')
    await fusermountUnmount(o.mountpoint)
  })
  return new Promise<number>((resolve) => {
    let finished = false
    const finish = (why: string) => {
      if (finished) return
      finished = true
      forgetUnmount()
      clearInterval(poll)
      shutdown.dispose()
      stats.stop()
      disk?.unlock()
      client.close()
      log.info({ mountpoint: o.mountpoint, why, ...stats.snapshot().reads }, 'unmounted')
      resolve(ExitCode.ok)
    }
    // `fusermount -u` from outside ends libfuse's loop without telling JS: notice it here.
    const poll = setInterval(() => {
      if (!findMount(o.mountpoint)) finish('unmounted from outside')
    }, UNMOUNT_POLL_MS)
    const shutdown = installShutdown({
      onRequest: (sig) => {
        log.info({ signal: sig }, 'unmounting')
        fuse.unmount((err) => {
          if (err) log.warn({ err: err.message }, 'unmount reported an error')
          finish(`signal ${sig}`)
        })
      },
      onForce: async () => {
        await fusermountUnmount(o.mountpoint).catch(() => {})
        finish('forced')
      },
    })
  })
}
