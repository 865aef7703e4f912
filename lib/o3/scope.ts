import { O3UsageError } from './errors.js'

/** A bucket and the key prefix a client is confined to (no leading or trailing slash). */
export interface Scope {
  bucket: string
  prefix: string
}

const BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/

/** Parses `bucket[/prefix]` (an optional `o3://` or `s3://` scheme is accepted). */
export function parseLocation(location: string): Scope {
  const bare = location.replace(/^(o3|s3):\/\//, '')
  const slash = bare.indexOf('/')
  const bucket = slash < 0 ? bare : bare.slice(0, slash)
  if (!BUCKET_RE.test(bucket)) {
    throw new O3UsageError(`invalid bucket name ${JSON.stringify(bucket)}: use 3-63 lowercase letters, digits, '.' or '-' (as in bucket/prefix)`)
  }
  const rest = slash < 0 ? '' : bare.slice(slash + 1).replace(/\/+$/, '')
  if (rest !== '') checkRelativeKey(rest, 'prefix')
  return { bucket, prefix: rest }
}

/**
 * Rejects any key that could address something outside the scope once joined to the prefix:
 * a `..` or `.` segment, a leading slash, an empty segment, an encoded slash or backslash.
 */
export function checkRelativeKey(key: string, what = 'key'): void {
  const bad = (why: string): never => {
    throw new O3UsageError(`${what} ${JSON.stringify(key)} is not allowed: ${why}`)
  }
  if (key === '') bad('it is empty')
  if (key.startsWith('/')) bad('it starts with "/"; keys are relative to the mounted prefix')
  if (/%2f|%5c/i.test(key)) bad('it contains an encoded slash')
  if (key.includes('\\')) bad('it contains a backslash')
  if (key.includes('\0')) bad('it contains a NUL byte')
  const segments = key.split('/')
  // A trailing slash is a "directory" key and is allowed; other empty segments are not.
  const inner = key.endsWith('/') ? segments.slice(0, -1) : segments
  for (const s of inner) {
    if (s === '..' || s === '.') bad(`it contains a "${s}" segment`)
    if (s === '') bad('it contains an empty path segment ("//")')
  }
}

/** Maps a key relative to the scope to the full object key. */
export function fullKey(scope: Scope, key: string): string {
  checkRelativeKey(key)
  return scope.prefix === '' ? key : `${scope.prefix}/${key}`
}

/** Maps a listing prefix ('' for the scope's root) to the full prefix, ending in '/' unless empty. */
export function fullPrefix(scope: Scope, prefix: string): string {
  if (prefix !== '') {
    checkRelativeKey(prefix, 'prefix')
  }
  const joined = scope.prefix === '' ? prefix : prefix === '' ? `${scope.prefix}/` : `${scope.prefix}/${prefix}`
  return joined
}

/** Maps a full key from a listing back to a key relative to the scope. */
export function relativeKey(scope: Scope, full: string): string {
  if (scope.prefix === '') return full
  const head = `${scope.prefix}/`
  if (!full.startsWith(head)) throw new O3UsageError(`server returned key ${JSON.stringify(full)} outside ${head}`)
  return full.slice(head.length)
}
