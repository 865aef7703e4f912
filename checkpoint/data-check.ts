import { constants } from 'node:fs'
import { open, realpath, type FileHandle } from 'node:fs/promises'
import path from 'node:path'
import { digestContent, normalizeCid, type ContentDigest } from '../lib/content/cid.js'
import { MAX_DATASET_MANIFEST_BYTES, parseDatasetManifest } from '../lib/content/dataset-manifest.js'
import type { DataLineage } from '../lib/content/lineage.js'
import { O3Client, type O3Flags } from '../lib/o3/index.js'
import { collectUpTo } from '../lib/collect-up-to.js'

/** Files of the data at a location (a local directory or `o3://bucket/prefix`) by path below it. */
interface DataSource {
  digest(relPath: string): Promise<ContentDigest>
  /** The dataset manifest there, refused unread when it is larger than one may be. */
  manifest(relPath: string): Promise<Buffer>
  close(): void
}

/**
 * The file at `rel` below `root`, opened only if it is a regular file whose real path is inside
 * root: a recorded path is untrusted, and a symlink out, a device or a FIFO (which never ends) is
 * not data the checkpoint could have been trained on.
 */
async function openInside(root: string, rel: string): Promise<FileHandle> {
  const [realRoot, real] = await Promise.all([realpath(root), realpath(path.join(root, ...rel.split('/')))])
  if (!real.startsWith(realRoot + path.sep)) throw new Error(`it leads outside ${root}`)
  // O_NONBLOCK: a FIFO must not wait for a writer before fstat refuses it.
  const fh = await open(real, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
  if ((await fh.stat()).isFile()) return fh
  await fh.close()
  throw new Error('not a regular file')
}

/**
 * The refusal of a dataset manifest of `size` bytes, larger than one may be: what sits at the
 * location is not trusted, and reading one of any size whole would run out of memory.
 */
const tooLarge = (size: number) => new Error(`${size} bytes, more than the ${MAX_DATASET_MANIFEST_BYTES} a dataset manifest may have`)

/** All of a dataset manifest's chunks, refused as soon as they pass the cap: a local file may grow after it was sized. */
const readCapped = (chunks: AsyncIterable<Buffer>) => collectUpTo(chunks, MAX_DATASET_MANIFEST_BYTES, tooLarge)

function sourceFor(location: string, flags: O3Flags): DataSource {
  if (!/^(o3|s3):\/\//.test(location)) {
    return {
      digest: async (p) => digestContent((await openInside(location, p)).createReadStream() as AsyncIterable<Buffer>),
      manifest: async (p) => {
        const fh = await openInside(location, p)
        try {
          const { size } = await fh.stat()
          if (size > MAX_DATASET_MANIFEST_BYTES) throw tooLarge(size)
          return await readCapped(fh.createReadStream({ autoClose: false }))
        } finally {
          await fh.close()
        }
      },
      close: () => {},
    }
  }
  const client = O3Client.open(location, flags)
  // A range request on an empty object is refused: an empty one needs no GET.
  const empty = async (p: string) => (await client.head(p)).size === 0
  return {
    digest: async (p) => digestContent((await empty(p)) ? new Uint8Array(0) : client.iterateRange(p)),
    manifest: async (p) => {
      const { size, etag } = await client.head(p)
      if (size > MAX_DATASET_MANIFEST_BYTES) throw tooLarge(size)
      // Pinned to the version HEAD sized: a larger one written since is refused, not read.
      return size === 0 ? Buffer.alloc(0) : readCapped(client.iterateRange(p, { pin: { etag } }))
    },
    close: () => client.close(),
  }
}

/**
 * Checks that the data a checkpoint names (`lineage`) is the data at `location` now: the
 * manifest's CID and every file it names, and each recorded file's CID. Returns one line per
 * difference; none when it matches.
 */
export async function checkDataLineage(lineage: DataLineage, location: string, flags: O3Flags): Promise<string[]> {
  const src = sourceFor(location, flags)
  const problems: string[] = []
  const failed = (p: string, err: unknown) => problems.push(`${p}: cannot be read (${(err as Error).message.split('\n')[0]})`)
  const compare = async (p: string, cid: string, recordedBy: string) => {
    try {
      const got = await src.digest(p)
      if (got.cid !== normalizeCid(cid)) problems.push(`${p}: CID ${got.cid}, ${recordedBy} recorded ${cid}`)
    } catch (err) {
      failed(p, err)
    }
  }
  try {
    if (lineage.manifest) {
      const { path: mp, cid } = lineage.manifest
      try {
        const bytes = await src.manifest(mp)
        const got = (await digestContent(bytes)).cid
        if (got !== normalizeCid(cid)) problems.push(`${mp}: CID ${got}, the checkpoint recorded ${cid}`)
        else {
          const dir = path.posix.dirname(mp)
          for (const [key, f] of Object.entries((await parseDatasetManifest(bytes, mp)).files))
            await compare(dir === '.' ? key : `${dir}/${key}`, f.cid, 'the manifest')
        }
      } catch (err) {
        failed(mp, err)
      }
    }
    for (const f of lineage.files ?? []) await compare(f.path, f.cid, 'the checkpoint')
  } finally {
    src.close()
  }
  return problems
}
