import { O3Client } from '../lib/o3/client.js'
import { resolveConfig } from '../lib/o3/config.js'
import type { Logger } from '../lib/log.js'
import { pickO3Flags } from '../lib/cli/o3-flags.js'
import { installShutdown } from '../lib/shutdown.js'
import { onInternalError } from '../lib/cli/run-cli.js'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { MountError } from './mount-error.js'
import { ControlPlane, ManifestUnavailable, Unopenable } from './control-plane.js'
import { ControlSocket, type AnnounceTarget } from './control-socket.js'
import { LISTING_STREAM, ListingOrder } from './listing-order.js'
import { BadRequest } from '../lib/control-protocol.js'
import { backgroundLimits, tuneKernel } from './kernel-tuning.js'
import { MetadataCache } from './metadata-cache.js'
import { keepCredentialsFresh } from './credentials-refresh.js'
import type { MountOptions } from './options.js'
import { fusermountUnmount } from './mount-table.js'
import { checkBucket, checkFuse, checkMountpoint } from './preflight.js'
import { MountCounters, StatsReporter } from './stats.js'
import { ManifestIndex } from './verify/manifest-index.js'
import { CID_BLOCK_SIZE } from '../lib/content/cid.js'
import { loadMountAddon, type NativeMount, type NativePrefetch, type NativeStartFailure } from './native-mount.js'

const STATS_FILE_EVERY_MS = 2_000
/**
 * Connections the fetch engine opens at start-up, so that the first reads of a few files at once pay
 * no TCP (and TLS: two round trips) handshake; the rest open as readahead needs them.
 */
const WARM_CONNECTIONS = 4
/**
 * Listing order: how many files are kept queued ahead of the furthest one opened, and the largest
 * file fetched whole (larger ones stream through readahead). The native queue bounds what they
 * hold in memory (half the budget for everything queued).
 */
const LISTING_AHEAD = 128
const LISTING_MAX_FILE_BYTES = 8 << 20
/** The most the kernel may keep a negative entry: a file uploaded meanwhile shows up after this. */
const MAX_NEGATIVE_TTL_S = 60
/** The most the kernel may keep entries and attributes (it takes a double; "indefinite" is a day). */
const MAX_KERNEL_TTL_S = 24 * 3600

export interface MountedInfo {
  pid: number
  mountpoint: string
  location: string
  statsFile: string
}

/**
 * What the control socket asks of the mount: a path pinned as an open now would pin it (a path the
 * mount would not open is a bad request), and files queued on the byte path.
 */
function announceTarget(control: ControlPlane, native: NativeMount): AnnounceTarget<NativePrefetch> {
  return {
    async resolve(path) {
      try {
        return { ...(await control.pin(path)), path }
      } catch (err) {
        if (err instanceof Unopenable) throw new BadRequest(err.message)
        throw err instanceof ManifestUnavailable ? err.cause : err
      }
    },
    queue: (files, stream) => native.prefetch(files, stream),
  }
}

/** Queues files whose opens the listing predicts, pinned as their opens will pin them; a file that would not open is left to its open. */
async function queueListed(control: ControlPlane, native: NativeMount, counters: MountCounters, paths: string[]): Promise<void> {
  const files: NativePrefetch[] = []
  for (const path of paths) {
    try {
      files.push({ ...(await control.pin(path)), path })
    } catch {
      continue
    }
  }
  if (files.length === 0) return
  counters.listingQueued += files.length
  native.prefetch(files, LISTING_STREAM)
}

/** Whether the bucket keeps (or kept) versions; true where the server does not say. */
async function mayKeepVersions(client: O3Client, log: Logger): Promise<boolean> {
  try {
    return (await client.bucketVersioning()) !== 'unversioned'
  } catch (err) {
    log.debug({ err: (err as Error).message }, 'bucket versioning unknown; file sizes follow the versions manifests record')
    return true
  }
}

/** A native start failure as the one-line error of the CLI, with its exit status. */
function startError(o: MountOptions, f: NativeStartFailure): MountError {
  switch (f.kind) {
    case 'cacheDir':
      return new MountError(f.message, ExitCode.cacheDir)
    case 'mount':
      return new MountError(
        `mounting ${o.mountpoint} failed: ${f.message}; check that you may use FUSE (user_allow_other for --allow-other)`,
        ExitCode.mountFailed,
      )
    case 'config':
      return new MountError(f.message, ExitCode.config)
    default:
      return new MountError(`the mount's byte path could not start: ${f.message}`, ExitCode.internal)
  }
}

