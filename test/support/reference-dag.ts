/**
 * A second CID builder for tests, written from the specs (dag-pb, UnixFS, CIDv1, multibase
 * base32) with nothing but node:crypto, so that it shares no code with `ipfs-unixfs-importer`,
 * `@ipld/dag-pb`, `ipfs-unixfs` or `multiformats`: the CID that `ipfs add --cid-version=1
 * --raw-leaves --chunker=size-1048576` (balanced layout, 174 links) prints, and for a directory
 * what `ipfs add -r --hidden` with the same flags prints. It streams: memory is one leaf plus 174
 * links per level, whatever the size.
 */
import { createHash } from 'node:crypto'
import { createReadStream, readdirSync, statSync } from 'node:fs'
import path from 'node:path'

const LEAF = 1 << 20
const WIDTH = 174
const RAW = 0x55
const DAG_PB = 0x70

function varint(n: number): Buffer {
  const out: number[] = []
  for (; n >= 0x80; n = Math.floor(n / 0x80)) out.push(n % 0x80 | 0x80)
  out.push(n)
  return Buffer.from(out)
}

/** A protobuf length-delimited field. */
const bytesField = (tag: number, b: Buffer) => Buffer.concat([varint((tag << 3) | 2), varint(b.length), b])
const varintField = (tag: number, n: number) => Buffer.concat([varint(tag << 3), varint(n)])

/** CIDv1 bytes: version, codec, sha2-256 multihash. */
const cidBytes = (codec: number, block: Buffer) =>
  Buffer.concat([varint(1), varint(codec), Buffer.from([0x12, 0x20]), createHash('sha256').update(block).digest()])

/** Multibase `b`: RFC 4648 base32, lower case, no padding. */
function base32(bytes: Buffer): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz234567'
  let out = 'b'
  let bits = 0
  let acc = 0
  for (const byte of bytes) {
    acc = (acc << 8) | byte
    bits += 8
    for (; bits >= 5; bits -= 5) out += alphabet[(acc >> (bits - 5)) & 31]
    acc &= (1 << bits) - 1
  }
  return bits > 0 ? out + alphabet[(acc << (5 - bits)) & 31] : out
}

interface Node {
  cid: Buffer
  fileSize: number
  tsize: number
}

/** A UnixFS file node over `children`: PBNode { Links (PBLink { Hash, Name "", Tsize })..., Data }. */
function parent(children: Node[]): Node {
  // UnixFS Data { Type = File (2), filesize, blocksizes (proto2, not packed) }.
  const fileSize = children.reduce((a, c) => a + c.fileSize, 0)
  const unixfs = Buffer.concat([varintField(1, 2), varintField(3, fileSize), ...children.map((c) => varintField(4, c.fileSize))])
  const links = children.map((c) => bytesField(2, Buffer.concat([bytesField(1, c.cid), bytesField(2, Buffer.alloc(0)), varintField(3, c.tsize)])))
  const block = Buffer.concat([...links, bytesField(1, unixfs)])
  return { cid: cidBytes(DAG_PB, block), fileSize, tsize: block.length + children.reduce((a, c) => a + c.tsize, 0) }
}

/** The CID (base32 text) of the content `chunks` yield, cut however. */
export async function referenceCid(chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>): Promise<string> {
  return base32((await referenceFile(chunks)).cid)
}

/** The root of a file's DAG: its CID bytes and its cumulative size (what a directory's link to it records). */
async function referenceFile(chunks: AsyncIterable<Uint8Array> | Iterable<Uint8Array>): Promise<{ cid: Buffer; tsize: number }> {
  // levels[0] holds leaves; a level that fills up becomes one node of the level above.
  const levels: Node[][] = [[]]
  const push = (level: number, node: Node) => {
    ;(levels[level] ??= []).push(node)
    if (levels[level]!.length === WIDTH) push(level + 1, parent(levels[level]!.splice(0)))
  }
  const leaf = Buffer.allocUnsafe(LEAF)
  let fill = 0
  let total = 0
  const emit = () => push(0, { cid: cidBytes(RAW, leaf.subarray(0, fill)), fileSize: fill, tsize: fill })
  for await (const chunk of chunks) {
    for (let off = 0; off < chunk.length; ) {
      const n = Math.min(LEAF - fill, chunk.length - off)
      leaf.set(chunk.subarray(off, off + n), fill)
      fill += n
      off += n
      total += n
      if (fill === LEAF) {
        emit()
        fill = 0
      }
    }
  }
  if (fill > 0 || total === 0) emit()
  // Partial groups close bottom-up; the root is the only node left on the top level.
  for (let l = 0; ; l++) {
    const above = levels.slice(l + 1).some((lv) => lv.length > 0)
    if (!above && levels[l]!.length === 1) return levels[l]![0]!
    if (levels[l]!.length > 0) push(l + 1, parent(levels[l]!.splice(0)))
  }
}

/**
 * A directory node: PBNode { Links (PBLink { Hash, Name, Tsize }) sorted by name bytes, Data =
 * UnixFS { Type = Directory (1) } }, nothing else (kubo adds no mode or mtime unless asked to).
 */
function directoryNode(children: { name: string; cid: Buffer; tsize: number }[]): { cid: Buffer; tsize: number } {
  const sorted = [...children].sort((a, b) => Buffer.compare(Buffer.from(a.name), Buffer.from(b.name)))
  const links = sorted.map((c) => bytesField(2, Buffer.concat([bytesField(1, c.cid), bytesField(2, Buffer.from(c.name)), varintField(3, c.tsize)])))
  const block = Buffer.concat([...links, bytesField(1, varintField(1, 1))])
  return { cid: cidBytes(DAG_PB, block), tsize: block.length + sorted.reduce((a, c) => a + c.tsize, 0) }
}

async function referenceTree(dir: string): Promise<{ cid: Buffer; tsize: number }> {
  const children: { name: string; cid: Buffer; tsize: number }[] = []
  for (const name of readdirSync(dir)) {
    const full = path.join(dir, name)
    const node = statSync(full).isDirectory() ? await referenceTree(full) : await referenceFile(createReadStream(full) as AsyncIterable<Buffer>)
    children.push({ name, ...node })
  }
  return directoryNode(children)
}

/** The CID (base32 text) of a local directory (no HAMT: for directories under kubo's sharding threshold), hidden files included. */
export async function referenceDirectoryCid(dir: string): Promise<string> {
  return base32((await referenceTree(dir)).cid)
}

/** The empty directory's CID, whose value every IPFS implementation agrees on: a check of this builder itself. */
export function referenceEmptyDirectoryCid(): string {
  return base32(directoryNode([]).cid)
}
