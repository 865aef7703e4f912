import { randomFillSync } from 'node:crypto'
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { ContentHasher } from '../lib/content/cid.js'
import { KUBO_HAMT_THRESHOLD, checkDirectoryLayout, directoryCid, type DirectoryFile } from '../lib/content/unixfs-directory.js'
import { referenceDirectoryCid, referenceEmptyDirectoryCid } from './support/reference-dag.js'
import { tempDir } from './fixtures/ckpt.js'

const MiB = 1 << 20

/** Every file below `root`, by `/`-separated path. */
function walk(root: string, rel = ''): string[] {
  return readdirSync(path.join(root, rel)).flatMap((name) => {
    const p = rel === '' ? name : `${rel}/${name}`
    return statSync(path.join(root, p)).isDirectory() ? walk(root, p) : [p]
  })
}

/** Our directory CID of a local tree: each file hashed as the writer hashes it, then the directory node built. */
async function ours(root: string): Promise<string> {
  const files: DirectoryFile[] = []
  for (const p of walk(root)) {
    const h = new ContentHasher()
    await h.update(readFileSync(path.join(root, p)))
    files.push({ path: p, cid: (await h.digest()).cid, dagSize: h.dagSize })
  }
  return directoryCid(files, (m) => new Error(m)).cid
}

/** What ipfs-unixfs-importer (js-ipfs's importer, aligned with kubo's) makes of the same tree. */
async function importers(root: string): Promise<string> {
  const entries = walk(root).map((p) => ({ path: `top/${p}`, content: readFileSync(path.join(root, p)) }))
  const blockstore = { put: async (cid: unknown) => cid }
  let top: string | undefined
  for await (const e of importer(entries, blockstore as never, {
    cidVersion: 1,
    rawLeaves: true,
    reduceSingleLeafToSelf: true,
    chunker: fixedSize({ chunkSize: MiB }),
    layout: balanced({ maxChildrenPerNode: 174 }),
  }))
    if (e.path === 'top') top = e.cid.toString()
  return top!
}

t.test('the reference builder gives the empty directory the CID every IPFS implementation gives it', async (t) => {
  t.equal(referenceEmptyDirectoryCid(), 'bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354')
})

t.test('a nested directory: our CID is the reference builder’s and the importer’s', async (t) => {
  const root = tempDir(t)
  const put = (p: string, bytes: Buffer) => {
    mkdirSync(path.dirname(path.join(root, p)), { recursive: true })
    writeFileSync(path.join(root, p), bytes)
  }
  // Names whose byte order differs from other orders (upper before lower, '-' and '.' before '/', UTF-8 last),
  // a hidden file, an empty file, one of exactly 1 MiB and one of several leaves.
  put('config.json', Buffer.from('{"hidden": 32}\n'))
  put('.metadata', randomFillSync(Buffer.alloc(777)))
  put('B.bin', Buffer.alloc(0))
  put('a', randomFillSync(Buffer.alloc(10)))
  put('a-b/x', randomFillSync(Buffer.alloc(3)))
  put('a.txt', randomFillSync(Buffer.alloc(MiB)))
  put('model/weights.safetensors', randomFillSync(Buffer.alloc(3 * MiB + 5)))
  put('model/deeper/rng.pt', randomFillSync(Buffer.alloc(100)))
  put('é.txt', Buffer.from('unicode'))
  const cid = await ours(root)
  t.match(cid, /^bafybei/, 'a dag-pb CIDv1')
  t.equal(cid, await referenceDirectoryCid(root), 'the hand-written builder agrees')
  t.equal(cid, await importers(root), 'the importer agrees')
})

t.test("kubo's HAMT threshold: a node that reaches 256 KiB is refused, one byte less is built", async (t) => {
  const file = (i: number, nameLength: number): DirectoryFile => ({
    path: String(i).padStart(nameLength, '0'),
    cid: 'bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku',
    dagSize: 0,
  })
  // Each link: tag, length, (Hash 2+36, Name 2+40, Tsize 2) = 84 bytes; the Data field 4.
  const n = Math.floor((KUBO_HAMT_THRESHOLD - 4) / 84)
  const fits = Array.from({ length: n }, (_, i) => file(i, 40))
  const built = directoryCid(fits, (m) => new Error(m))
  t.equal(built.dagSize, 4 + 84 * n, 'the node is as large as its links say')
  t.ok(built.dagSize < KUBO_HAMT_THRESHOLD)
  t.throws(() => directoryCid([...fits, file(n, 40)], (m) => new Error(m)), /kubo would shard it into a HAMT/)
  // The check before upload, from sizes alone, refuses the same and nothing smaller than a directory kubo keeps flat.
  t.doesNotThrow(() =>
    checkDirectoryLayout(
      fits.map((f) => ({ path: f.path, size: 0 })),
      (m) => new Error(m),
    ),
  )
  t.throws(
    () =>
      checkDirectoryLayout(
        [...fits, file(n, 40)].map((f) => ({ path: f.path, size: 0 })),
        (m) => new Error(m),
      ),
    /HAMT/,
  )
  t.throws(() => directoryCid([], (m) => new Error(m)), /at least one file/)
  t.throws(() => directoryCid([file(1, 2), { ...file(2, 2), path: '01/x' }], (m) => new Error(m)), /both a file and a directory/)
})