/**
 * Checks everything, mounts, and serves until the mount goes away (SIGINT/SIGTERM, `o3mount
 * --unmount`, or `fusermount -u`). Resolves with the exit status once unmounted.
 *
 * The bytes never pass through here: the native byte path (FUSE 3 session, block cache, readahead,
 * disk tier, leaf checks, fetch engine) serves reads on its own threads and asks this side only
 * for metadata, listings and the pin and leaf digests of a file being opened.
 */
export async function serveMount(o: MountOptions, statsFile: string, log: Logger, onReady: (info: MountedInfo) => void): Promise<number> {
  await checkFuse()
  await checkMountpoint(o.mountpoint, log)
  const config = resolveConfig(pickO3Flags(o))
  await checkBucket(o.location, config)

  const counters = new MountCounters()
  const client = O3Client.open(o.location, { config, maxSockets: o.maxConnections, logger: log.child({ component: 'o3' }) })
  const meta = new MetadataCache(client, o.metadataTtl, counters, log)
  const manifests = new ManifestIndex(client, meta, o.verify, o.trustedSigners, log)
  let credentials
  let versioned = true
  try {
    await manifests.loadRoot()
    credentials = await client.credentials()
    versioned = await mayKeepVersions(client, log)
  } catch (err) {
    client.close()
    throw err
  }
  // Its queue is called only once the mount serves, when control and native are set.
  const listing = new ListingOrder(
    meta,
    (paths) => void queueListed(control, native, counters, paths),
    { ahead: LISTING_AHEAD, maxFileBytes: LISTING_MAX_FILE_BYTES },
    log,
  )
  const control = new ControlPlane(meta, manifests, counters, log, {
    scope: client.scope,
    opTimeoutMs: o.opTimeoutMs,
    versioned,
    onOpened: (path) => listing.opened(path),
  })
  // A leaf is checked whole: with verification on, a block holds whole leaves.
  const blockSize = o.verify === 'off' ? o.blockSize : Math.max(o.blockSize, CID_BLOCK_SIZE)
  if (blockSize !== o.blockSize)
    log.info({ blockSize, asked: o.blockSize }, 'block size raised to one 1 MiB leaf so that each block can be verified whole (--verify off keeps it)')
  const kernelTtl = Math.min(o.metadataTtl, MAX_KERNEL_TTL_S)

  let ended!: (status: number) => void
  const sessionEnded = new Promise<number>((resolve) => (ended = resolve))
  const { NativeMount: Native } = loadMountAddon()
  const native: NativeMount = new Native(control.dispatcher(() => native, ended))
  let socket: ControlSocket<NativePrefetch> | undefined
  let why = 'unmounted from outside'
  let serving = false
  // Installed before anything the process must clean up exists (the control socket's file, the
  // mount): a SIGTERM in the start's window took the default action and left them behind (a
  // supervisor stopping a pod that has just started, or a `tied` mount whose parent is gone).
  // A signal before the mount serves stops the start where it stands.
  const shutdown = installShutdown({
    onRequest: (sig) => {
      why = `signal ${sig}`
      log.info({ signal: sig }, 'unmounting')
      if (serving) native.unmount()
    },
    onForce: async () => {
      why = 'forced'
      if (serving) {
        await fusermountUnmount(o.mountpoint).catch(() => {})
        native.unmount()
      }
      await socket?.close()
    },
  })
  /** Ends a start that failed or was stopped by a signal: nothing of it is left behind. */
  const abandon = async (err: Error): Promise<never> => {
    await socket?.close()
    client.close()
    shutdown.dispose()
    throw err
  }
  try {
    socket = o.controlSocket ? await ControlSocket.listen(o.controlSocket, announceTarget(control, native), log) : undefined
  } catch (err) {
    return abandon(err as Error)
  }
  if (shutdown.requested)
    return abandon(new MountError(`stopped by a signal before ${o.mountpoint} was mounted; nothing was left behind`, ExitCode.interrupted))
  const stats = new StatsReporter(
    { counters, verifyMode: o.verify, o3: () => client.stats, native: () => native.stats(), control: () => socket?.counters },
    { mountpoint: o.mountpoint, location: o.location, statsFile },
    log,
  )
  const limits = backgroundLimits(o.maxBackground)
  const failure = await native.start({
    mountpoint: o.mountpoint,
    fsname: `o3mount:${o.location.replace(/[,\s\\]/g, '_')}`,
    allowOther: o.allowOther,
    debug: o.debugFuse,
    maxBackground: limits.max_background,
    congestionThreshold: limits.congestion_threshold,
    fileMode: o.fileMode,
    dirMode: o.dirMode,
    uid: process.getuid?.() ?? 0,
    gid: process.getgid?.() ?? 0,
    attrTimeoutSec: kernelTtl,
    negativeTimeoutSec: Math.min(kernelTtl, MAX_NEGATIVE_TTL_S),
    opTimeoutMs: o.opTimeoutMs,
    blockSize,
    cacheMem: o.cacheMem,
    maxConnections: o.maxConnections,
    workerThreads: 0,
    partSize: o.partSize,
    readaheadMax: o.readaheadMax,
    // The first request of a sequential run is small (two blocks), so the first byte comes quickly.
    readaheadInitial: 2 * blockSize,
    // The kernel's own readahead requests arrive out of order by up to its span: not seeks.
    seekTolerance: Math.max(16 << 20, 2 * o.kernelReadaheadKb * 1024),
    cacheDir: o.cacheDir ?? '',
    cacheDiskBytes: o.cacheDiskSize,
    // The blocks' keys are relative to the bucket: the disk tier must tell locations apart itself.
    cacheNamespace: [config.endpoint, client.scope.bucket, client.scope.prefix].join('\0'),
    fetch: {
      endpoint: config.endpoint,
      region: config.region,
      bucket: client.scope.bucket,
      credentials,
      caBundle: config.caBundle?.path ?? '',
      // The start's requests have measured it where this machine's clock is off.
      clockOffsetMs: client.clockOffsetMs,
      proxy: config.proxy?.toString() ?? '',
      // As the SDK client's (lib/o3/client.ts): a connection within 5 s, and no request silent for 30 s.
      connectTimeoutMs: 5_000,
      requestTimeoutMs: 30_000,
      maxAttempts: config.maxAttempts,
      warmConnections: Math.min(WARM_CONNECTIONS, o.maxConnections),
    },
  })
  if (failure) return abandon(startError(o, failure))
  serving = true
  // A signal while the session started: it was asked to stop, so it stops now it can.
  if (shutdown.requested) native.unmount()
  tuneKernel(o.mountpoint, { readAheadKb: o.kernelReadaheadKb, maxBackground: o.maxBackground }, log)
  stats.start(STATS_FILE_EVERY_MS, o.statsIntervalMs)
  const stopRefreshing = keepCredentialsFresh(
    credentials,
    () => client.credentials(),
    (c) => native.setCredentials(c),
    log,
  )
  log.info(
    {
      mountpoint: o.mountpoint,
      location: o.location,
      endpoint: config.endpoint,
      statsFile,
      cacheDir: o.cacheDir,
      controlSocket: o.controlSocket,
      credentialsFrom: config.sources.credentials,
      proxy: config.sources.proxy,
    },
    'mounted',
  )
  onReady({ pid: process.pid, mountpoint: o.mountpoint, location: o.location, statsFile })

  // A slip that kills the process must not leave a dead mountpoint (ENOTCONN) behind.
  const forgetUnmount = onInternalError(async () => {
    why = 'internal error'
    log.error({ mountpoint: o.mountpoint }, 'unmounting after an internal error')
    await fusermountUnmount(o.mountpoint)
  })
  // `fusermount -u` or `umount` from outside ends the session too: the native side says so.
  const status = await sessionEnded
  forgetUnmount()
  stopRefreshing()
  await socket?.close()
  stats.stop()
  client.close()
  // Only now: a SIGTERM just after `fusermount -u` (a supervisor's stop) would otherwise end the
  // process before its last stats were written.
  shutdown.dispose()
  // A status other than 0 is the FUSE loop failing (an unmount, from here or outside, ends it with 0).
  if (status !== 0) {
    log.error({ mountpoint: o.mountpoint, status, ...stats.snapshot().reads }, 'the FUSE session failed; unmounted')
    return ExitCode.mountFailed
  }
  log.info({ mountpoint: o.mountpoint, why, status, ...stats.snapshot().reads }, 'unmounted')
  return ExitCode.ok
}
