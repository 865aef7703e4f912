import { O3IntegrityError } from '../lib/o3/errors.js'
import { recoverAddress, type Signer } from '../lib/content/signer.js'
import { isCid, normalizeCid } from '../lib/content/cid.js'
import { canonicalJson } from '../lib/content/canonical-json.js'
import type { DataLineage } from '../lib/content/lineage.js'
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

/** The object of o3train's checkpoint `name`. */
export function dataKey(name: string): string {
  return `${CHECKPOINT_DIR}${name}.safetensors`
}

export function sidecarKey(name: string): string {
  return sidecarKeyOf(dataKey(name))
}

/**
 * What a checkpoint is: o3train's safetensors file (no kind), or what `o3ckpt put` stored, a
 * file of any format or a directory.
 */
export type EntryKind = 'file' | 'directory'

/** What locates a checkpoint's objects: the fields of its manifest entry that keys derive from. */
export interface EntryRef {
  name: string
  kind?: EntryKind
  /** The put file's or directory's own name. */
  path?: string
  /** 1, 2, … for each `--replace` of the step: the new objects never overwrite the ones still committed. */
  rev?: number
}

/** The folder of a put checkpoint's objects: `checkpoints/<name>/`, `checkpoints/<name>.r<rev>/` once replaced (no trailing slash). */
export function entryPrefix(e: EntryRef): string {
  return `${CHECKPOINT_DIR}${e.name}${e.rev ? `.r${e.rev}` : ''}`
}

/** The object that holds a file checkpoint's bytes; O3IntegrityError for a directory, which has one per file. */
export function contentKey(e: EntryRef): string {
  if (e.kind === undefined) return dataKey(e.name)
  if (e.kind === 'file') return `${entryPrefix(e)}/${e.path}`
  throw new O3IntegrityError(`${e.name} is a directory checkpoint: it has no single object (o3ckpt get writes the directory)`)
}

/** The object of one file of a directory checkpoint, by its path below the directory. */
export function directoryFileKey(e: EntryRef, path: string): string {
  return `${entryPrefix(e)}/${path}`
}

/** The sidecar that holds a checkpoint's (signed) record: its file's `.cid`, or `<folder>.cid` for a directory. */
export function recordKey(e: EntryRef): string {
  return sidecarKeyOf(e.kind === 'directory' ? entryPrefix(e) : contentKey(e))
}

/** Whether the object at `key` is one of the checkpoint's own (its data, its sidecars). */
export function ownsKey(e: EntryRef, key: string): boolean {
  if (e.kind === undefined) return key === dataKey(e.name) || key === sidecarKey(e.name)
  return key === recordKey(e) || key.startsWith(`${entryPrefix(e)}/`)
}

/**
 * Why `name` cannot be one path component of a put checkpoint (a key segment below the run), or
 * undefined when it can: it must survive S3 keys, JSON records and one-line messages unchanged,
 * and must not pass for a sidecar.
 */
export function nameProblem(name: string): string | undefined {
  if (name === '' || name === '.' || name === '..') return 'it is empty, "." or ".."'
  if (/[/\\]/.test(name)) return 'it contains a slash or a backslash'
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(name)) return 'it contains a control character'
  if (name.includes('\ufffd')) return 'it is not valid UTF-8'
  if (/%2f|%5c/i.test(name)) return 'it contains an encoded slash'
  if (name.endsWith('.cid')) return 'names ending in .cid are taken by sidecars'
  if (Buffer.byteLength(name) > 255) return 'it is longer than 255 bytes'
  return undefined
}

/** Whether `path` is a `/`-separated relative path of valid names. */
function isEntryPath(path: unknown): path is string {
  return typeof path === 'string' && path.split('/').every((s) => nameProblem(s) === undefined)
}

/** One file of a directory checkpoint as its record lists it. */
export interface DirectoryFileRecord {
  /** `/`-separated, below the directory. */
  path: string
  cid: string
  sha256: string
  size: number
}

/**
 * What a sidecar attests about one checkpoint; signed as a whole when a key is configured. For a
 * directory, `cid` is the UnixFS directory's, `sha256` the digest of its root node (the one
 * inside the CID), `size` the files' total, and `files` lists every file.
 */
export interface CheckpointRecord extends SidecarRecord {
  version: 1
  name: string
  step: number
  epoch: number
  /** o3train's model name; a put records it only when `--meta model=…` names it. */
  model?: string
  kind?: EntryKind
  path?: string
  rev?: number
  files?: DirectoryFileRecord[]
  /** `--meta key=value` of a put. */
  meta?: Record<string, string>
  /** Akave's identifiers of the stored form, as HeadObject returned them; never our CID. */
  networkRootCid?: string
  networkState?: string
  /** The data the weights were trained on; covered by the signature like every other field. */
  data?: DataLineage
  signer?: string
  signature?: string
}

