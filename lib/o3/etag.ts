/**
 * An ETag as a bare value: servers, listings and proxies differ in whether they quote it and may
 * mark it weak (`W/"…"`); the same object must compare equal however it was spelled.
 */
export function normalizeEtag(etag: string): string {
  return etag.trim().replace(/^W\//i, '').replace(/^"(.*)"$/, '$1')
}

export function sameEtag(a: string, b: string): boolean {
  return normalizeEtag(a) === normalizeEtag(b)
}
