import { O3IntegrityError } from '../o3/errors.js'
import { canonicalJson } from './canonical-json.js'
import { CID_BLOCK_SIZE, cidFromLeaves, leafCount, normalizeCid, type ContentDigest } from './cid.js'
import type { Signer } from './signer.js'

/**
 * The manifest of an uploaded tree, stored beside its files as `<prefix>/.o3-manifest.json`: per
 * file (key below the prefix) its CID, sha256, size and the sha256 of each 1 MiB leaf of that CID,
 * so that a mount can check any block it serves with one object fetched per tree; and, where the
 * bucket keeps versions, the version id and ETag the upload made, so that a mount reads exactly
 * that version even after the key is overwritten. It is untrusted
 * input wherever it is read: bounded, every field validated, every leaf list rebuilt into its CID,
 * and, when signed (same key and EIP-191 scheme as checkpoint records), its signature checked.
 */
export const DATASET_MANIFEST_NAME = '.o3-manifest.json'
/** About 4 million leaves (4 TiB of data); a larger tree is uploaded as several. */
export const MAX_DATASET_MANIFEST_BYTES = 256 << 20

export interface ManifestFile extends ContentDigest {
  /** Hex sha256 of each 1 MiB leaf of the CID, in order; one (empty) leaf for an empty file. */
  leaves: string[]
  /** The version the upload stored, where the bucket keeps versions; always with its `etag`. */
  versionId?: string
  etag?: string
}

export interface DatasetManifest {
  format: 'o3-dataset-manifest'
  version: 1
  leafSize: typeof CID_BLOCK_SIZE
  created: string
  /** By key relative to the manifest's own prefix, `/`-separated. */
  files: Record<string, ManifestFile>
  signer?: string
  signature?: string
}

const HEX64 = /^[0-9a-f]{64}$/
/** A version id or ETag as servers spell them: printable ASCII, bounded. */
const VERSION_TEXT = /^[\x21-\x7e]{1,1024}$/

function signedMessage(m: DatasetManifest): string {
  const { signature: _signature, ...rest } = m
  return `o3 dataset manifest\n${canonicalJson(rest)}`
}

export function buildDatasetManifest(files: Record<string, ManifestFile>, signer: Signer | undefined): DatasetManifest {
  const m: DatasetManifest = { format: 'o3-dataset-manifest', version: 1, leafSize: CID_BLOCK_SIZE, created: new Date().toISOString(), files }
  if (!signer) return m
  const withSigner: DatasetManifest = { ...m, signer: signer.address }
  return { ...withSigner, signature: signer.sign(signedMessage(withSigner)) }
}

export function formatDatasetManifest(m: DatasetManifest): string {
  return `${JSON.stringify(m)}\n`
}

/** A key below the manifest's prefix that stays below it: no empty, `.` or `..` segment. */
/**
 * A path below a data directory as a manifest or a checkpoint's lineage names it: relative, '/'
 * separated, no empty, '.' or '..' segment, no backslash or NUL, so that joined to the directory
 * (or to a key prefix) it stays below it.
 */
export function isRelativeDataPath(key: string): boolean {
  return key.length > 0 && key.length <= 1024 && !/[\\\0]/.test(key) && key.split('/').every((s) => s !== '' && s !== '.' && s !== '..')
}

function checkFile(key: string, f: unknown, what: string): ManifestFile {
  const bad = (why: string): never => {
    throw new O3IntegrityError(`${what}: file ${JSON.stringify(key)} ${why}; the manifest is corrupt or forged, upload the tree again`)
  }
  if (!isRelativeDataPath(key)) bad('is not a relative key')
  const e = f as Partial<ManifestFile> | null
  if (e === null || typeof e !== 'object') bad('has no record')
  if (typeof e!.cid !== 'string') bad('has no CID')
  if (!Number.isSafeInteger(e!.size) || e!.size! < 0) bad('has no valid size')
  if (typeof e!.sha256 !== 'string' || !HEX64.test(e!.sha256)) bad('has no valid sha256')
  const leaves = e!.leaves
  if (!Array.isArray(leaves) || leaves.length !== leafCount(e!.size!)) bad(`does not list ${leafCount(e!.size!)} leaf digests`)
  if (!leaves!.every((l) => typeof l === 'string' && HEX64.test(l))) bad('has a leaf digest that is not 64 hex digits')
  const file: ManifestFile = { cid: normalizeCid(e!.cid!), size: e!.size!, sha256: e!.sha256!, leaves: leaves! }
  if (e!.versionId === undefined && e!.etag === undefined) return file
  const text = (v: unknown) => typeof v === 'string' && VERSION_TEXT.test(v)
  if (!text(e!.versionId) || !text(e!.etag)) bad('has a version id without a valid ETag, or the other way round')
  return { ...file, versionId: e!.versionId, etag: e!.etag }
}

