import { createReadStream, existsSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { O3IntegrityError } from '../o3/errors.js'
import { digestContent, isCid } from './cid.js'
import { DATASET_MANIFEST_NAME, isRelativeDataPath, parseDatasetManifest } from './dataset-manifest.js'

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

/**
 * Checks the lineage a record or a checkpoint's metadata holds, as untrusted input: every path is
 * a relative path below the data directory, every CID parses, sizes are counts. Returns it as it
 * is (a signature covers it); O3IntegrityError, naming `what`, otherwise.
 */
export function checkLineage(value: unknown, what: string): DataLineage {
  const bad = (why: string): never => {
    throw new O3IntegrityError(`${what}: ${why}`)
  }
  const l = value as Partial<DataLineage> | null
  if (l === null || typeof l !== 'object' || Array.isArray(l) || typeof l.verified !== 'boolean') bad('data lineage is malformed')
  const checkPath = (p: unknown) => {
    if (typeof p !== 'string' || !isRelativeDataPath(p))
      bad(`data lineage path ${JSON.stringify(p).slice(0, 200)} is not a relative path below the data directory`)
  }
  if (l!.manifest !== undefined) {
    if (l!.manifest === null || typeof l!.manifest !== 'object' || !isCid(String(l!.manifest.cid))) bad('data lineage manifest is malformed')
    checkPath(l!.manifest.path)
  }
  if (l!.files !== undefined) {
    if (!Array.isArray(l!.files)) bad('data lineage files are not a list')
    for (const f of l!.files!) {
      if (f === null || typeof f !== 'object' || !isCid(String(f.cid)) || !Number.isSafeInteger(f.size) || f.size < 0) bad('data lineage file is malformed')
      checkPath(f.path)
    }
  }
  return l as DataLineage
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
