/**
 * Writes an ImageFolder tree (a directory per class of JPEG and PNG files) as WebDataset tar shards:
 * `shard-000000.tar`, ... each holding `<key>.png|jpg` + `<key>.cls` (the class index as text, the
 * index of the class directory in sorted order, as the ImageFolder loader and torchvision number
 * them). Samples are shuffled (seeded) across shards by default, since a loader shuffles only
 * within a bounded window of consecutive samples; a shard is closed before it would pass
 * `shardSize` bytes. Plain ustar members with short names: every tar reader takes them.
 */
import { mkdir, open, readdir, readFile } from 'node:fs/promises'
import { extname, join, relative } from 'node:path'
import { CliError, ExitCode } from '../lib/cli/exit-codes.js'

const BLOCK = 512

export interface ShardOut {
  write(chunk: Buffer): Promise<void>
  close(): Promise<void>
}

/** Where shards go: a local directory, or anything else that takes a named byte stream. */
export interface ShardSink {
  open(name: string): Promise<ShardOut>
}

export interface ShardWriterOptions {
  /** Shards are closed before they would pass this many bytes (a shard holds at least one sample). */
  shardSize: number
  /** Shuffle samples across shards with this seed (default 0); `false` keeps the tree's order. */
  shuffle?: number | false
  /** Shard names: `<prefix>-000000.tar`, ... Default `shard`. */
  prefix?: string
}

export interface WrittenShards {
  classes: string[]
  shards: { name: string; samples: number; bytes: number }[]
  /** Every sample in written order: its key, source file (relative to the tree) and label. */
  samples: { key: string; source: string; label: number }[]
}

const IMAGE = new Set(['.png', '.jpg', '.jpeg'])

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = []
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name)
    if (e.isDirectory()) out.push(...(await filesUnder(p)))
    else if (e.isFile() && IMAGE.has(extname(e.name).toLowerCase())) out.push(p)
  }
  return out
}

const byCodeUnit = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0)

/** The tree's images and labels in the ImageFolder loader's order (classes sorted, then paths). */
export async function listImageTree(root: string): Promise<{ classes: string[]; files: { path: string; label: number }[] }> {
  const classes = (await readdir(root, { withFileTypes: true }))
    .filter((e) => e.isDirectory())
    .map((e) => e.name)
    .sort(byCodeUnit)
  const files: { path: string; label: number }[] = []
  for (const [label, c] of classes.entries()) {
    for (const path of (await filesUnder(join(root, c))).sort(byCodeUnit)) files.push({ path, label })
  }
  if (files.length === 0) throw new CliError(`${root}: no JPEG or PNG images in class directories; give a directory with a folder per class`, ExitCode.usage)
  return { classes, files }
}

/** A ustar header for a regular file; names here are short keys, never over the 100-byte field. */
export function tarHeader(name: string, size: number, mtime = 0): Buffer {
  const h = Buffer.alloc(BLOCK)
  if (Buffer.byteLength(name) > 100) throw new Error(`tar member name too long: ${name}`)
  const octal = (v: number, width: number, at: number) => h.write(v.toString(8).padStart(width - 1, '0') + '\0', at, 'ascii')
  h.write(name, 0, 'utf8')
  octal(0o644, 8, 100)
  octal(0, 8, 108)
  octal(0, 8, 116)
  octal(size, 12, 124)
  octal(mtime, 12, 136)
  h.write('0', 156, 'ascii')
  h.write('ustar\u000000', 257, 'ascii')
  h.fill(' ', 148, 156)
  let sum = 0
  for (const b of h) sum += b
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'ascii')
  return h
}

/** The member: header, data, zero padding to the block. */
function tarMember(name: string, data: Buffer): Buffer {
  const pad = (BLOCK - (data.length % BLOCK)) % BLOCK
  return Buffer.concat([tarHeader(name, data.length), data, Buffer.alloc(pad)])
}

/** Fisher-Yates with a small seeded generator (mulberry32): the same shards for the same seed. */
function shuffled<T>(items: T[], seed: number): T[] {
  const out = items.slice()
  let s = seed >>> 0
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0
    let t = s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1))
    ;[out[i], out[j]] = [out[j]!, out[i]!]
  }
  return out
}

export async function writeShards(root: string, sink: ShardSink, opts: ShardWriterOptions): Promise<WrittenShards> {
  if (!(opts.shardSize > 0)) throw new Error('shardSize must be a positive number of bytes')
  const { classes, files } = await listImageTree(root)
  const order = opts.shuffle === false ? files : shuffled(files, opts.shuffle ?? 0)
  const keyWidth = Math.max(6, String(order.length - 1).length)
  const result: WrittenShards = { classes, shards: [], samples: [] }
  let out: ShardOut | undefined
  let current = { name: '', samples: 0, bytes: 0 }
  const close = async () => {
    if (!out) return
    await out.write(Buffer.alloc(2 * BLOCK)) // end-of-archive marker
    await out.close()
    current.bytes += 2 * BLOCK
    result.shards.push(current)
    out = undefined
  }
  for (const [i, f] of order.entries()) {
    const key = String(i).padStart(keyWidth, '0')
    const ext = extname(f.path).toLowerCase() === '.png' ? 'png' : 'jpg'
    const sample = Buffer.concat([tarMember(`${key}.${ext}`, await readFile(f.path)), tarMember(`${key}.cls`, Buffer.from(String(f.label)))])
    if (out && current.bytes + sample.length + 2 * BLOCK > opts.shardSize) await close()
    if (!out) {
      current = { name: `${opts.prefix ?? 'shard'}-${String(result.shards.length).padStart(6, '0')}.tar`, samples: 0, bytes: 0 }
      out = await sink.open(current.name)
    }
    await out.write(sample)
    current.samples += 1
    current.bytes += sample.length
    result.samples.push({ key, source: relative(root, f.path), label: f.label })
  }
  await close()
  return result
}

/** Shards written as files in `dir` (created if needed). */
export function directorySink(dir: string): ShardSink {
  return {
    async open(name) {
      await mkdir(dir, { recursive: true })
      const fh = await open(join(dir, name), 'w')
      return {
        write: async (chunk) => {
          await fh.write(chunk)
        },
        close: () => fh.close(),
      }
    },
  }
}
