import { readdir, stat } from 'node:fs/promises'
import path from 'node:path'
import { CliError, ExitCode } from '../lib/cli/exit-codes.js'
import { digestContent } from '../lib/content/cid.js'
import { DATASET_MANIFEST_NAME, MAX_DATASET_MANIFEST_BYTES, parseDatasetManifest } from '../lib/content/dataset-manifest.js'
import { fileCids, manifestFor, type DataLineage } from '../lib/content/lineage.js'
import { O3Client, O3NotFoundError, O3UsageError, type O3Flags } from '../lib/o3/index.js'

/** What a put's lineage leaves out, as o3upload does: sidecars and manifests describe the data, they are not it. */
const isData = (name: string) => !name.endsWith('.cid') && name !== DATASET_MANIFEST_NAME

/**
 * The data lineage of `o3ckpt put --data LOCATION`, in o3train's form (lib/content/lineage.ts):
 * the CID of the dataset manifest when the location has one naming its files, else the path, CID
 * and size of every file there (read once to hash it). `verified` is false: a put does not see
 * the reads its training made.
 */
export async function putLineage(location: string, flags: O3Flags): Promise<DataLineage> {
  return /^(o3|s3):\/\//.test(location) ? remoteLineage(location, flags) : localLineage(location)
}

async function localLineage(dir: string): Promise<DataLineage> {
  const root = path.resolve(dir)
  const st = await stat(root).catch(() => undefined)
  if (!st) throw new CliError(`--data ${dir} does not exist; give the data directory or o3://bucket/prefix the model was trained on`, ExitCode.notFound)
  if (!st.isDirectory()) throw new O3UsageError(`--data ${dir} is not a directory; give the data directory or o3://bucket/prefix the model was trained on`)
  const files: string[] = []
  for (const e of await readdir(root, { withFileTypes: true, recursive: true })) if (e.isFile() && isData(e.name)) files.push(path.join(e.parentPath, e.name))
  if (files.length === 0) throw new O3UsageError(`--data ${dir} holds no files`)
  files.sort()
  const manifest = await manifestFor(root, files)
  return manifest ? { manifest, verified: false } : { files: await fileCids(root, files), verified: false }
}

async function remoteLineage(location: string, flags: O3Flags): Promise<DataLineage> {
  const client = O3Client.open(location, flags)
  try {
    const manifest = await readWhole(client, DATASET_MANIFEST_NAME, MAX_DATASET_MANIFEST_BYTES)
    if (manifest) {
      await parseDatasetManifest(manifest, `${location}/${DATASET_MANIFEST_NAME}`)
      return { manifest: { path: DATASET_MANIFEST_NAME, cid: (await digestContent(manifest)).cid }, verified: false }
    }
    const files: NonNullable<DataLineage['files']> = []
    for await (const o of client.list('')) {
      if (o.type !== 'object' || !isData(path.posix.basename(o.key))) continue
      // A range request on an empty object is refused: an empty one needs no GET.
      const d = await digestContent(o.size === 0 ? new Uint8Array(0) : client.iterateRange(o.key))
      files.push({ path: o.key, cid: d.cid, size: d.size })
    }
    if (files.length === 0) {
      await client.checkBucket()
      throw new CliError(`--data ${location} holds no objects; give the o3://bucket/prefix the model was trained on`, ExitCode.notFound)
    }
    return { files, verified: false }
  } finally {
    client.close()
  }
}

/** The object's bytes, at most `max` of them; undefined when it does not exist. */
async function readWhole(client: O3Client, key: string, max: number): Promise<Buffer | undefined> {
  try {
    const head = await client.head(key)
    if (head.size > max) throw new O3UsageError(`${key} in --data is ${head.size} bytes, more than a dataset manifest may have (${max})`)
    const chunks: Buffer[] = []
    if (head.size > 0) for await (const c of client.iterateRange(key, { pin: { etag: head.etag } })) chunks.push(c)
    return Buffer.concat(chunks)
  } catch (err) {
    if (err instanceof O3NotFoundError) return undefined
    throw err
  }
}
