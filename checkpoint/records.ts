import { O3IntegrityError } from '../lib/o3/errors.js'
import { recoverAddress, type Signer } from '../lib/content/signer.js'
import { isCid, normalizeCid } from '../lib/content/cid.js'
import { canonicalJson } from '../lib/content/canonical-json.js'
import { checkLineage, type DataLineage } from '../lib/content/lineage.js'
import { parseSidecar, sidecarKeyOf, type SidecarRecord } from '../lib/content/sidecar.js'

/** Object keys inside a run's prefix. */
export const MANIFEST_KEY = 'manifest.json'
export const LATEST_KEY = 'latest'
export const CHECKPOINT_DIR = 'checkpoints/'

/** What a checkpoint's name looks like; anything else in a control object is refused. */
export const CHECKPOINT_NAME = /^step-\d{10}$/

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
 * The verified signer of a record, undefined when it is unsigned; O3IntegrityError if it carries a
 * signature that does not recover to its signer. Whose signature is acceptable is TrustPolicy's call.
 */
export function checkSignature(record: CheckpointRecord, what: string): string | undefined {
  if (record.signature === undefined && record.signer === undefined) return undefined
  const recovered = record.signature ? recoverAddress(signedMessage(record), record.signature) : undefined
  if (!recovered || !record.signer || recovered.toLowerCase() !== record.signer.toLowerCase()) {
    throw new O3IntegrityError(
      `${what}: bad signature (claims ${record.signer ?? 'no signer'}, recovers to ${recovered ?? 'nothing'}); the record was altered or forged`,
    )
  }
  return recovered
}

/** A checkpoint's record from its sidecar. */
export function parseRecord(text: string, what: string): CheckpointRecord {
  const record = parseSidecar<CheckpointRecord>(text, what)
  if (record.version !== 1) throw new O3IntegrityError(`${what}: sidecar record has version ${JSON.stringify(record.version)}, not 1`)
  checkFields(
    record,
    { name: isName, step: isCount, epoch: isCount, signer: isOptionalAddress, signature: (v) => v === undefined || typeof v === 'string' },
    what,
    'sidecar record',
  )
  if (record.data !== undefined) checkLineage(record.data, what)
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

type FieldCheck = (v: unknown) => boolean
const isCount: FieldCheck = (v) => Number.isSafeInteger(v) && (v as number) >= 0
const isName: FieldCheck = (v) => typeof v === 'string' && CHECKPOINT_NAME.test(v)
const isText: FieldCheck = (v) => typeof v === 'string'
const isSha256: FieldCheck = (v) => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v)
const isOptionalAddress: FieldCheck = (v) => v === undefined || (typeof v === 'string' && /^0x[0-9a-fA-F]{40}$/.test(v))
const isCidText: FieldCheck = (v) => typeof v === 'string' && isCid(v)

/** O3IntegrityError naming the first field of `obj` that fails its check. */
function checkFields(obj: unknown, fields: Record<string, FieldCheck>, what: string, kind: string): void {
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) throw new O3IntegrityError(`${what}: ${kind} is not a JSON object`)
  for (const [k, ok] of Object.entries(fields)) {
    const v = (obj as Record<string, unknown>)[k]
    if (!ok(v)) throw new O3IntegrityError(`${what}: ${kind} has an invalid ${k} (${String(JSON.stringify(v)).slice(0, 80)})`)
  }
}

const ENTRY_FIELDS: Record<string, FieldCheck> = {
  seq: (v) => isCount(v) && (v as number) >= 1,
  name: isName,
  cid: isCidText,
  sha256: isSha256,
  size: isCount,
  step: isCount,
  epoch: isCount,
  time: isText,
  signer: isOptionalAddress,
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
  const names = new Set<string>()
  for (const [i, e] of m.checkpoints.entries()) {
    checkFields(e, ENTRY_FIELDS, what, `manifest entry ${i}`)
    if (e.name !== checkpointName(e.step)) throw new O3IntegrityError(`${what}: manifest entry ${i} is named ${e.name} but records step ${e.step}`)
    if (names.has(e.name)) throw new O3IntegrityError(`${what}: manifest lists ${e.name} twice`)
    names.add(e.name)
  }
  return m
}

export function parseLatest(text: string, what: string): LatestPointer {
  const p = parseJson(text, what, 'latest pointer') as LatestPointer
  if (p?.version !== 1) throw new O3IntegrityError(`${what}: latest pointer is malformed`)
  checkFields(p, { name: isName, cid: isCidText, seq: isCount, time: isText }, what, 'latest pointer')
  return p
}