/** One checkpoint in the run's manifest. `seq` numbers saves 1, 2, 3… and drives retention. */
export interface ManifestEntry extends EntryRef {
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

/** `fields` without its undefined ones: the stored JSON and the signed message must hold the same fields. */
export function definedFields<T extends object>(fields: T): T {
  return Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined)) as T
}

export function signRecord(fields: Omit<CheckpointRecord, 'signer' | 'signature'>, signer: Signer | undefined): CheckpointRecord {
  const record = definedFields(fields) as CheckpointRecord
  if (!signer) return record
  const withSigner: CheckpointRecord = { ...record, signer: signer.address }
  return { ...withSigner, signature: signer.sign(signedMessage(withSigner)) }
}

/**
 * The sidecar of one file of a directory checkpoint: what `head -1` gives an auditor for that
 * file, signed by the checkpoint's signer under its own message prefix, so that it cannot pass
 * for a checkpoint record or the other way round.
 */
export interface FileRecord extends SidecarRecord {
  version: 1
  /** The checkpoint's name and rev, and the file's path below its directory. */
  name: string
  rev?: number
  path: string
  step: number
  networkRootCid?: string
  networkState?: string
  signer?: string
  signature?: string
}

function fileSignedMessage(record: FileRecord): string {
  const { signature: _signature, ...rest } = record
  return `o3ckpt checkpoint file\n${canonicalJson(rest)}`
}

export function signFileRecord(fields: Omit<FileRecord, 'signer' | 'signature'>, signer: Signer | undefined): FileRecord {
  const record = definedFields(fields) as FileRecord
  if (!signer) return record
  const withSigner: FileRecord = { ...record, signer: signer.address }
  return { ...withSigner, signature: signer.sign(fileSignedMessage(withSigner)) }
}

/**
 * A directory file's sidecar, checked against the checkpoint's record: same name, rev, step and
 * signer, a signature that verifies, and the CID, sha256 and size the record lists for the file.
 */
export function checkFileRecord(text: string, record: CheckpointRecord, file: DirectoryFileRecord, what: string): FileRecord {
  const f = parseSidecar<FileRecord>(text, what)
  const diffs: string[] = []
  if (f.version !== 1) diffs.push(`version ${JSON.stringify(f.version)}`)
  if (f.name !== record.name) diffs.push(`name ${String(f.name)} vs ${record.name}`)
  if ((f.rev ?? 0) !== (record.rev ?? 0)) diffs.push(`rev ${String(f.rev)} vs ${String(record.rev)}`)
  if (f.path !== file.path) diffs.push(`path ${String(f.path)} vs ${file.path}`)
  if (f.step !== record.step) diffs.push(`step ${String(f.step)} vs ${record.step}`)
  if (normalizeCid(f.cid) !== normalizeCid(file.cid)) diffs.push(`CID ${f.cid} vs ${file.cid}`)
  if (f.sha256 !== file.sha256) diffs.push(`sha256 ${f.sha256} vs ${file.sha256}`)
  if (f.size !== file.size) diffs.push(`size ${f.size} vs ${file.size}`)
  if ((f.signer ?? '') !== (record.signer ?? '')) diffs.push(`signer ${f.signer ?? 'none'} vs ${record.signer ?? 'none'}`)
  if (diffs.length > 0)
    throw new O3IntegrityError(`${what}: file sidecar disagrees with the checkpoint's record (${diffs.join('; ')}); one of them was altered`)
  if (f.signer !== undefined || f.signature !== undefined) {
    const recovered = typeof f.signature === 'string' ? recoverAddress(fileSignedMessage(f), f.signature) : undefined
    if (!recovered || recovered.toLowerCase() !== String(f.signer).toLowerCase())
      throw new O3IntegrityError(
        `${what}: bad signature (claims ${f.signer ?? 'no signer'}, recovers to ${recovered ?? 'nothing'}); the sidecar was altered or forged`,
      )
  }
  return f
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
    {
      name: isName,
      step: isCount,
      epoch: isCount,
      signer: isOptionalAddress,
      signature: (v) => v === undefined || typeof v === 'string',
      model: (v) => v === undefined || typeof v === 'string',
      meta: (v) => v === undefined || (isObject(v) && Object.values(v).every((x) => typeof x === 'string')),
      ...ENTRY_REF_FIELDS,
    },
    what,
    'sidecar record',
  )
  checkEntryRef(record, what, 'sidecar record')
  if (record.kind === 'directory') checkFileList(record, what)
  else if (record.files !== undefined) throw new O3IntegrityError(`${what}: sidecar record lists files but is not a directory checkpoint`)
  return record
}