async function checkSignature(m: DatasetManifest, what: string, trustedSigners: readonly string[]): Promise<string | undefined> {
  if (m.signature === undefined && m.signer === undefined) {
    if (trustedSigners.length > 0) throw new O3IntegrityError(`${what}: unsigned, but --trust-signer requires a signature by ${trustedSigners.join(' or ')}`)
    return undefined
  }
  // Loaded only for a signed manifest: the curve code holds about 1 MiB of heap in every process
  // that loads it, and the mount, which parses manifests, has a memory bound to keep.
  const { recoverAddress } = await import('./signer.js')
  const recovered = typeof m.signature === 'string' ? recoverAddress(signedMessage(m), m.signature) : undefined
  if (!recovered || typeof m.signer !== 'string' || recovered.toLowerCase() !== m.signer.toLowerCase()) {
    throw new O3IntegrityError(
      `${what}: bad signature (claims ${String(m.signer ?? 'no signer')}, recovers to ${recovered ?? 'nothing'}); the manifest was altered or forged`,
    )
  }
  if (trustedSigners.length > 0 && !trustedSigners.some((s) => s.toLowerCase() === recovered.toLowerCase())) {
    throw new O3IntegrityError(`${what}: signed by ${recovered}, who is not among the trusted signers (${trustedSigners.join(', ')})`)
  }
  return recovered
}

/** O3IntegrityError, naming `what`, when a dataset manifest of `size` bytes is larger than one may be: before it is read, too. */
export function checkDatasetManifestSize(size: number, what: string): void {
  if (size > MAX_DATASET_MANIFEST_BYTES)
    throw new O3IntegrityError(`${what}: ${size} bytes, more than the ${MAX_DATASET_MANIFEST_BYTES} a dataset manifest may have`)
}

/**
 * Parses and checks a dataset manifest; O3IntegrityError, naming `what`, for anything wrong: too
 * large, not JSON, a missing or malformed field, a leaf list that does not rebuild its file's CID,
 * a bad signature, or no signature by one of `trustedSigners` when that list is not empty.
 */
export async function parseDatasetManifest(bytes: Uint8Array, what: string, trustedSigners: readonly string[] = []): Promise<DatasetManifest> {
  checkDatasetManifestSize(bytes.length, what)
  let m: DatasetManifest
  try {
    m = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString('utf8')) as DatasetManifest
  } catch {
    throw new O3IntegrityError(`${what}: not JSON; the manifest is corrupt, upload the tree again`)
  }
  if (m === null || typeof m !== 'object' || m.format !== 'o3-dataset-manifest' || m.version !== 1)
    throw new O3IntegrityError(`${what}: not an o3 dataset manifest of version 1`)
  if (m.leafSize !== CID_BLOCK_SIZE) throw new O3IntegrityError(`${what}: leaf size ${String(m.leafSize)}, expected ${CID_BLOCK_SIZE}`)
  if (typeof m.created !== 'string' || m.files === null || typeof m.files !== 'object' || Array.isArray(m.files))
    throw new O3IntegrityError(`${what}: malformed (created, files)`)
  await checkSignature(m, what, trustedSigners)
  const files: Record<string, ManifestFile> = Object.create(null) as Record<string, ManifestFile>
  for (const [key, f] of Object.entries(m.files)) {
    const file = checkFile(key, f, what)
    const rebuilt = await cidFromLeaves(file.leaves, file.size)
    if (rebuilt !== file.cid)
      throw new O3IntegrityError(`${what}: the leaves of ${key} hash to ${rebuilt}, not to its CID ${file.cid}; the manifest is corrupt or forged`)
    files[key] = file
  }
  return { ...m, files }
}
