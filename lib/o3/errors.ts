import { ExitCode } from '../cli/exit-codes.js'

/**
 * Typed errors of the O3 client. Each message names what went wrong and what to do about it,
 * and never contains a credential. `exitCode` gives every CLI the same distinct exit status.
 */
export class O3Error extends Error {
  readonly exitCode: number = ExitCode.internal
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = new.target.name
  }
}

/** Bad or missing credentials. Never retried: retrying cannot make a wrong key right. */
export class O3AuthError extends O3Error {
  override readonly exitCode: number = ExitCode.auth
}

/** Refused because this machine's clock is too far from the server's: the keys may be right. */
export class O3ClockSkewError extends O3AuthError {}

/** The bucket or key does not exist. */
export class O3NotFoundError extends O3Error {
  override readonly exitCode: number = ExitCode.notFound
}

/** A transport failure that outlasted the retry policy (resets, timeouts, 5xx, throttling). */
export class O3StreamError extends O3Error {
  override readonly exitCode: number = ExitCode.stream
}

/** The endpoint could not be reached at all (refused, DNS, no route) after retries. */
export class O3UnreachableError extends O3StreamError {
  override readonly exitCode: number = ExitCode.unreachable
}

/** Reached, but its certificate is not trusted: the CA bundle, not the network, is what to fix. */
export class O3UntrustedServerError extends O3UnreachableError {}

/** The bytes read do not match what was expected (checksum, CID, size or ETag). */
export class O3IntegrityError extends O3Error {
  override readonly exitCode: number = ExitCode.integrity
}

/** The request is invalid as asked: a key outside the client's prefix, a range past the end. */
export class O3UsageError extends O3Error {
  override readonly exitCode: number = ExitCode.usage
}

/** Configuration cannot be used: malformed endpoint, unreadable key file, bad private key. */
export class O3ConfigError extends O3Error {
  override readonly exitCode: number = ExitCode.config
}