/** A directory record's file list: valid, sorted, unique paths with CIDs, sha256s and sizes that add up. */
function checkFileList(record: CheckpointRecord, what: string): void {
  const files = record.files
  if (!Array.isArray(files) || files.length === 0) throw new O3IntegrityError(`${what}: directory record lists no files`)
  let total = 0
  const paths = new Set<string>()
  for (const [i, f] of files.entries()) {
    checkFields(f, { path: isEntryPath, cid: isCidText, sha256: isSha256, size: isCount }, what, `file ${i} of the record`)
    if (i > 0 && !(Buffer.compare(Buffer.from(files[i - 1]!.path), Buffer.from(f.path)) < 0))
      throw new O3IntegrityError(`${what}: record's files are not sorted by path or repeat one (${f.path})`)
    paths.add(f.path)
    total += f.size
  }
  // A path is a file or a directory, not both: `get` writes them as they are listed.
  for (const p of paths)
    for (let cut = p.lastIndexOf('/'); cut > 0; cut = p.lastIndexOf('/', cut - 1))
      if (paths.has(p.slice(0, cut))) throw new O3IntegrityError(`${what}: record lists ${p.slice(0, cut)} both as a file and as a directory`)
  if (total !== record.size) throw new O3IntegrityError(`${what}: record's files add up to ${total} bytes, not its size ${record.size}`)
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
  if (record.kind !== entry.kind) diffs.push(`kind ${record.kind ?? 'safetensors'} vs ${entry.kind ?? 'safetensors'}`)
  if (record.path !== entry.path) diffs.push(`path ${record.path ?? 'none'} vs ${entry.path ?? 'none'}`)
  if ((record.rev ?? 0) !== (entry.rev ?? 0)) diffs.push(`rev ${record.rev ?? 0} vs ${entry.rev ?? 0}`)
  if (diffs.length > 0) throw new O3IntegrityError(`${what}: sidecar disagrees with the manifest (${diffs.join('; ')}); one of them was altered`)
}

type FieldCheck = (v: unknown) => boolean
const isCount: FieldCheck = (v) => Number.isSafeInteger(v) && (v as number) >= 0
const isName: FieldCheck = (v) => typeof v === 'string' && CHECKPOINT_NAME.test(v)
const isText: FieldCheck = (v) => typeof v === 'string'
const isSha256: FieldCheck = (v) => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v)
const isOptionalAddress: FieldCheck = (v) => v === undefined || (typeof v === 'string' && /^0x[0-9a-fA-F]{40}$/.test(v))
const isCidText: FieldCheck = (v) => typeof v === 'string' && isCid(v)
const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v)

/** kind, path and rev: absent together (o3train's), or a put's kind with its own name. */
const ENTRY_REF_FIELDS: Record<string, FieldCheck> = {
  kind: (v) => v === undefined || v === 'file' || v === 'directory',
  path: (v) => v === undefined || (typeof v === 'string' && nameProblem(v) === undefined),
  rev: (v) => v === undefined || (isCount(v) && (v as number) >= 1),
}

function checkEntryRef(e: EntryRef, what: string, kind: string): void {
  if ((e.kind === undefined) !== (e.path === undefined)) throw new O3IntegrityError(`${what}: ${kind} has a kind without a path or a path without a kind`)
  if (e.kind === undefined && e.rev !== undefined) throw new O3IntegrityError(`${what}: ${kind} of an o3train checkpoint has a rev`)
}

/** O3IntegrityError naming the first field of `obj` that fails its check. */
function checkFields(obj: unknown, fields: Record<string, FieldCheck>, what: string, kind: string): void {
  if (!isObject(obj)) throw new O3IntegrityError(`${what}: ${kind} is not a JSON object`)
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
  ...ENTRY_REF_FIELDS,
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
  // A name may appear twice while a replacement commits (see currentEntry); a seq never does.
  const seqs = new Set<number>()
  for (const [i, e] of m.checkpoints.entries()) {
    checkFields(e, ENTRY_FIELDS, what, `manifest entry ${i}`)
    checkEntryRef(e, what, `manifest entry ${i}`)
    if (e.name !== checkpointName(e.step)) throw new O3IntegrityError(`${what}: manifest entry ${i} is named ${e.name} but records step ${e.step}`)
    if (seqs.has(e.seq)) throw new O3IntegrityError(`${what}: manifest lists seq ${e.seq} twice`)
    seqs.add(e.seq)
  }
  return m
}

/**
 * The entry that stands for `name`: the one saved last. A `--replace` lists the new entry beside
 * the old one until `latest` has moved to it, so that a crash in between leaves the old one
 * where `latest` finds it; the old one is then dropped.
 */
export function currentEntry(entries: readonly ManifestEntry[], name: string): ManifestEntry | undefined {
  let found: ManifestEntry | undefined
  for (const e of entries) if (e.name === name && (!found || e.seq > found.seq)) found = e
  return found
}

/** `entries` without those a later entry of the same name replaced. */
export function currentEntries(entries: readonly ManifestEntry[]): ManifestEntry[] {
  return entries.filter((e) => currentEntry(entries, e.name) === e)
}

export function parseLatest(text: string, what: string): LatestPointer {
  const p = parseJson(text, what, 'latest pointer') as LatestPointer
  if (p?.version !== 1) throw new O3IntegrityError(`${what}: latest pointer is malformed`)
  checkFields(p, { name: isName, cid: isCidText, seq: isCount, time: isText }, what, 'latest pointer')
  return p
}
