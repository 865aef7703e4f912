import { ExitCode } from '../lib/cli/exit-codes.js'
import type { O3Flags } from '../lib/o3/config.js'
import type { MemoryLimit } from './memory-limit.js'
import { MountError } from './mount-error.js'
import type { VerifyMode } from './verify/manifest-index.js'

const MiB = 1 << 20

/** Everything that shapes one mount, after the command line has been parsed and checked. */
export interface MountOptions extends O3Flags {
  mountpoint: string
  /** `bucket[/prefix]`. */
  location: string
  fileMode: number
  dirMode: number
  allowOther: boolean
  /** Seconds; Infinity for `indefinite`. */
  metadataTtl: number
  blockSize: number
  cacheMem: number
  cacheDir?: string
  cacheDiskSize: number
  /** Cap of one file's sequential readahead window. */
  readaheadMax: number
  /** Size of one ranged GET that readahead issues. */
  partSize: number
  maxConnections: number
  /** Longest a read or lookup may take before it fails with EIO. */
  opTimeoutMs: number
  /** Kernel readahead of the mount (bdi read_ahead_kb). */
  kernelReadaheadKb: number
  maxBackground: number
  statsFile?: string
  statsIntervalMs: number
  logFile?: string
  debugFuse: boolean
  /** Reads checked against the tree's dataset manifests: not at all, for the files they name, or every file (the rest refused). */
  verify: VerifyMode
  /** When not empty, a manifest must be signed by one of these 0x addresses. */
  trustedSigners: string[]
  /** A Unix socket on which loaders announce the files they will read, in order (fs-driver/control-socket.ts). */
  controlSocket?: string
}

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1024,
  kib: 1024,
  m: MiB,
  mb: MiB,
  mib: MiB,
  g: 1 << 30,
  gb: 1 << 30,
  gib: 1 << 30,
  t: 2 ** 40,
  tb: 2 ** 40,
  tib: 2 ** 40,
}

function bad(what: string, value: string, expected: string): never {
  throw new MountError(`${what} ${JSON.stringify(value)} is not valid: expected ${expected}`, ExitCode.badOption)
}

/** `512M`, `1GiB`, `65536` -> bytes (binary units). */
export function parseSize(value: string, what: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(value)
  const unit = m ? UNITS[m[2]!.toLowerCase()] : undefined
  if (!m || unit === undefined) bad(what, value, 'a size such as 65536, 512M or 2G')
  return Math.floor(Number(m[1]) * unit)
}

/** `60`, `60s`, `5m`, `250ms`, `indefinite` -> seconds. */
export function parseDuration(value: string, what: string): number {
  if (/^(indefinite|infinite|forever)$/i.test(value.trim())) return Infinity
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|)\s*$/i.exec(value)
  if (!m) bad(what, value, 'a duration such as 60, 60s, 5m or indefinite')
  const scale = { ms: 0.001, s: 1, '': 1, m: 60, h: 3600 }[m[2]!.toLowerCase() as 'ms' | 's' | '' | 'm' | 'h']
  return Number(m[1]) * scale
}

export function parseMode(value: string, what: string): number {
  if (!/^0?[0-7]{3}$/.test(value)) bad(what, value, 'an octal mode such as 0444')
  return parseInt(value, 8)
}

export function parseCount(value: string, what: string, min: number, max: number): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n < min || n > max) bad(what, value, `an integer from ${min} to ${max}`)
  return n
}

/** Cross-option checks that single parsers cannot make, and `--cache-mem` against `memory`. */
export function checkOptions(o: MountOptions, memory: MemoryLimit): void {
  const pow2 = (n: number) => n > 0 && (n & (n - 1)) === 0
  if (!pow2(o.blockSize) || o.blockSize < 64 * 1024 || o.blockSize > 64 * MiB) {
    throw new MountError(`--block-size ${o.blockSize} must be a power of two from 64K to 64M`, ExitCode.badOption)
  }
  if (o.partSize % o.blockSize !== 0) throw new MountError(`--part-size must be a multiple of --block-size (${o.blockSize})`, ExitCode.badOption)
  // Verified blocks hold whole 1 MiB leaves (fs-driver/mount.ts).
  const blockSize = o.verify === 'off' ? o.blockSize : Math.max(o.blockSize, MiB)
  if (o.cacheMem < 8 * blockSize) throw new MountError(`--cache-mem must hold at least 8 blocks (${(8 * blockSize) / MiB} MiB)`, ExitCode.badOption)
  if (o.cacheMem > memory.bytes) {
    const mib = (n: number) => `${Math.floor(n / MiB)} MiB`
    throw new MountError(
      `--cache-mem ${mib(o.cacheMem)} is more than ${memory.of} (${mib(memory.bytes)}); give the cache less, leaving room for what runs beside the mount`,
      ExitCode.badOption,
    )
  }
  if (o.cacheDiskSize > 0 && !o.cacheDir) throw new MountError('--cache-disk-size needs --cache-dir', ExitCode.badOption)
}
