import { O3IntegrityError } from '../o3/errors.js'
import type { O3Client, StoredObject } from '../o3/client.js'
import { isCid, normalizeCid, type ContentDigest } from './cid.js'

/**
 * The `.cid` sidecar stored beside every content object we write, datasets and checkpoints alike:
 * the CID alone on the first line (so that `cat` or `head -1` gives it to stock IPFS tools), then
 * one JSON line with the CID, sha256, size, time and whatever the kind of content adds (a
 * checkpoint's step and signature, say).
 */
export interface SidecarRecord extends ContentDigest {
  /** When the content was stored, ISO 8601. */
  time: string
}

export function sidecarKeyOf(key: string): string {
  return `${key}.cid`
}

export function formatSidecar(record: SidecarRecord): string {
  return `${record.cid}\n${JSON.stringify(record)}\n`
}

/**
 * Reads a sidecar written by formatSidecar (or an older one whose JSON spans several lines).
 * O3IntegrityError, naming `what`, unless it holds a record with a CID, a sha256, a size and a
 * time, whose CID is the one on the first line. Fields beyond those are the caller's to check.
 */
export function parseSidecar<R extends SidecarRecord = SidecarRecord>(text: string, what: string): R {
  const nl = text.indexOf('\n')
  let record: R
  try {
    record = JSON.parse(text.slice(nl + 1)) as R
  } catch {
    throw new O3IntegrityError(`${what}: sidecar is not a CID line followed by JSON`)
  }
  if (
    nl < 0 ||
    typeof record?.cid !== 'string' ||
    !isCid(record.cid) ||
    typeof record.sha256 !== 'string' ||
    !/^[0-9a-f]{64}$/.test(record.sha256) ||
    !Number.isSafeInteger(record.size) ||
    record.size < 0 ||
    typeof record.time !== 'string'
  ) {
    throw new O3IntegrityError(`${what}: sidecar record is malformed`)
  }
  const first = text.slice(0, nl).trim()
  if (!isCid(first) || normalizeCid(first) !== normalizeCid(record.cid))
    throw new O3IntegrityError(`${what}: sidecar's first line ${first} differs from its record's CID ${record.cid}`)
  return record
}

/** Stores the sidecar of the object at `key`; returns its text and what the write stored (ETag, version). */
export async function putSidecar(client: O3Client, key: string, record: SidecarRecord, signal?: AbortSignal): Promise<{ text: string; stored: StoredObject }> {
  const text = formatSidecar(record)
  const stored = await client.put(sidecarKeyOf(key), text, { contentType: 'text/plain; charset=utf-8', signal })
  return { text, stored }
}
