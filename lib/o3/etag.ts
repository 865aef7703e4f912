/**
 * An ETag as a bare value: servers, listings and proxies differ in whether they quote it and may
 * mark it weak (`W/"…"`); the same object must compare equal however it was spelled.
 */
export function normalizeEtag(etag: string): string {
  return etag
    .trim()
    .replace(/^W\//i, '')
    .replace(/^"(.*)"$/, '$1')
}

export function sameEtag(a: string, b: string): boolean {
  return normalizeEtag(a) === normalizeEtag(b)
}

/**
 * One version of an object, as an open file holds on to it. A read pinned to it sends If-Match (and
 * VersionId once known) but does not rely on the server honouring them: each response's own ETag
 * and version are compared too. The version a response names is recorded here, so that later reads
 * of the same pin ask for exactly that version.
 */
export interface ObjectPin {
  etag: string
  versionId?: string
}

/** The If-Match value for a pin: the normalised ETag, quoted. */
export function ifMatchOf(pin: ObjectPin): string {
  return `"${normalizeEtag(pin.etag)}"`
}

/**
 * Checks a response against the pin (throws a description of the difference) and records the
 * version it names when the pin had none.
 */
export function checkPinned(pin: ObjectPin, etag: string, versionId: string | undefined): void {
  const otherVersion = pin.versionId !== undefined && versionId !== undefined && versionId !== pin.versionId
  if (!sameEtag(etag, pin.etag) || otherVersion) {
    throw new Error(
      `the object changed while it was being read (ETag ${etag}, version ${versionId ?? 'none'}; expected ${pin.etag}, version ${pin.versionId ?? 'any'})`,
    )
  }
  pin.versionId ??= versionId
}
