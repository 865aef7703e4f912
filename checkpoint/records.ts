import { O3IntegrityError } from '../lib/o3/errors.js'
import { recoverAddress, type Signer } from '../lib/content/signer.js'
import { normalizeCid } from '../lib/content/cid.js'
import { canonicalJson } from '../lib/content/canonical-json.js'
import type { DataLineage } from '../lib/content/lineage.js'
import { parseSidecar, sidecarKeyOf, type SidecarRecord } from '../lib/content/sidecar.js'

/** Object keys inside a run's prefix. */
export const MANIFEST_KEY = 'manifest.json'
export const LATEST_KEY = 'latest'
export const CHECKPOINT_DIR = 'checkpoints/'

/** Names sort by step as strings too, so that listings come out in training order. */
export function checkpointName(step: number): string {
  if (!Number.isSafeInteger(step) || step < 0) throw new RangeError(`step ${step} is not a non-negative integer`)
  return `step-${String(step).padStart(10, '0')}`
}

export function dataKey(name: string): string {
  return `${CHECKPOINT_DIR}${name}.safetensors`
}

export function sidecarKey(name: string): string {
  return sidecarKeyOf(dataKey(name))
}

/** What a sidecar attests about one checkpoint; signed as a whole when a key is configured. */
export interface CheckpointRecord extends SidecarRecord {
  version: 1
  name: string
  step: number
  epoch: number
  model: string
  /** Akave's identifiers of the stored form, as HeadObject returned them; never our CID. */
  networkRootCid?: string
  networkState?: string
  /** The data the weights were trained on; covered by the signature like every other field. */
  data?: DataLineage
  signer?: string
  signature?: string
}

/** One checkpoint in the run's manifest. `seq` numbers saves 1, 2, 3… and drives retention. */
export interface ManifestEntry {
  seq: number
  name: string
  cid: string
  sha256: string
  size: number
  step: number
  epoch: number
  time: string
  signer?: string
}

export interface Manifest {
  version: 1
  checkpoints: ManifestEntry[]
}

/** The commit marker: the checkpoint a resume starts from. */
export interface LatestPointer {
  version: 1
  name: string
  cid: string
  seq: number
  time: string
}

/** The EIP-191 message of a record: everything but the signature, canonically encoded. */
export function signedMessage(record: CheckpointRecord): string {
  const { signature: _signature, ...rest } = record
  return `o3ckpt checkpoint record\n${canonicalJson(rest)}`
}

export function signRecord(fields: Omit<CheckpointRecord, 'signer' | 'signature'>, signer: Signer | undefined): CheckpointRecord {
  // Absent, not undefined: the stored JSON and the signed message must hold the same fields.
  const record = Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined)) as unknown as CheckpointRecord
  if (!signer) return record
  const withSigner: CheckpointRecord = { ...record, signer: signer.address }
  return { ...withSigner, signature: signer.sign(signedMessage(withSigner)) }
}

/**
 * Throws O3IntegrityError if the record carries a signature that does not recover to its signer,
 * or if `expectedSigner` is given and the record is unsigned or signed by someone else. Returns
 * the verified signer, if any.
 */
export function checkSignature(record: CheckpointRecord, what: string, expectedSigner?: string): string | undefined {
  if (record.signature === undefined && record.signer === undefined) {
    if (expectedSigner) throw new O3IntegrityError(`${what}: unsigned, but a signature by ${expectedSigner} is required`)
    return undefined
  }
  const recovered = record.signature ? recoverAddress(signedMessage(record), record.signature) : undefined
  if (!recovered || !record.signer || recovered.toLowerCase() !== record.signer.toLowerCase()) {
    throw new O3IntegrityError(`${what}: bad signature (claims ${record.signer ?? 'no signer'}, recovers to ${recovered ?? 'nothing'}); the record was altered or forged`)
  }
  if (expectedSigner && recovered.toLowerCase() !== expectedSigner.toLowerCase()) {
    throw new O3IntegrityError(`${what}: signed by ${recovered}, not by the required ${expectedSigner}`)
  }
  return recovered
}

/** A checkpoint's record from its sidecar. */
export function parseRecord(text: string, what: string): CheckpointRecord {
  const record = parseSidecar<CheckpointRecord>(text, what)
  if (record.version !== 1) throw new O3IntegrityError(`${what}: sidecar record has version ${JSON.stringify(record.version)}, not 1`)
  return record
}

/** Throws O3IntegrityError where the sidecar and the manifest disagree about a checkpoint. */
export function checkRecordAgainstEntry(record: CheckpointRecord, entry: ManifestEntry, what: string): void {
  const diffs: string[] = []
  if (record.name !== entry.name) diffs.push(`name ${record.name} vs ${entry.name}`)
  if (normalizeCid(record.cid) !== normalizeCid(entry.cid)) diffs.push(`CID ${record.cid} vs ${entry.cid}`)
  if (record.sha256 !== entry.sha256) diffs.push(`sha256 ${record.sha256} vs ${entry.sha256}`)
  if (record.size !== entry.size) diffs.push(`size ${record.size} vs ${entry.size}`)
  if (record.step !== entry.step) diffs.push(`step ${record.step} vs ${entry.step}`)
  if ((record.signer ?? '') !== (entry.signer ?? '')) diffs.push(`signer ${record.signer ?? 'none'} vs ${entry.signer ?? 'none'}`)
  if (diffs.length > 0) throw new O3IntegrityError(`${what}: sidecar disagrees with the manifest (${diffs.join('; ')}); one of them was altered`)
}

function parseJson(text: string, what: string, kind: string): unknown {
  try {
    return JSON.parse(text)
  } catch {
    throw new O3IntegrityError(`${what}: ${kind} is not JSON`)
  }
}

export function parseManifest(text: string, what: string): Manifest {
  const m = parseJson(text, what, 'manifest') as Manifest
  if (m?.version !== 1 || !Array.isArray(m.checkpoints)) throw new O3IntegrityError(`${what}: manifest is malformed`)
  return m
}

export function parseLatest(text: string, what: string): LatestPointer {
  const p = parseJson(text, what, 'latest pointer') as LatestPointer
  if (p?.version !== 1 || typeof p.name !== 'string' || typeof p.cid !== 'string') throw new O3IntegrityError(`${what}: latest pointer is malformed`)
  return p
}
