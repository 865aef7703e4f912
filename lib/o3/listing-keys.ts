import { O3StreamError } from './errors.js'

/**
 * Listings ask for `encoding-type=url`, as the AWS CLI does: raw, a key holding a character XML 1.0
 * cannot carry (U+0001, most control characters) breaks the whole answer (Swift answers 500 for
 * the directory; AWS sends XML the parser refuses), and XML turns a key's CR into LF. A server that
 * applied the encoding says so in the answer's `EncodingType`; one that ignored it sent keys as
 * they are, which are then taken as they are.
 */
export const LISTING_ENCODING = 'url'

/**
 * A key, prefix or marker from a listing answer, decoded where the answer says it is encoded. S3
 * writes a space as `+` (botocore decodes with unquote_plus); a literal `+` always comes as `%2B`.
 */
export function listedKey(encodingType: string | undefined, value: string, what: string): string {
  if (encodingType !== LISTING_ENCODING) return value
  try {
    return decodeURIComponent(value.replace(/\+/g, ' '))
  } catch {
    throw new O3StreamError(`${what}: the server answered ${JSON.stringify(value)} as a URL-encoded key, and it is not one`)
  }
}

/**
 * Where a truncated listing of versions or uploads goes on: the page's last key (decoded already),
 * which the answer's NextKeyMarker names too; but Swift 2.30 sends that marker unencoded in an answer
 * it says is URL-encoded, so decoding it would move a key holding `+` or `%`. Only an empty page
 * leaves the marker to go by.
 */
export function nextKeyMarker(lastKey: string | undefined, encodingType: string | undefined, marker: string | undefined, what: string): string | undefined {
  return lastKey ?? (marker === undefined ? undefined : listedKey(encodingType, marker, what))
}
