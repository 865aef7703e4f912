#!/usr/bin/env -S node --max-semi-space-size=1 --v8-pool-size=1
/**
 * `o3mount <mountpoint> <bucket[/prefix]> [options]` mounts an O3 bucket read-only;
 * `o3mount --unmount <mountpoint>` unmounts. Credentials come from the environment
 * (O3_ACCESS_KEY_ID / O3_SECRET_ACCESS_KEY, O3_CREDENTIALS_FILE, or the AWS chain), never from argv.
 */
import { resolve } from 'node:path'
import { Option, type Command } from 'commander'
import { addO3Flags, pickO3Flags } from '../lib/cli/o3-flags.js'
import { newCommand, oneLine, runCli } from '../lib/cli/run-cli.js'
import { createLogger } from '../lib/log.js'
import type { O3Flags } from '../lib/o3/config.js'
import { ExitCode } from '../lib/cli/exit-codes.js'
import { MountError } from './mount-error.js'
import { findMount, fusermountUnmount } from './mount-table.js'
import { serveMount } from './mount.js'
import { LAUNCHED_AS, launchMount } from './launch.js'
import { memoryLimit } from './memory-limit.js'
import { checkOptions, parseCount, parseDuration, parseMode, parseSize, type MountOptions } from './options.js'
import { VERIFY_MODES, type VerifyMode } from './verify/manifest-index.js'
import { parseTrustedSigners, trustSignerFlag } from '../lib/content/trusted-signers.js'
import { defaultLogFile, defaultStatsFile, openPrivateFile } from './paths.js'

interface RawOptions extends O3Flags {
  unmount?: string
  fileMode: string
  dirMode: string
  allowOther?: boolean
  metadataTtl: string
  blockSize: string
  cacheMem: string
  cacheDir?: string
  cacheDiskSize?: string
  readaheadMax: string
  partSize: string
  maxConnections: string
  opTimeout: string
  kernelReadahead: string
  maxBackground: string
  statsFile?: string
  statsInterval: string
  logFile?: string
  daemon?: boolean
  debugFuse?: boolean
  verify: VerifyMode
  trustSigner?: string[]
  controlSocket?: string
}

function program(): Command {
  const cmd = newCommand('o3mount')
    .description('Mount an O3 bucket (or the part under a prefix) read-only with FUSE.')
    .argument('[mountpoint]', 'an empty directory')
    .argument('[location]', 'bucket[/prefix]')
    .option('--unmount <mountpoint>', 'unmount a mount made by o3mount and exit')
  return addO3Flags(cmd)
    .option('--file-mode <mode>', 'permission bits of files', '0444')
    .option('--dir-mode <mode>', 'permission bits of directories', '0555')
    .option('--allow-other', 'let other users see the mount (needs user_allow_other in /etc/fuse.conf unless root)')
    .option('--metadata-ttl <duration>', "how long stat and listings are cached ('indefinite' for immutable data)", '60s')
    .option('--block-size <size>', 'cache block size', '1M')
    .option('--cache-mem <size>', 'memory for cached and in-flight blocks, readahead included', '512M')
    .option('--cache-dir <dir>', 'persistent block cache on disk (created mode 0700)')
    .option('--cache-disk-size <size>', 'size limit of the disk cache (default 10G)')
    .option('--readahead-max <size>', "cap of one file's sequential readahead window", '256M')
    .option('--part-size <size>', 'size of each ranged GET of readahead', '16M')
    .option('--max-connections <n>', 'parallel requests to the server', '32')
    .option('--op-timeout <duration>', 'a read or lookup still unanswered after this fails with EIO', '90s')
    .option('--kernel-readahead <size>', "kernel readahead of the mount (its bdi's read_ahead_kb)", '32M')
    .option('--max-background <n>', 'FUSE requests the kernel keeps in flight in the background', '64')
    .option('--stats-file <path>', 'JSON stats, rewritten every 2 s (default under /run/o3mount or $XDG_RUNTIME_DIR)')
    .option('--stats-interval <duration>', 'period of the stats log line', '60s')
    .option('--log-file <path>', 'log here instead of stderr (the default for --daemon)')
    .option('--daemon', 'detach once mounted; prints the PID and the log path')
    .addOption(
      new Option(
        '--verify <mode>',
        'check every block read against the dataset manifest (.o3-manifest.json): off, if-present (files a manifest names), required (refuse other files)',
      )
        .choices(VERIFY_MODES)
        .default('if-present'),
    )
    .option(
      '--control-socket <path>',
      'a Unix socket (made mode 0600) on which loaders announce the files they will read, in order, to have them fetched first',
    )
    .option(...trustSignerFlag('dataset manifests', 'any manifest, signed or not'))
    .addOption(new Option('--debug-fuse', 'libfuse debug output').hideHelp())
}

