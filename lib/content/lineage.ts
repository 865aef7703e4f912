import { createReadStream, existsSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { digestContent } from './cid.js'
import { DATASET_MANIFEST_NAME, parseDatasetManifest } from './dataset-manifest.js'

/**
 * The data a checkpoint was trained on, as recorded in its metadata and sidecar: the dataset
 * manifest that names every file read (by the CID of its bytes), else the CID of each file read;
 * and whether the mount checked every read against that manifest.
 */
export interface DataLineage {
  /** Relative to the data directory, with the CID of the manifest's bytes. */
  manifest?: { path: string; cid: string }
  /** Present unless reads were verified against the manifest: each file read, relative to the data directory. */
  files?: { path: string; cid: string; size: number }[]
  verified: boolean
}

const rel = (root: string, file: string) => path.relative(root, file).split(path.sep).join('/')

/** The nearest `.o3-manifest.json` at or above each file (up to `root`) that names them all, if there is one. */
export async function manifestFor(root: string, files: readonly string[]): Promise<{ path: string; cid: string } | undefined> {
  if (files.length === 0) return undefined
  for (let dir = path.dirname(files[0]!); ; dir = path.dirname(dir)) {
    const file = path.join(dir, DATASET_MANIFEST_NAME)
    if (existsSync(file)) {
      const bytes = await readFile(file)
      const m = await parseDatasetManifest(bytes, rel(root, file))
      if (files.every((f) => m.files[rel(dir, f)] !== undefined)) return { path: rel(root, file), cid: (await digestContent(bytes)).cid }
    }
    if (dir === root || dir === path.dirname(dir) || !dir.startsWith(root)) return undefined
  }
}

/** The CID of each file, relative to `root`. */
export async function fileCids(root: string, files: readonly string[]): Promise<NonNullable<DataLineage['files']>> {
  const out: NonNullable<DataLineage['files']> = []
  for (const f of files) {
    const d = await digestContent(createReadStream(f) as AsyncIterable<Buffer>)
    out.push({ path: rel(root, f), cid: d.cid, size: d.size })
  }
  return out
}

/**
 * The lineage of a run that read `files` below `root`. `readsVerified`: the mount checked every
 * block against a manifest; only then does the manifest alone name the data, otherwise the files'
 * own CIDs are computed (by reading them) and recorded beside it.
 */
export async function dataLineage(root: string, files: readonly string[], readsVerified: boolean): Promise<DataLineage> {
  const manifest = await manifestFor(root, files)
  const verified = readsVerified && manifest !== undefined
  return { ...(manifest ? { manifest } : {}), ...(verified ? {} : { files: await fileCids(root, files) }), verified }
}
