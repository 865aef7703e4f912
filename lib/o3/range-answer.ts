import { O3StreamError } from './errors.js'

/**
 * Whether a 2xx answer to `Range: bytes=start-end` (end undefined: to the end of the object) is
 * that range and nothing else: a 206 whose Content-Range names exactly it (or, open-ended or past
 * the end, up to the object's last byte) and whose Content-Length is its length, or a 200 (the
 * whole object) when the range starts at 0 and the object ends within it, so that its bytes are
 * at the right offsets. Anything else (a 200 for a later range, a 206 naming another range, a
 * length that disagrees) would put wrong bytes where the asked ones belong: it is returned as an
 * O3StreamError, which the caller's retry policy retries and which is never cached.
 */
export function checkRangeAnswer(
  status: number,
  contentRange: string | undefined,
  length: number,
  start: number,
  end: number | undefined,
): O3StreamError | undefined {
  const asked = `bytes ${start}-${end ?? ''}`
  const wrong = (what: string) => new O3StreamError(`asked for ${asked}, the server answered ${what}; not taken as data`)
  if (!Number.isSafeInteger(length) || length < 0) return wrong(`HTTP ${status} without a usable Content-Length`)
  if (status === 200) {
    return start === 0 && (end === undefined || length <= end + 1) ? undefined : wrong(`HTTP 200 with the whole object (${length} bytes)`)
  }
  if (status !== 206) return wrong(`HTTP ${status}`)
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(contentRange?.trim() ?? '')
  if (!m) return wrong(`206 with Content-Range ${JSON.stringify(contentRange ?? null)}`)
  const [first, last] = [Number(m[1]), Number(m[2])]
  const total = m[3] === '*' ? undefined : Number(m[3])
  // The last byte is the one asked, or the object's last where the range runs past it.
  const lastOk = last === end || (total !== undefined && last === total - 1 && (end === undefined || end > last))
  if (first !== start || !lastOk || (total !== undefined && last >= total)) return wrong(`206 for ${m[0]}`)
  if (length !== last - first + 1) return wrong(`206 for ${m[0]} with Content-Length ${length}`)
  return undefined
}
