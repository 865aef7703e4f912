/**
 * Temporary credentials (a profile's `credential_process`, SSO, web identity as on Kubernetes,
 * container and instance roles) expire, often within the hour, while the native byte path signs
 * with the keys it was handed at start. So for as long as the mount lives, the credentials are asked
 * for again shortly before they expire (the SDK's provider gives new ones from 5 minutes before)
 * and new ones are handed on. Static keys carry no expiry: then nothing runs.
 */
import type { Logger } from '../lib/log.js'
import type { Credentials } from '../lib/o3/index.js'

/** The SDK resolves new credentials from this long before the old ones expire. */
const REFRESH_BEFORE_MS = 5 * 60_000
/** However soon the new credentials expire too, asked at most once a second. */
const MIN_DELAY_MS = 1_000
/**
 * After a failed attempt, asked again this soon. (The SDK's chain keeps answering the current keys
 * while its refresh fails, until they expire: only then does an attempt fail.)
 */
const RETRY_MS = 10_000
/** setTimeout's longest delay (about 24.8 days). */
const MAX_DELAY_MS = 2 ** 31 - 1

const sameKeys = (a: Credentials, b: Credentials) =>
  a.accessKeyId === b.accessKeyId && a.secretAccessKey === b.secretAccessKey && a.sessionToken === b.sessionToken

/**
 * Keeps what `apply` was given fresh: asks `resolve` again 5 minutes before `initial` (and then
 * each new set) expires, and passes on keys that changed. Returns the function that stops it.
 */
export function keepCredentialsFresh(
  initial: Credentials,
  resolve: () => Promise<Credentials>,
  apply: (credentials: Credentials) => void,
  log: Logger,
): () => void {
  let current = initial
  let timer: NodeJS.Timeout | undefined
  let stopped = false
  const schedule = (ms: number) => {
    if (stopped) return
    timer = setTimeout(() => void refresh(), Math.min(MAX_DELAY_MS, Math.max(MIN_DELAY_MS, ms)))
    timer.unref()
  }
  const untilRefresh = (expiration: Date) => expiration.getTime() - REFRESH_BEFORE_MS - Date.now()
  const refresh = async () => {
    let next: Credentials
    try {
      next = await resolve()
    } catch (err) {
      if (stopped) return
      log.warn(
        { err: (err as Error).message, expiresAt: current.expiration?.toISOString(), retryInMs: RETRY_MS },
        'refreshing the credentials failed; the current ones are used until they expire',
      )
      schedule(RETRY_MS)
      return
    }
    if (stopped) return
    if (!sameKeys(next, current)) {
      apply(next)
      log.info({ expiresAt: next.expiration?.toISOString() }, 'credentials refreshed')
    }
    current = next
    if (next.expiration) schedule(untilRefresh(next.expiration))
  }
  if (initial.expiration) schedule(untilRefresh(initial.expiration))
  return () => {
    stopped = true
    clearTimeout(timer)
  }
}
