// Puts files and their tree's dataset manifest into a bucket as o3upload does, without the CLI.
import { ContentHasher } from '../../lib/content/cid.js'
import {
  DATASET_MANIFEST_NAME,
  buildDatasetManifest,
  formatDatasetManifest,
  type DatasetManifest,
  type ManifestFile,
} from '../../lib/content/dataset-manifest.js'
import type { Signer } from '../../lib/content/signer.js'
import type { O3Client } from '../../lib/o3/index.js'

/** The manifest record of `data`: CID, sha256, size and 1 MiB leaf digests. */
export async function manifestFile(data: Buffer): Promise<ManifestFile> {
  const h = new ContentHasher()
  await h.update(data)
  const d = await h.digest()
  return { ...d, leaves: [...h.leafDigests] }
}

/** Stores `files` (by key below `prefix`) and then `<prefix>/.o3-manifest.json`; returns the manifest. */
export async function putTree(client: O3Client, prefix: string, files: Record<string, Buffer>, signer?: Signer): Promise<DatasetManifest> {
  const records: Record<string, ManifestFile> = {}
  for (const [key, data] of Object.entries(files)) {
    await client.put(`${prefix}/${key}`, data)
    records[key] = await manifestFile(data)
  }
  const m = buildDatasetManifest(records, signer)
  await client.put(`${prefix}/${DATASET_MANIFEST_NAME}`, formatDatasetManifest(m))
  return m
}
