/**
 * The protocol of o3mount's control socket (`--control-socket`): newline-delimited JSON, one answer
 * line per request line, in order. Its one request announces files in the order they will be read,
 * so that the mount fetches them before they are opened:
 *
 *   {"op":"prefetch","paths":["train/cat/001.png", ...]}  ->  {"ok":true,"queued":N}
 *   anything wrong                                        ->  {"ok":false,"error":"..."} (nothing queued)
 *
 * Paths are relative to the mount's root and spelt as keys are: no leading `/`, no `.`/`..` or
 * empty segments. Shared by the server (fs-driver/control-socket.ts) and o3train's client
 * (trainer/announce.ts); examples/pytorch/announce.py mirrors the limits.
 */
import { checkRelativeKey } from './o3/scope.js'

/** Longest request line, newline included: a longer one is refused whole. */
export const MAX_REQUEST_BYTES = 1 << 20
/** Most paths in one request; a client announces more in several. */
export const MAX_PATHS_PER_REQUEST = 10_000
/** S3's limit on a key. */
export const MAX_PATH_BYTES = 1024

export interface PrefetchRequest {
  op: 'prefetch'
  paths: string[]
}

export type ControlAnswer = { ok: true; queued: number } | { ok: false; error: string }

/** A request the server refuses; the message is the answer's `error`. */
export class BadRequest extends Error {}

/** Throws BadRequest naming what is wrong with `path`. */
export function checkAnnouncedPath(path: unknown, index: number): asserts path is string {
  const where = `paths[${index}]`
  if (typeof path !== 'string') throw new BadRequest(`${where} is not a string`)
  if (Buffer.byteLength(path) > MAX_PATH_BYTES) throw new BadRequest(`${where} is longer than ${MAX_PATH_BYTES} bytes`)
  if (path.endsWith('/')) throw new BadRequest(`${where} ${JSON.stringify(path)} ends with "/": name a file`)
  try {
    checkRelativeKey(path, 'path')
  } catch (err) {
    throw new BadRequest(`${where}: ${(err as Error).message}; paths are relative to the mount's root, as listed below it`)
  }
}

/** Parses and checks one request line (without its newline); throws BadRequest. */
export function parseRequest(line: string): PrefetchRequest {
  let req: unknown
  try {
    req = JSON.parse(line)
  } catch {
    throw new BadRequest('the request is not JSON: send one JSON object per line, e.g. {"op":"prefetch","paths":["a/b.png"]}')
  }
  if (typeof req !== 'object' || req === null || Array.isArray(req)) throw new BadRequest('the request must be a JSON object')
  const { op, paths, ...rest } = req as Record<string, unknown>
  if (op !== 'prefetch') throw new BadRequest(`unknown op ${JSON.stringify(op)}: the one op is "prefetch"`)
  const extra = Object.keys(rest)
  if (extra.length > 0) throw new BadRequest(`unknown field ${JSON.stringify(extra[0])}: a prefetch request has "op" and "paths"`)
  if (!Array.isArray(paths)) throw new BadRequest('"paths" must be an array of paths relative to the mount\'s root')
  if (paths.length > MAX_PATHS_PER_REQUEST) throw new BadRequest(`${paths.length} paths in one request; send at most ${MAX_PATHS_PER_REQUEST} per request`)
  paths.forEach(checkAnnouncedPath)
  return { op, paths: paths as string[] }
}

/** Request lines (newline included) announcing `paths` in order, each within the protocol's limits. */
export function* prefetchLines(paths: readonly string[], maxPaths = MAX_PATHS_PER_REQUEST): Generator<string> {
  const head = '{"op":"prefetch","paths":['
  const tail = ']}\n'
  let parts: string[] = []
  let bytes = head.length + tail.length
  for (const p of paths) {
    const json = JSON.stringify(p)
    const size = Buffer.byteLength(json) + 1
    if (parts.length > 0 && (parts.length >= maxPaths || bytes + size > MAX_REQUEST_BYTES)) {
      yield head + parts.join(',') + tail
      parts = []
      bytes = head.length + tail.length
    }
    parts.push(json)
    bytes += size
  }
  if (parts.length > 0) yield head + parts.join(',') + tail
}
