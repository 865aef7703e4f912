import { createHash } from 'node:crypto'
import { encode, prepare, type PBLink } from '@ipld/dag-pb'
import { UnixFS } from 'ipfs-unixfs'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { create as createDigest } from 'multiformats/hashes/digest'
import { sha256 } from 'multiformats/hashes/sha2'
import { CID_BLOCK_SIZE } from './cid.js'

/**
 * kubo's HAMT threshold (`Import.UnixFSHAMTDirectorySizeThreshold`, 256 KiB in every release and
 * profile): a directory whose node would pass it becomes a HAMT shard. Older boxo compares its
 * estimate with `>=`, newer with `>`; the default estimate counts names and CIDs only, the
 * `unixfs-v1-2025` profile the whole serialized node. The node's real size bounds both estimates,
 * so a node smaller than this is a plain directory under every one of them.
 */
export const KUBO_HAMT_THRESHOLD = 256 * 1024

/** A file of a directory, by its `/`-separated path below the directory's root. */
export interface DirectoryFile {
  path: string
  cid: string
  /** The cumulative size of the file's DAG: its link's Tsize (ContentHasher.dagSize). */
  dagSize: number
}

export interface DirectoryDigest {
  /** CIDv1 base32 of the root directory node, as `ipfs add -r --cid-version=1 …` prints it. */
  cid: string
  /** Hex sha256 of the root node's block: the digest inside the CID. */
  sha256: string
  /** The cumulative size of the whole DAG. */
  dagSize: number
}

/** UnixFS Data of a plain directory: Type = Directory and nothing else (no mode, no mtime), as kubo writes it. */
const DIRECTORY_DATA = new UnixFS({ type: 'directory' }).marshal()

interface Tree {
  files: Map<string, { cid: CID; dagSize: number }>
  dirs: Map<string, Tree>
}

function buildTree(files: readonly DirectoryFile[], refuse: (message: string) => Error): Tree {
  const root: Tree = { files: new Map(), dirs: new Map() }
  for (const f of files) {
    const parts = f.path.split('/')
    const base = parts.pop()!
    let dir = root
    for (const p of parts) {
      if (dir.files.has(p)) throw refuse(`${f.path}: ${p} is both a file and a directory`)
      let sub = dir.dirs.get(p)
      if (!sub) dir.dirs.set(p, (sub = { files: new Map(), dirs: new Map() }))
      dir = sub
    }
    if (dir.files.has(base) || dir.dirs.has(base)) throw refuse(`${f.path} is listed twice`)
    dir.files.set(base, { cid: CID.parse(f.cid), dagSize: f.dagSize })
  }
  return root
}

/**
 * Encodes `tree` bottom-up as kubo's `ipfs add -r` does: one dag-pb node per directory, links
 * sorted by name bytes (dag-pb's canonical order), each with the child's cumulative size as
 * Tsize. `refuse` builds the error for a node that kubo would shard.
 */
function encodeTree(tree: Tree, where: string, refuse: (message: string) => Error): { cid: CID; digest: Buffer; dagSize: number } {
  const links: PBLink[] = []
  for (const [name, f] of tree.files) links.push({ Name: name, Hash: f.cid, Tsize: f.dagSize })
  for (const [name, sub] of tree.dirs) {
    const child = encodeTree(sub, where === '' ? name : `${where}/${name}`, refuse)
    links.push({ Name: name, Hash: child.cid, Tsize: child.dagSize })
  }
  const block = encode(prepare({ Data: DIRECTORY_DATA, Links: links }))
  if (block.length >= KUBO_HAMT_THRESHOLD)
    throw refuse(
      `directory ${where === '' ? '(the top)' : where} has too many entries for one UnixFS node (${links.length}, ${block.length} bytes): kubo would shard it into a HAMT, which o3ckpt does not build; split it into subdirectories`,
    )
  const digest = createHash('sha256').update(block).digest()
  return {
    cid: CID.createV1(0x70, createDigest(sha256.code, digest)),
    digest,
    dagSize: block.length + links.reduce((n, l) => n + (l.Tsize ?? 0), 0),
  }
}

/**
 * The UnixFS directory CID of `files` (and the directories their paths imply), as
 * `ipfs add -r --cid-version=1 --raw-leaves --chunker=size-1048576` prints it for a directory
 * holding exactly those files. `refuse` builds the error for input it cannot take: a path listed
 * twice or both file and directory, or a directory kubo would shard (see KUBO_HAMT_THRESHOLD).
 */
export function directoryCid(files: readonly DirectoryFile[], refuse: (message: string) => Error): DirectoryDigest {
  if (files.length === 0) throw refuse('a directory checkpoint needs at least one file')
  const root = encodeTree(buildTree(files, refuse), '', refuse)
  return { cid: root.cid.toString(), sha256: root.digest.toString('hex'), dagSize: root.dagSize }
}

/** A CID as long as any of ours (CIDv1, sha2-256: 36 bytes), to size nodes before the files are hashed. */
const PLACEHOLDER_CID = CID.createV1(raw.code, createDigest(sha256.code, new Uint8Array(32))).toString()

/**
 * At least the DAG size of a file of `size` bytes: one raw leaf up to 1 MiB, else its leaves plus
 * the balanced tree's nodes above them, which hold under 1 KiB of links and sizes per 174 leaves,
 * far less than the file again.
 */
function dagSizeBound(size: number): number {
  return size <= CID_BLOCK_SIZE ? size : 2 * size + 1024
}

/**
 * Throws `refuse`'s error, before anything is hashed or uploaded, for a directory of files with
 * these paths and sizes that `directoryCid` would refuse. Nodes are sized with placeholder CIDs
 * (all of ours have one length) and Tsizes bounded from above, so what passes here passes there.
 */
export function checkDirectoryLayout(files: readonly { path: string; size: number }[], refuse: (message: string) => Error): void {
  directoryCid(
    files.map((f) => ({ path: f.path, cid: PLACEHOLDER_CID, dagSize: dagSizeBound(f.size) })),
    refuse,
  )
}
