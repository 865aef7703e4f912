import { setTimeout as sleep } from 'node:timers/promises'
import {
  O3AuthError,
  O3ClockSkewError,
  O3Error,
  O3IntegrityError,
  O3NotFoundError,
  O3StreamError,
  O3UnreachableError,
  O3UntrustedServerError,
  O3UsageError,
} from './errors.js'

export interface RetryPolicy {
  /** Total attempts, the first included. */
  maxAttempts: number
  /** The first wait; each later one doubles. */
  baseDelayMs: number
  /** No single wait exceeds this. */
  maxDelayMs: number
}

/**
 * 5 attempts whose waits are drawn from [b*2^i, 2*b*2^i] with b = 700 ms: at least 10.5 s in
 * all, so that a server gone for 5 s to 10 s fails nothing, while the jitter still spreads
 * out many clients that failed at the same moment.
 */
export const DEFAULT_RETRY: RetryPolicy = { maxAttempts: 5, baseDelayMs: 700, maxDelayMs: 20_000 }

export function backoffDelay(policy: RetryPolicy, retry: number): number {
  const floor = Math.min(policy.maxDelayMs / 2, policy.baseDelayMs * 2 ** retry)
  return floor + Math.random() * floor
}

const AUTH_CODES = new Set([
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'AccessDenied',
  'InvalidToken',
  'ExpiredToken',
  'AuthorizationHeaderMalformed',
  'InvalidClientTokenId',
  'Forbidden',
  'Unauthorized',
])
const NOT_FOUND_CODES = new Set(['NoSuchKey', 'NoSuchBucket', 'NotFound', 'NoSuchUpload', 'NoSuchVersion'])
const UNREACHABLE_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN'])
/** Node's codes for a server certificate that is not trusted: no retry makes it trusted. */
const UNTRUSTED_CERT_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
])
const TRANSIENT_CODES = new Set([
  ...UNREACHABLE_CODES,
  'ECONNRESET',
  'EPIPE',
  'ETIMEDOUT',
  'ECONNABORTED',
  'ERR_STREAM_PREMATURE_CLOSE',
  'TimeoutError',
  'RequestTimeout',
  'RequestTimeTooSkewed',
  'SlowDown',
  'Throttling',
  'ThrottlingException',
  'TooManyRequests',
  'InternalError',
  'ServiceUnavailable',
  'RequestTimeoutException',
  'UND_ERR_SOCKET',
  'ERR_HTTP2_STREAM_ERROR',
])

interface Raw {
  name?: string
  code?: string
  Code?: string
  message?: string
  // clockSkewCorrected: the SDK read the server's Date off a refused request, found this machine's
  // clock 5 minutes or more away from it and moved its offset: signed again, the request passes.
  $metadata?: { httpStatusCode?: number; clockSkewCorrected?: boolean }
  $response?: { statusCode?: number }
  cause?: unknown
}

export function errorCode(err: unknown): string {
  const e = err as Raw
  return e?.code ?? e?.Code ?? e?.name ?? 'Error'
}

export function httpStatus(err: unknown): number | undefined {
  const e = err as Raw
  return e?.$metadata?.httpStatusCode ?? e?.$response?.statusCode
}

/** Whether a retry could help: throttling, 5xx, connection resets and timeouts. */
export function isTransient(err: unknown): boolean {
  if (err instanceof O3Error) return err instanceof O3StreamError
  if ((err as Raw)?.$metadata?.clockSkewCorrected) return true
  const code = errorCode(err)
  const status = httpStatus(err)
  // A server that answered has said what it meant: only throttling, 5xx and request timeouts retry;
  // 501 says it lacks the feature (a version id, say), which no retry can change.
  if (status !== undefined) return status === 429 || (status >= 500 && status !== 501) || code === 'RequestTimeout' || code === 'SlowDown'
  if (TRANSIENT_CODES.has(code)) return true
  // Broken sockets surface as plain Errors whose message is all there is to go on.
  return /socket hang up|ECONNRESET|aborted|premature close|timed? ?out/i.test((err as Raw)?.message ?? '')
}

/** Maps an SDK or socket error to the client's typed errors, with a message that says what to do. */
export function toO3Error(err: unknown, what: string, endpoint: string): O3Error {
  if (err instanceof O3Error) return err
  const code = errorCode(err)
  const status = httpStatus(err)
  const detail = (err as Raw)?.message?.split('\n')[0] ?? String(err)
  if (code === 'CredentialsProviderError') {
    return new O3AuthError(`${what}: no credentials found; set O3_ACCESS_KEY_ID and O3_SECRET_ACCESS_KEY (or O3_CREDENTIALS_FILE, or an AWS profile)`, {
      cause: err,
    })
  }
  if (code === 'RequestTimeTooSkewed') {
    return new O3ClockSkewError(`${what}: this machine's clock is too far from the server's (${code}); set it right (NTP) and try again`, { cause: err })
  }
  if (AUTH_CODES.has(code) || status === 401 || status === 403) {
    return new O3AuthError(
      `${what}: the server rejected the credentials (${code}); check O3_ACCESS_KEY_ID / O3_SECRET_ACCESS_KEY (or your AWS profile) and the region`,
      { cause: err },
    )
  }
  if (NOT_FOUND_CODES.has(code) || status === 404) {
    return new O3NotFoundError(`${what}: not found (${code})`, { cause: err })
  }
  if (code === 'InvalidRange' || status === 416) {
    return new O3UsageError(`${what}: the range starts past the end of the object`, { cause: err })
  }
  if (code === 'PreconditionFailed' || status === 412) {
    return new O3IntegrityError(`${what}: the object changed while it was being read (ETag no longer matches)`, { cause: err })
  }
  const cause = (err as Raw)?.cause
  const sysCode = cause ? errorCode(cause) : code
  if (UNTRUSTED_CERT_CODES.has(code) || UNTRUSTED_CERT_CODES.has(sysCode)) {
    return new O3UntrustedServerError(
      `${what}: cannot reach ${endpoint} securely: its certificate is not trusted (${UNTRUSTED_CERT_CODES.has(code) ? code : sysCode}); give the CA that signed it with --ca-bundle or O3_CA_BUNDLE`,
      { cause: err },
    )
  }
  if (UNREACHABLE_CODES.has(code) || UNREACHABLE_CODES.has(sysCode)) {
    return new O3UnreachableError(`${what}: cannot reach ${endpoint} (${code}); check O3_ENDPOINT and the network`, { cause: err })
  }
  return new O3StreamError(`${what}: failed after retries (${code}${status ? ` HTTP ${status}` : ''}: ${detail})`, { cause: err })
}

export interface RetryHooks {
  /** Called before each wait, e.g. to count retries and log them. */
  onRetry?: (err: unknown, attempt: number, delayMs: number) => void
  signal?: AbortSignal
}

/** Runs `fn` until it succeeds, fails with a non-transient error, or the attempts are spent. */
export async function withRetry<T>(policy: RetryPolicy, fn: (attempt: number) => Promise<T>, hooks: RetryHooks = {}): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt)
    } catch (err) {
      if (attempt >= policy.maxAttempts || !isTransient(err) || hooks.signal?.aborted) throw err
      const delay = backoffDelay(policy, attempt - 1)
      hooks.onRetry?.(err, attempt, delay)
      await sleep(delay, undefined, { signal: hooks.signal })
    }
  }
}

/** Errors that are already final and must not be retried by an outer loop either. */
export function isFinal(err: unknown): boolean {
  return err instanceof O3AuthError || err instanceof O3NotFoundError || err instanceof O3UsageError || err instanceof O3IntegrityError
}