function toMountOptions(mountpoint: string, location: string, r: RawOptions): MountOptions {
  const o: MountOptions = {
    mountpoint: resolve(mountpoint),
    location,
    ...pickO3Flags(r),
    fileMode: parseMode(r.fileMode, '--file-mode'),
    dirMode: parseMode(r.dirMode, '--dir-mode'),
    allowOther: !!r.allowOther,
    metadataTtl: parseDuration(r.metadataTtl, '--metadata-ttl'),
    blockSize: parseSize(r.blockSize, '--block-size'),
    cacheMem: parseSize(r.cacheMem, '--cache-mem'),
    cacheDir: r.cacheDir && resolve(r.cacheDir),
    cacheDiskSize: r.cacheDiskSize ? parseSize(r.cacheDiskSize, '--cache-disk-size') : r.cacheDir ? 10 * 2 ** 30 : 0,
    readaheadMax: parseSize(r.readaheadMax, '--readahead-max'),
    partSize: parseSize(r.partSize, '--part-size'),
    maxConnections: parseCount(r.maxConnections, '--max-connections', 1, 1024),
    opTimeoutMs: parseDuration(r.opTimeout, '--op-timeout') * 1000,
    kernelReadaheadKb: Math.floor(parseSize(r.kernelReadahead, '--kernel-readahead') / 1024),
    maxBackground: parseCount(r.maxBackground, '--max-background', 1, 65535),
    statsFile: r.statsFile && resolve(r.statsFile),
    statsIntervalMs: parseDuration(r.statsInterval, '--stats-interval') * 1000,
    logFile: r.logFile && resolve(r.logFile),
    debugFuse: !!r.debugFuse,
    verify: r.verify,
    controlSocket: r.controlSocket && resolve(r.controlSocket),
    trustedSigners: parseTrustedSigners(r.trustSigner, process.env, (message) => new MountError(message, ExitCode.badOption)),
  }
  if (!Number.isFinite(o.opTimeoutMs) || o.opTimeoutMs < 1000) throw new MountError('--op-timeout must be a finite duration of at least 1s', ExitCode.badOption)
  if (!Number.isFinite(o.statsIntervalMs) || o.statsIntervalMs < 1000)
    throw new MountError('--stats-interval must be a finite duration of at least 1s', ExitCode.badOption)
  checkOptions(o, memoryLimit())
  return o
}

async function unmount(mountpoint: string): Promise<number> {
  const mp = resolve(mountpoint)
  if (!findMount(mp)) throw new MountError(`${mp} is not mounted`, ExitCode.notMounted)
  try {
    await fusermountUnmount(mp, false)
  } catch (err) {
    const msg = (err as Error).message
    if (!/busy/i.test(msg)) throw new MountError(`cannot unmount ${mp}: ${msg.split('\n').find((l) => l.includes('fusermount')) ?? msg}`, ExitCode.mountFailed)
    // Files are still open: detach now; the mount goes away when they are closed.
    await fusermountUnmount(mp, true)
    console.error(`o3mount: ${mp} was busy; detached it (it goes away once open files are closed)`)
  }
  return ExitCode.ok
}

/** Starts a detached copy of this command and waits until it has mounted or failed. */
async function daemonize(o: MountOptions, argv: string[]): Promise<number> {
  const logFile = o.logFile ?? defaultLogFile(o.mountpoint)
  const { info } = await launchMount(
    argv.filter((a) => a !== '--daemon'),
    { logFile, detached: true },
  )
  console.log(`o3mount: mounted ${info.location} at ${info.mountpoint}; pid ${info.pid}; log ${logFile}; stats ${info.statsFile}`)
  return ExitCode.ok
}

async function main(): Promise<number> {
  const cmd = program()
  cmd.parse()
  const r = cmd.opts<RawOptions>()
  if (r.unmount) return unmount(r.unmount)
  const [mountpoint, location] = cmd.args
  if (!mountpoint || !location)
    throw new MountError('usage: o3mount <mountpoint> <bucket[/prefix]> [options], or o3mount --unmount <mountpoint>', ExitCode.badOption)
  const o = toMountOptions(mountpoint, location, r)
  if (r.daemon) return daemonize(o, process.argv.slice(2))
  const launchedAs = process.env[LAUNCHED_AS]
  const isChild = launchedAs !== undefined
  // A mount tied to its parent's run must not outlive it: the IPC channel closes when the parent dies.
  if (launchedAs === 'tied') process.once('disconnect', () => process.kill(process.pid, 'SIGTERM'))
  const log = createLogger('o3mount', o.logFile === undefined ? undefined : openPrivateFile(o.logFile, 'append'))
  try {
    return await serveMount(o, o.statsFile ?? defaultStatsFile(o.mountpoint), log, (info) => {
      if (isChild) process.send?.({ ready: info })
    })
  } catch (err) {
    const code = (err as { exitCode?: unknown }).exitCode
    if (isChild) process.send?.({ error: oneLine(err), exitCode: typeof code === 'number' ? code : ExitCode.internal })
    throw err
  }
}

runCli('o3mount', main, { usageExit: ExitCode.badOption })
